"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): ViT with a 2x2 patch merger + Qwen2.5 LM.

Images are resized by qwen-vl-utils' ``fetch_image`` (the policy of Qwen's own pipelines) within
``min_pixels`` / ``max_pixels``, then the HF processor turns each one into
``grid_t * grid_h * grid_w / 4`` ``<|image_pad|>`` tokens and ``pixel_values`` / ``image_grid_thw``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from qwen_vl_utils import fetch_image, smart_resize

from vldft.adapters.base import Adapter
from vldft.data import ImageBytes


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

    def dummy_image_inputs(self) -> dict[str, torch.Tensor]:
        vc = self.model.config.vision_config
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        merge = vc.spatial_merge_size  # one merged token: a merge x merge grid of patches
        return {"pixel_values": torch.zeros(merge * merge, dim),
                "image_grid_thw": torch.tensor([[1, merge, merge]])}

    def _bounds(self, pixels: tuple[int | None, int | None] | None) -> tuple[int, int]:
        lo, hi = pixels or (None, None)
        return lo or self.min_pixels, hi or self.max_pixels

    def load_image(self, image: str | Path | Image.Image,
                   pixels: tuple[int | None, int | None] | None = None) -> Image.Image:
        lo, hi = self._bounds(pixels)
        if isinstance(image, ImageBytes):
            image = image.open()
        src = image if isinstance(image, Image.Image) else str(image)
        return fetch_image({"image": src, "min_pixels": lo, "max_pixels": hi},
                           image_patch_size=self.patch_size)

    def process(self, text: str, images: list[Image.Image],
                pixels: tuple[int | None, int | None] | None = None) -> dict[str, torch.Tensor]:
        if not pixels or not images:
            return super().process(text, images)
        lo, hi = self._bounds(pixels)  # per-source bounds, so the processor keeps the size
        out = self.processor(text=[text], images=images, return_tensors="pt",
                             size={"shortest_edge": lo, "longest_edge": hi})
        return dict(out)

    def image_token_count(self, size: tuple[int, int],
                          pixels: tuple[int | None, int | None] | None = None) -> int:
        lo, hi = self._bounds(pixels)
        factor = self.patch_size * self.processor.image_processor.merge_size
        h, w = smart_resize(size[1], size[0], factor=factor, min_pixels=lo, max_pixels=hi)
        return (h // factor) * (w // factor)
