"""LoRA through ``peft``: which Linear layers get adapters, and the merged checkpoint.

``apply_lora`` injects LoRA into ``adapter.model`` in place (the adapter keeps using the same
module object; peft's ``PeftModel`` wrapper is kept as ``adapter.lora`` for saving and for
``disable_adapter()``, which ASFT uses as its reference model). Every base weight is frozen;
only the LoRA matrices train.

The output layer is never a LoRA target: vldft's chunked objective multiplies hidden states by
``lm_head.weight`` itself, so a LoRA delta on it would be ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

NEVER = ("lm_head", "embed_tokens")


def lora_targets(adapter, target_modules: list[str], parts: list[str],
                 requested: list[str] | None = None) -> list[str]:
    """Full names of the Linear layers in ``parts`` whose name ends with a target name.
    ``requested``: a user's own target list must have each name match a Linear layer in these
    parts (``model.lora.parts``, frozen ones included: their layers are dropped, not an error;
    a misspelt name was dropped without a word); the default list spans every family and
    part, so it is not checked name by name."""
    bad = [t for t in target_modules if t.split(".")[-1] in NEVER or t in NEVER]
    if bad:
        raise ValueError(f"model.lora.target_modules: {bad} cannot get LoRA (the chunked "
                         "objective reads lm_head.weight directly; embed_tokens is an "
                         "embedding, tied to lm_head in several families)")
    found, named, usable = [], set(), set()
    for name, module in adapter.model.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".")[-1] in NEVER:
            continue
        part = adapter.part_of(name + ".weight")
        if part not in set(parts) | set(requested or []):
            continue
        usable.add(name.split(".")[-1])
        hits = {t for t in target_modules if name == t or name.endswith("." + t)}
        named |= hits
        if hits and part in parts:
            found.append(name)
    unmatched = [t for t in target_modules if t not in named]
    if not found or requested is not None and unmatched:
        raise ValueError(f"model.lora.target_modules: {unmatched or target_modules} match no "
                         f"Linear layer in parts {requested or parts}; Linear layer names "
                         f"there: {sorted(usable)}")
    return found


def apply_lora(adapter, settings, frozen_parts: list[str]):
    """Inject LoRA per ``settings`` (``config.LoraSettings``); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    parts = [p for p in settings.parts if p not in frozen_parts]
    own = set(settings.target_modules) != set(type(settings)().target_modules)
    targets = lora_targets(adapter, settings.target_modules, parts,
                           requested=list(settings.parts) if own else None)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    peft_model = get_peft_model(adapter.model, config)
    assert peft_model.base_model.model is adapter.model  # injected in place
    adapter.lora = peft_model
    return peft_model


@torch.no_grad()
def merged_state_dict(state: dict[str, torch.Tensor], scaling: float
                      ) -> dict[str, torch.Tensor]:
    """A peft-injected model's state dict with every LoRA delta ``scaling * B @ A`` added to
    its base weight and peft's renaming undone. Works on a gathered copy (FSDP / ZeRO-3) and
    never touches the training weights (no merge / unmerge rounding)."""
    out = {k: v for k, v in state.items() if "lora_" not in k}
    for key, a in state.items():
        if key.endswith(".lora_A.default.weight"):
            prefix = key[: -len(".lora_A.default.weight")]
            b = state[f"{prefix}.lora_B.default.weight"]
            base = out[f"{prefix}.base_layer.weight"]
            out[f"{prefix}.base_layer.weight"] = base + (b.float() @ a.float() * scaling
                                                         ).to(base.dtype)
    return {k.replace(".base_layer.", "."): v for k, v in out.items()}


def save_lora(adapter, out_dir: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """The merged model in Hugging Face format at ``out_dir`` and the adapter in
    ``out_dir/adapter`` (load it with ``PeftModel.from_pretrained(base, out_dir/'adapter')``).
    ``state``: the model's full state dict when the live parameters are sharded."""
    state = adapter.model.state_dict() if state is None else state
    cfg = adapter.lora.peft_config["default"]
    adapter.model.save_pretrained(out_dir, state_dict=merged_state_dict(state,
                                                                        cfg.lora_alpha / cfg.r),
                                  safe_serialization=True)
    adapter.lora.save_pretrained(out_dir / "adapter", state_dict={
        f"base_model.model.{k}": v for k, v in state.items()})
