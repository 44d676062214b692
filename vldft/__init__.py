"""vldft: vision-language fine-tuning with Dynamic Fine-Tuning (DFT) for Qwen2.5-VL and LLaVA.

Entry points: ``python -m vldft.train CONFIG [key=value ...]`` (training) and
``python -m vldft.datatool convert|validate|inspect`` (data). See README.md and
docs/architecture.md.
"""

__version__ = "0.1.0"
