"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): ViT (patch 14, window attention) with a
2x2 patch merger + Qwen2.5 LM; 28 x 28 pixels per image token. The shared Qwen mechanics (pixel
bounds, qwen-vl-utils resizing, mRoPE positions) are in ``qwen_vl.py``.
"""

from __future__ import annotations

from vldft.adapters.qwen_vl import QwenVLAdapter


class Qwen2_5_VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
