"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): ViT with a 2x2 patch merger + Qwen2.5 LM.

Images are resized by qwen-vl-utils' ``fetch_image`` (the policy of Qwen's own pipelines) within
``min_pixels`` / ``max_pixels``, then the HF processor turns each one into
``grid_t * grid_h * grid_w / 4`` ``<|image_pad|>`` tokens and ``pixel_values`` / ``image_grid_thw``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from qwen_vl_utils import fetch_image

from vldft.adapters.base import Adapter


class Qwen2_5_VLAdapter(Adapter):
    family = "qwen2_5_vl"
    image_token = "<|image_pad|>"
    end_of_turn = "<|im_end|>"
    vision_prefixes = ("model.visual.",)
    projector_prefixes = ("model.visual.merger.",)

    def __init__(self, model, processor, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        self.min_pixels = min_pixels or ip.size["shortest_edge"]
        self.max_pixels = max_pixels or ip.size["longest_edge"]
        # Keep the processor's own bounds in line, so it never resizes a second time.
        ip.size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        self.patch_size = ip.patch_size

    def load_image(self, image: str | Path | Image.Image) -> Image.Image:
        src = image if isinstance(image, Image.Image) else str(image)
        return fetch_image(
            {"image": src, "min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            image_patch_size=self.patch_size,
        )
