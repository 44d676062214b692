"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): ViT (patch 14, full attention) with a 2x2
patch merger + Qwen2 LM with mRoPE; 28 x 28 pixels per image token; the same chat template as
Qwen2.5-VL (default system prompt). Mechanics shared with the other Qwen families: ``qwen_vl.py``.
"""

from __future__ import annotations

from vldft.adapters.qwen_vl import QwenVLAdapter


class Qwen2VLAdapter(QwenVLAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
