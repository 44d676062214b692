"""vldft's own training step as the benchmarks drive it: one optimizer step of the training loop
(``optimizer_step``), and a set-up built from a config as ``vldft.train`` builds it (the
adapter, ``prepare_model``, the objective module with the config's precision, the optimizer, the
attention and collate function the loader would use, the model FLOPs of a micro-batch).

vldft is imported inside the functions: the scripts add the repository root to ``sys.path``
before calling them (bench/common.py's note on import paths).
"""

from __future__ import annotations

import time

import torch
from common import qwen_flop_terms, sync
from qwen import bare_adapter, build_qwen25vl, qwen25vl_3b_config, qwen25vl_small_config


def optimizer_step(module, optimizer, micro: list[dict], spec, accelerator,
                   max_grad_norm: float | None = None) -> dict:
    """One optimizer step as vldft.train's loop takes it (no scheduler): ``accumulate_gradients``
    over the micro-batches (global token normalisation), gradient clipping at ``max_grad_norm``
    (None: none; through ``accelerator``), ``step``, ``zero_grad``. Returns the totals
    (``loss_sum``, ``n_tokens``, ...)."""
    from vldft.step import accumulate_gradients

    totals = accumulate_gradients(module, micro, spec, accelerator)
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


def config_step(setup: dict, micro: list[dict], cfg, accelerator) -> float:
    """``optimizer_step`` with ``cfg``'s objective and ``train.max_grad_norm`` (<= 0: no limit)
    on a ``build_setup`` set-up; returns the step's loss per target token."""
    norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
    totals = optimizer_step(setup["module"], setup["optimizer"], micro, cfg.loss.spec(),
                            accelerator, norm)
    return totals["loss_sum"] / max(totals["n_tokens"], 1.0)


def config_adapter(cfg, tiny: bool, device: str, arch: str = "3b"):
    """vldft's adapter of ``cfg.model``: the tiny model through ``load_adapter`` (``tiny``), else
    Qwen2.5-VL-3B's architecture (``arch`` "small": a 2 x 64 one with the same code path, for the
    CPU test) with random weights in ``cfg.model.dtype`` on ``device``, no tokenizer files."""
    from vldft.adapters import load_adapter

    if tiny:
        adapter = load_adapter(cfg.model)
        adapter.model.to(device)
        return adapter
    if cfg.model.family != "qwen2_5_vl":
        raise SystemExit(f"the 3B architecture is Qwen2.5-VL; {cfg.model.family} needs --tiny")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.model.dtype,
                                                                       torch.bfloat16)
    model = build_qwen25vl(qwen25vl_3b_config() if arch == "3b" else qwen25vl_small_config(),
                           device, dtype)
    adapter = bare_adapter(model, cfg.model.min_pixels, cfg.model.max_pixels)
    if cfg.model.attn_implementation == "varlen":
        from vldft.attention import use_varlen

        use_varlen(model)
    return adapter


def build_setup(cfg, tiny: bool, arch: str, device: str) -> dict:
    """A config's model and optimizer as ``vldft.train`` prepares them: ``config_adapter``,
    ``prepare_model`` (freeze, unused-parameter freeze, checkpointing), ``ObjectiveModule``
    (bf16 autocast on its forward where the config's precision is bf16, as accelerate's
    ``mixed_precision="bf16"`` applies it: one process cannot hold two accelerate precisions),
    ``build_optimizer`` (per-part groups, fused AdamW per ``train.optimizer_impl``)."""
    from vldft.step import ObjectiveModule, build_optimizer, mixed_precision, prepare_model

    adapter = config_adapter(cfg, tiny, device, arch)
    prepare_model(adapter, cfg, print)
    module = ObjectiveModule(adapter).train()
    mp = mixed_precision(cfg)  # auto: bf16 on a bf16 GPU, else no
    if mp == "bf16":
        module.forward = torch.autocast(device_type=device, dtype=torch.bfloat16)(module.forward)
    return {"adapter": adapter, "module": module, "optimizer": build_optimizer(adapter, cfg),
            "attn": adapter.model.config._attn_implementation, "mixed_precision": mp,
            "device": device}


def move_setup(setup: dict, device: str) -> None:
    """Move a set-up's model and optimizer state to ``device``: park it on the CPU while another
    runs (one model on the GPU at a time), or bring it back. The seconds are added to its
    ``parked_s`` / ``unparked_s`` (kept out of the timings)."""
    t0 = time.perf_counter()
    setup["adapter"].model.to(device)
    for state in setup["optimizer"].state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
    sync(device)
    key = "parked_s" if device == "cpu" else "unparked_s"
    setup[key] = setup.get(key, 0.0) + time.perf_counter() - t0
    setup["device"] = device


def set_attention(setup: dict, cfg) -> str:
    """The attention the config's loader would choose: ``choose_attention`` for packed rows, the
    model's own implementation otherwise."""
    from vldft.packing import choose_attention

    model = setup["adapter"].model
    model.config._attn_implementation = setup["attn"]
    return choose_attention(model, cfg.model.attn_implementation) if cfg.data.packing \
        else model.config._attn_implementation


def collate_fn(cfg, collator):
    """The collate function ``vldft.loader.build_loader`` gives ``cfg``'s loader (call after
    ``set_attention``): packed rows (``PackCollator``) or padded micro-batches, with the
    precomputed attention segments where the config and the attention use them."""
    import vldft.loader as loader

    segments = loader.uses_segments(cfg, collator) if hasattr(loader, "uses_segments") else False
    if cfg.data.packing:
        return loader.PackCollator(collator, cfg.data.pack_tokens, segments) if segments \
            else loader.PackCollator(collator, cfg.data.pack_tokens)
    return loader.SegmentCollator(collator) if segments else collator


def flop_factors(freeze, lora_parts=None) -> dict[str, float]:
    """The FLOP factor of each part of a Qwen2.5-VL (``common.qwen_flop_terms``'s rule) for
    ``model.freeze`` and, with LoRA, ``model.lora.parts`` (None: no LoRA). In the model's order
    vision -> projector -> language (-> lm_head), each part costs 2 for its forward, + 2 for
    weight gradients when its weights train, + 2 for input gradients when a part before it
    trains or it trains itself beyond its first product (a multi-layer part: every part but the
    two-layer merger is counted so). Under LoRA every base weight is frozen (the lm_head
    always: it is never a LoRA target), and a LoRA part trains adapters only: 4 (forward +
    input gradients), as a frozen part after a trained one."""
    frozen = set(freeze)
    lora = None if lora_parts is None else set(lora_parts) - frozen
    out, before = {}, False  # before: a part before this one trains
    for part, key in (("vision", "vision"), ("projector", "projector"),
                      ("language", "text")):
        full = part not in frozen and lora is None  # its own weights train
        adapters = lora is not None and part in lora
        inside = full and part != "projector" or adapters  # it needs its own input gradients
        out[key] = 2.0 + 2.0 * full + 2.0 * (before or inside)
        before = before or full or adapters
    out["lm_head"] = 6.0 if "language" not in frozen and lora is None else 4.0
    return out


def micro_stats(batch: dict, seq_lens: list[int], model, freeze, lora_parts=None) -> dict:
    """Tokens, token slots, targets and model FLOPs of one micro-batch
    (``common.qwen_flop_terms`` with the factors of ``flop_factors(freeze, lora_parts)``: a
    frozen vision tower forward only, the merger after it 4 (forward + weight gradients), a
    frozen or LoRA language model 4 (forward + input gradients))."""
    from vldft.step import count_targets

    patches = int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
    targets = count_targets(batch)
    k = flop_factors(freeze, lora_parts)
    f = qwen_flop_terms(model, seq_lens, patches, targets, vision_factor=k["vision"],
                        projector_factor=k["projector"], text_factor=k["text"],
                        lm_head_factor=k["lm_head"])["total"]
    return {"tokens": sum(seq_lens), "slots": batch["input_ids"].numel(), "targets": targets,
            "flops": f}
