"""Model adapters: ``load_adapter(model_cfg)`` wraps a family's model + processor."""

from __future__ import annotations

import torch

from vldft.adapters.base import Adapter
from vldft.adapters.llava import LlavaAdapter
from vldft.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from vldft.config import ModelConfig

__all__ = ["Adapter", "LlavaAdapter", "Qwen2_5_VLAdapter", "load_adapter"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_adapter(cfg: ModelConfig) -> Adapter:
    """Build (``cfg.tiny``) or load (``cfg.name_or_path``) the model and processor of a family."""
    if cfg.tiny:
        from vldft.adapters import tiny

        if cfg.family == "qwen2_5_vl":
            model, processor = tiny.tiny_qwen2_5_vl(cfg.min_pixels, cfg.max_pixels)
        else:
            model, processor = tiny.tiny_llava()
        model.config._attn_implementation = cfg.attn_implementation
        if cfg.dtype in _DTYPES:
            model.to(_DTYPES[cfg.dtype])
    else:
        from transformers import (
            AutoProcessor,
            LlavaForConditionalGeneration,
            Qwen2_5_VLForConditionalGeneration,
        )

        cls = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
               "llava": LlavaForConditionalGeneration}[cfg.family]
        dtype = _DTYPES.get(cfg.dtype, "auto")
        model = cls.from_pretrained(
            cfg.name_or_path, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
        processor = AutoProcessor.from_pretrained(cfg.name_or_path)
    if cfg.family == "qwen2_5_vl":
        return Qwen2_5_VLAdapter(model, processor, cfg.min_pixels, cfg.max_pixels)
    return LlavaAdapter(model, processor)
