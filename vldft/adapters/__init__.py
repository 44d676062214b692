"""Model adapters: ``load_adapter(model_cfg)`` wraps a family's model + processor.

``FAMILIES`` maps each ``model.family`` to its adapter class (one file per family; the contract
is ``base.Adapter``); ``TINY_BUILDERS`` to the function that builds its tiny local model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vldft.adapters.base import Adapter
from vldft.adapters.llava import LlavaAdapter
from vldft.adapters.llava_onevision import LlavaOnevisionAdapter
from vldft.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from vldft.adapters.qwen2_vl import Qwen2VLAdapter
from vldft.adapters.qwen3_5 import Qwen3_5Adapter
from vldft.adapters.qwen3_vl import Qwen3VLAdapter, Qwen3VLMoeAdapter
from vldft.config import ConfigError, ModelConfig

__all__ = ["FAMILIES", "Adapter", "LlavaAdapter", "LlavaOnevisionAdapter", "Qwen2VLAdapter",
           "Qwen2_5_VLAdapter", "Qwen3VLAdapter", "Qwen3VLMoeAdapter", "Qwen3_5Adapter",
           "family_of_checkpoint", "load_adapter"]

FAMILIES: dict[str, type[Adapter]] = {cls.family: cls for cls in (
    Qwen2_5_VLAdapter, LlavaAdapter, Qwen2VLAdapter, Qwen3VLAdapter, Qwen3VLMoeAdapter,
    Qwen3_5Adapter, LlavaOnevisionAdapter)}
# config.json model_type -> family
MODEL_TYPES: dict[str, str] = {mt: fam for fam, cls in FAMILIES.items() for mt in cls.model_types}
# family -> (module, function) of its tiny builder; called with (min_pixels, max_pixels) where
# the family supports pixel bounds
TINY_BUILDERS = {
    "qwen2_5_vl": ("vldft.adapters.tiny", "tiny_qwen2_5_vl"),
    "llava": ("vldft.adapters.tiny", "tiny_llava"),
    "qwen2_vl": ("vldft.adapters.tiny_families", "tiny_qwen2_vl"),
    "qwen3_vl": ("vldft.adapters.tiny_families", "tiny_qwen3_vl"),
    "qwen3_vl_moe": ("vldft.adapters.tiny_families", "tiny_qwen3_vl_moe"),
    "qwen3_5": ("vldft.adapters.tiny_families", "tiny_qwen3_5"),
    "llava_onevision": ("vldft.adapters.tiny_families", "tiny_llava_onevision"),
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def family_of_checkpoint(path: str | Path) -> str:
    """vldft family of a local checkpoint from its ``config.json`` ``model_type``."""
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text())["model_type"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{config}: cannot read model_type ({e})") from None
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{config}: model_type {model_type!r} is not supported by vldft "
                         f"(supported: {sorted(MODEL_TYPES)})")
    return MODEL_TYPES[model_type]


def build_tiny(family: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """(model, processor) of ``family``'s tiny random model (no download)."""
    import importlib

    module, name = TINY_BUILDERS[family]
    builder = getattr(importlib.import_module(module), name)
    if FAMILIES[family].supports_pixel_bounds:
        return builder(min_pixels, max_pixels)
    return builder()


def model_commit(cfg: ModelConfig) -> str | None:
    """The hub commit ``cfg.name_or_path`` at ``cfg.revision`` resolves to in the local hub
    cache (what ``load_adapter`` loads); None for a tiny model, a local folder, or a hub id
    not cached."""
    if cfg.tiny or not cfg.name_or_path or Path(cfg.name_or_path).exists():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(cfg.name_or_path, "config.json", revision=cfg.revision)
    except Exception:  # noqa: BLE001 - a malformed id: no commit known
        return None
    parts = Path(got).parts if isinstance(got, str) else ()
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def load_adapter(cfg: ModelConfig) -> Adapter:
    """Build (``cfg.tiny``) or load (``cfg.name_or_path``) the model and processor of a family."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"model.family: unknown family {cfg.family!r}; choose from "
                         f"{sorted(FAMILIES)}")
    adapter_cls = FAMILIES[cfg.family]
    varlen = cfg.attn_implementation == "varlen"  # loaded as sdpa, then switched
    attn = "sdpa" if varlen else cfg.attn_implementation
    if cfg.tiny:
        model, processor = build_tiny(cfg.family, cfg.min_pixels, cfg.max_pixels)
        model.config._attn_implementation = attn
        if cfg.dtype in _DTYPES:
            model.to(_DTYPES[cfg.dtype])
    else:
        import transformers
        from transformers import AutoProcessor

        local = Path(cfg.name_or_path) / "config.json"
        if local.is_file():  # a local checkpoint says which family it is
            try:
                found = family_of_checkpoint(cfg.name_or_path)
            except ValueError as e:
                raise ConfigError(f"model.name_or_path: {e}") from None
            if found != cfg.family:
                raise ConfigError(f"model.family: {cfg.family!r} but {local} is a {found!r} "
                                  f"checkpoint; set model.family={found}")
        cls = getattr(transformers, adapter_cls.model_class)
        dtype = _DTYPES.get(cfg.dtype, "auto")
        at = {"revision": cfg.revision} if cfg.revision else {}
        try:  # a directory without weights, a hub id not cached offline, a broken download
            model = cls.from_pretrained(cfg.name_or_path, dtype=dtype, attn_implementation=attn,
                                        **at)
            processor = AutoProcessor.from_pretrained(cfg.name_or_path, **at)
        except OSError as e:
            where = f" at revision {cfg.revision!r}" if cfg.revision else ""
            raise ConfigError(f"model.name_or_path: cannot load {cfg.name_or_path}{where}: "
                              f"{str(e).splitlines()[0]}") from None
    if varlen:
        from vldft.attention import use_varlen

        use_varlen(model)
    return adapter_cls(model, processor, cfg.min_pixels, cfg.max_pixels)
