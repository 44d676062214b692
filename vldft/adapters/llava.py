"""LLaVA in Hugging Face format (``LlavaForConditionalGeneration``): CLIP/SigLIP tower + MLP
projector + LM. Works for llava-hf/llava-1.5-*-hf and llava-hf/llava-interleave-qwen-*-hf.

The end-of-turn token is the tokenizer's EOS (``</s>`` for LLaVA-1.5, ``<|im_end|>`` for the
Qwen-based interleave models). LLaVA-1.5's chat template does not emit it after an answer; the
collator appends it so the model learns to stop.
"""

from __future__ import annotations

import torch

from vldft.adapters.base import Adapter


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    image_token = "<image>"
    vision_prefixes = ("model.vision_tower.",)
    projector_prefixes = ("model.multi_modal_projector.",)

    def __init__(self, model, processor, min_pixels=None, max_pixels=None) -> None:
        self.end_of_turn = processor.tokenizer.eos_token
        self.image_token = getattr(processor, "image_token", "<image>")
        super().__init__(model, processor)

    def dummy_image_inputs(self) -> dict[str, torch.Tensor]:
        size = self.model.config.vision_config.image_size
        return {"pixel_values": torch.zeros(1, 3, size, size)}

    def image_token_count(self, size, pixels=None) -> int:
        """Fixed per image: (side / patch)^2 (+ CLS unless the 'default' strategy drops it)."""
        ip = self.processor.image_processor
        side = (getattr(ip, "crop_size", None) or ip.size)["height"]
        n = (side // self.processor.patch_size) ** 2 + self.processor.num_additional_image_tokens
        return n - (self.processor.vision_feature_select_strategy == "default")
