"""Qwen3.5 image-text (``Qwen3_5ForConditionalGeneration``): a hybrid LM (gated-DeltaNet linear
attention layers between full-attention layers) with a Qwen3-VL-style vision tower (patch 16,
32 x 32 pixels per image token, no DeepStack) and its own 248k vocabulary (``<|image_pad|>`` is
248056). Its chat template thinks by default; vldft renders with ``enable_thinking=false`` so a
plain answer is trained after an empty ``<think>\\n\\n</think>\\n\\n`` block that belongs to the
prompt (masked). Video as Qwen3-VL (text timestamps per frame). Qwen3.5-MoE checkpoints
(``qwen3_5_moe``) are not covered; packing is refused.
"""

from __future__ import annotations

from vldft.adapters.qwen_vl import QwenVLAdapter


class Qwen3_5Adapter(QwenVLAdapter):
    family = "qwen3_5"
    model_types = ("qwen3_5",)
    model_class = "Qwen3_5ForConditionalGeneration"
    template_kwargs = {"enable_thinking": False}
    video_region = ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")  # as Qwen3-VL's
    # the linear-attention layers (gated DeltaNet and its causal convolution, in transformers'
    # PyTorch path) carry state from one sample of a packed row into the next
    packing_refused = "its linear-attention layers carry state across the samples of a packed row"
    multi_turn_refused = ("qwen3_5 trains single-turn samples only: its chat template renders "
                          "earlier answers without the think block the last one gets")

    def packed_positions(self, enc):
        """Refused (``packing_refused``; ``vldft.train`` refuses it before any model loads)."""
        raise ValueError(f"data.packing: not supported for qwen3_5 ({self.packing_refused}); "
                         "train unpacked")
