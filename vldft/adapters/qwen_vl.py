"""What the Qwen VL families share (Qwen2-VL, Qwen2.5-VL, Qwen3-VL dense / MoE, Qwen3.5).

A ViT cuts each image into ``patch x patch`` patches, a 2x2 merger joins four into one LLM
token, so an image of ``h x w`` (after resizing) becomes ``h * w / (patch * 2)^2``
``<|image_pad|>`` tokens: 28 x 28 pixels per token with patch 14 (Qwen2-VL, Qwen2.5-VL), 32 x 32
with patch 16 (Qwen3-VL, Qwen3.5). Images are resized as qwen-vl-utils' ``fetch_image`` resizes
them (the policy of Qwen's own pipelines: ``resized_size``) to multiples of that unit within
``min_pixels`` / ``max_pixels``, and the processor's ``size`` (``shortest_edge`` /
``longest_edge``, the only bounds the transformers 5 image processor reads) is set to the same
bounds, widened to hold each resized image's area (``keep_size``), so it never resizes again:
the encoded image is the one the length estimate (``image_token_count``) counts.
Positions are multimodal RoPE (3-D for image tokens) from the model's ``get_rope_index``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from qwen_vl_utils import smart_resize
from qwen_vl_utils.vision_process import to_rgb

from vldft.adapters.base import Adapter
from vldft.data import bounds_over, open_image
from vldft.packing import mrope_positions, rope_media_kwargs


class QwenVLAdapter(Adapter):
    """Shared by every Qwen VL family; subclasses set family, model_types, model_class and
    (where they differ) the parameter prefixes and template arguments."""

    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"
    end_of_turn = "<|im_end|>"
    vision_prefixes = ("model.visual.",)
    projector_prefixes = ("model.visual.merger.",)
    supports_pixel_bounds = True

    def __init__(self, model, processor, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> None:
        super().__init__(model, processor)
        ip = processor.image_processor
        self.min_pixels = min_pixels or ip.size["shortest_edge"]
        self.max_pixels = max_pixels or ip.size["longest_edge"]
        # Keep the processor's own bounds in line, so it never resizes a second time.
        ip.size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        self.patch_size = ip.patch_size
        self.video_unit = ip.patch_size * ip.merge_size

    def dummy_image_inputs(self) -> dict[str, torch.Tensor]:
        vc = self.model.config.vision_config
        dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        merge = vc.spatial_merge_size  # one merged token: a merge x merge grid of patches
        return {"pixel_values": torch.zeros(merge * merge, dim),
                "image_grid_thw": torch.tensor([[1, merge, merge]])}

    def _bounds(self, pixels: tuple[int | None, int | None] | None) -> tuple[int, int]:
        """``pixels`` (a source's or an image's bounds) with the model's where absent; a given
        minimum above the model's maximum (or a given maximum below its minimum) moves that
        bound with it."""
        return bounds_over((self.min_pixels, self.max_pixels), pixels or (None, None))

    def resized_size(self, size: tuple[int, int],
                     pixels: tuple[int | None, int | None] | None = None) -> tuple[int, int]:
        """(width, height) ``load_image`` gives an image of ``size``: qwen-vl-utils'
        ``smart_resize`` within the bounds (``pixels`` over the model's), each side at least one
        unit (it floors a thin image's short side to 0 under a small maximum, where its
        ``fetch_image`` fails; the processor's own resize keeps one unit there)."""
        lo, hi = self._bounds(pixels)
        factor = self.patch_size * self.processor.image_processor.merge_size
        h, w = smart_resize(size[1], size[0], factor=factor, min_pixels=lo, max_pixels=hi)
        return max(w, factor), max(h, factor)

    def load_image(self, image: str | Path | Image.Image,
                   pixels: tuple[int | None, int | None] | None = None) -> Image.Image:
        """The image in RGB (transparency on white), resized as qwen-vl-utils' ``fetch_image``
        resizes it (``resized_size``)."""
        if isinstance(image, Image.Image):  # never close a caller's image
            rgb = to_rgb(image)
        else:
            with open_image(image) as im:  # a path or encoded bytes (parquet / HF)
                rgb = to_rgb(im)
        return rgb.resize(self.resized_size(rgb.size, pixels))

    def process(self, text: str, images: list[Image.Image],
                pixels: tuple[int | None, int | None] | None = None,
                videos: list | None = None) -> dict[str, torch.Tensor]:
        """``images`` come from ``load_image``: the processor's bounds (``pixels`` over the
        model's) are widened to hold each image's area, so it never resizes one again. Bounds
        narrower than one step of the unit (min == max at no multiple of its area) can put
        qwen-vl-utils' size outside them; a second resize would change the image and its token
        count, and the length estimate (``image_token_count``) would be wrong."""
        if not images:
            return super().process(text, images, videos=videos)
        out = self.processor(text=[self.processor_text(text, videos)], images=images,
                             return_tensors="pt",
                             images_kwargs={"size": self.keep_size(images, pixels)},
                             **self.video_kwargs(videos))
        return dict(out)

    def keep_size(self, images: list[Image.Image],
                  pixels: tuple[int | None, int | None] | None = None) -> dict[str, int]:
        """The processor's ``size`` for ``images`` already resized by ``load_image``: the
        bounds (``pixels`` over the model's), widened to hold every image's area."""
        lo, hi = self._bounds(pixels)
        areas = [im.width * im.height for im in images]
        return {"shortest_edge": min(lo, *areas), "longest_edge": max(hi, *areas)}

    def video_kwargs(self, videos: list | None) -> dict:
        """Frames come resized by qwen-vl-utils' policy (``vldft.data.video``): the video
        processor keeps their size. Its ``cap_pixels_per_frame`` (newer transformers: a
        per-frame cap in its own resize, which does not run here) is set to the reference
        behaviour, which silences its warning that the default differs from qwen-vl-utils."""
        kw = super().video_kwargs(videos)
        if kw:
            kw["videos_kwargs"] = {"do_resize": False}
            if hasattr(self.processor.video_processor, "cap_pixels_per_frame"):
                kw["videos_kwargs"]["cap_pixels_per_frame"] = True
        return kw

    def video_token_estimate(self, video, settings) -> int:
        """``T/2`` temporal patches of ``(h/unit) x (w/unit)`` pads, plus (Qwen3-VL / 3.5) a
        ``<t seconds>`` text and a vision start / end per patch."""
        from vldft.data.video import plan

        try:
            n, h, w = plan(video, video.settings(settings), self.video_unit)
        except Exception:  # unreadable: the collator reports (or skips) it later
            return 0
        per = (h // self.video_unit) * (w // self.video_unit)
        extra = 0
        if len(self.video_region) > 1:  # a timestamp (a typical one's length) + start + end
            extra = len(self.tokenizer("<1.5 seconds>", add_special_tokens=False)["input_ids"]) + 2
        return (n // 2) * (per + extra)

    def video_token_counts(self, out: dict[str, torch.Tensor]) -> list[int]:
        """``t * h * w / merge^2`` pad tokens per video (Qwen3-VL splits them over frames)."""
        merge = self.processor.video_processor.merge_size
        grid = out.get("video_grid_thw")
        return [] if grid is None else [int(g.prod()) // merge**2 for g in grid]

    def image_token_count(self, size: tuple[int, int],
                          pixels: tuple[int | None, int | None] | None = None) -> int:
        factor = self.patch_size * self.processor.image_processor.merge_size
        w, h = self.resized_size(size, pixels)
        return (h // factor) * (w // factor)

    def position_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """mRoPE positions ``[3, B, T]`` (temporal, height, width; text tokens share one value
        on all three axes), computed per sample by the model's own ``get_rope_index``."""
        model = self.model.model
        types = batch.get("mm_token_type_ids")
        if types is None:  # older processors: image / video tokens are the pad ids
            ids = batch["input_ids"]
            types = (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int()
        pos, _ = model.get_rope_index(batch["input_ids"], types,
                                      attention_mask=batch.get("attention_mask"),
                                      **rope_media_kwargs(type(model), batch))
        return pos

    def packed_positions(self, enc) -> torch.Tensor:
        """``[4, n]`` for a packed row: text positions 0..n-1, then this sample's own mRoPE
        (t, h, w) positions (``vldft.packing.mrope_positions``)."""
        return mrope_positions(self.model, enc, self.image_token_id, self.video_token_id)
