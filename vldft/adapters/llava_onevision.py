"""LLaVA-OneVision in Hugging Face format (``LlavaOnevisionForConditionalGeneration``, e.g.
llava-hf/llava-onevision-qwen2-0.5b-ov-hf / -7b-ov-hf): SigLIP tower + 2-layer MLP projector +
Qwen2 LM, ChatML template (``<|im_end|>`` ends a turn), no default system prompt.

Pixel policy: "anyres". The processor resizes a base view to the tower's size (384 px) and tiles
the image at the best of ``image_grid_pinpoints`` (up to 2304 x 2304 px in the released
checkpoints), then the model unpads the tiles' features to the image's aspect ratio, adds a
newline embedding per row and, above ``anyres_max_9``, pools them. ``<image>`` thus expands to a
count that depends on the image size (``image_token_count``); ``model.min_pixels`` /
``max_pixels`` do not apply. ``pixel_values`` are ``[1, n_tiles + 1, 3, S, S]`` per image; the
collator zero-pads the tile axis within a batch (the model reads only each image's own tiles,
from ``image_sizes``). The projector part includes ``model.image_newline``.
"""

from __future__ import annotations

import torch
from PIL import Image

from vldft.adapters.base import Adapter


class LlavaOnevisionAdapter(Adapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"
    image_token = "<image>"
    video_token = "<video>"
    video_frames_fixed = True
    end_of_turn = "<|im_end|>"
    vision_prefixes = ("model.vision_tower.",)
    projector_prefixes = ("model.multi_modal_projector.", "model.image_newline")

    def __init__(self, model, processor, min_pixels=None, max_pixels=None) -> None:
        self.image_token = getattr(processor, "image_token", "<image>")
        self.video_token = getattr(processor, "video_token", "<video>")
        super().__init__(model, processor)

    def dummy_image_inputs(self) -> dict[str, torch.Tensor]:
        """One blank image of the tower's size through the real image processor (base view +
        one tile), so its tensors have exactly the shapes of a real image."""
        size = self.model.config.vision_config.image_size
        out = self.processor.image_processor(images=[Image.new("RGB", (size, size))],
                                             return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"]}

    def video_token_estimate(self, video, settings) -> int:
        """``max_frames`` frames of the tower's patch grid pooled 2x2, plus one newline."""
        import math

        vc = self.model.config.vision_config
        side = math.ceil(vc.image_size // vc.patch_size / 2)
        return video.settings(settings).max_frames * side * side + 1

    def image_token_count(self, size, pixels=None) -> int:
        """Tokens of one image of ``size`` (width, height), as the processor expands it."""
        data = self.processor._get_num_multimodal_tokens(image_sizes=[(size[1], size[0])])
        return int(data["num_image_tokens"][0])
