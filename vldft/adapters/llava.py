"""LLaVA in Hugging Face format (``LlavaForConditionalGeneration``): CLIP/SigLIP tower + MLP
projector + LM. Works for llava-hf/llava-1.5-*-hf and llava-hf/llava-interleave-qwen-*-hf.

The end-of-turn token is the tokenizer's EOS (``</s>`` for LLaVA-1.5, ``<|im_end|>`` for the
Qwen-based interleave models). LLaVA-1.5's chat template does not emit it after an answer; the
collator appends it so the model learns to stop.
"""

from __future__ import annotations

from vldft.adapters.base import Adapter


class LlavaAdapter(Adapter):
    family = "llava"
    image_token = "<image>"
    vision_prefixes = ("model.vision_tower.",)
    projector_prefixes = ("model.multi_modal_projector.",)

    def __init__(self, model, processor) -> None:
        self.end_of_turn = processor.tokenizer.eos_token
        self.image_token = getattr(processor, "image_token", "<image>")
        super().__init__(model, processor)
