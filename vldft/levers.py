"""Speed and memory levers of one training process, each a config switch (docs/performance.md,
"Levers"). ``apply_levers`` sets them on a prepared model; the step and the loader add the
precomputed attention segments of each micro-batch.

- ``model.gradient_checkpointing``: ``true`` recomputes every decoder layer and vision block in
  backward (transformers' own checkpointing, non-reentrant); ``selective`` keeps the outputs
  of the op groups named in ``model.checkpoint_keep`` (``attention``: the attention kernels,
  ``matmul``: matrix products) and recomputes only the rest (torch's selective activation
  checkpointing, ``create_selective_checkpoint_contexts``). Same loss and gradients as
  ``false`` (tests/test_levers.py); memory between ``false`` and ``true``, and no kept op is
  run again in backward.
- ``model.vision_no_grad`` (``auto``: on when ``vision`` is in ``model.freeze``): the frozen
  tower's modules run under ``torch.no_grad``. A trainable projector (Qwen's merger, LLaVA's
  projector) still gets exact gradients: its input never needed one.
  Without it the tower is not free: transformers' gradient checkpointing makes every input
  embedding's output require grad (``enable_input_require_grads``), the vision tower's patch
  embedding included, so a frozen tower saved checkpoints, was recomputed and backpropagated
  through. Not ``torch.inference_mode``: the projector saves its input for backward, which an
  inference tensor cannot be.
- ``model.precompute_segments``: see ``vldft.attention.Segments`` (the collator computes them;
  :func:`inputs_on` carries them to the model).
- ``train.liger``: Liger-Kernel's fused RMSNorm / SwiGLU / (m)RoPE Triton kernels patched into
  the model (never its losses: vldft's chunked objective stays). CUDA only. The log says what
  runs (:func:`liger_report`): liger-kernel 0.8.5 swaps Qwen2.5-VL's
  ``apply_multimodal_rotary_pos_emb``, which transformers 5's Qwen2.5-VL no longer calls (its
  rotary embedding mixes the mRoPE sections), so there it is RMSNorm and SwiGLU only.
- ``train.compile: regional``: ``torch.compile`` on every decoder layer and vision block
  (transformers' ``GradientCheckpointingLayer`` s); the chunked objective stays eager.
"""

from __future__ import annotations

import collections
import functools
import types

import torch
from torch import nn

from vldft.attention import SEGMENTS
from vldft.config import ConfigError
from vldft.device import to_device

# aten / custom-op names per model.checkpoint_keep group (matched on the op's schema name)
ATTENTION_OPS = ("scaled_dot_product", "flash_attn", "flash_attention", "efficient_attention",
                 "cudnn_attention", "varlen_attn")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm")


def apply_levers(adapter, cfg, log=print) -> None:
    """Set the levers of ``cfg`` (``model`` / ``train`` sections) on ``adapter.model``: after
    freezing and LoRA (they decide what trains), before the engine wraps the model."""
    model_cfg, train_cfg = cfg.model, cfg.train
    if train_cfg.liger:
        apply_liger(adapter.model)
        log(f"[vldft] train.liger: {liger_report(adapter.model)}")
    enable_checkpointing(adapter.model, model_cfg.gradient_checkpointing,
                         model_cfg.checkpoint_keep)
    wrapped = vision_no_grad(adapter, resolve_vision_no_grad(model_cfg))
    if wrapped:
        log(f"[vldft] model.vision_no_grad: the frozen vision tower runs without autograd "
            f"({len(wrapped)} modules, e.g. {wrapped[0]})")
    if train_cfg.compile == "regional":  # not with selective checkpointing (Config.validate)
        n = compile_regional(adapter.model)
        log(f"[vldft] train.compile: regional, {n} layers compiled (first steps are slower)")


def inputs_on(batch: dict, device) -> dict:
    """The model inputs of a micro-batch on ``device``: its tensors and, when the collator made
    them, its precomputed ``Segments`` (``model.precompute_segments``)."""
    inputs = to_device(batch, device)
    if batch.get(SEGMENTS) is not None:
        inputs[SEGMENTS] = batch[SEGMENTS].to(device, non_blocking=True)
    return inputs


# -- activation checkpointing -----------------------------------------------------------------
def _kept(keep: tuple[str, ...], op) -> bool:
    name = op._schema.name if hasattr(op, "_schema") else str(op)
    return (("attention" in keep and any(k in name for k in ATTENTION_OPS))
            or ("matmul" in keep and name in MATMUL_OPS))


def selective_policy(keep: tuple[str, ...]):
    """The selective-checkpointing policy: save the outputs of ``keep``'s op groups, recompute
    everything else."""
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if _kept(keep, op) else \
            CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def enable_checkpointing(model: nn.Module, mode: bool | str, keep: list[str]) -> None:
    """``model.gradient_checkpointing``: nothing (false), every layer recomputed (true), or the
    selective policy of ``keep`` (``selective``)."""
    if not mode:
        return
    kwargs: dict = {"use_reentrant": False}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts,
                                                 selective_policy(tuple(keep)))
    # transformers >= 5.25 names it activation_checkpointing_enable (the old name warns)
    enable = getattr(model, "activation_checkpointing_enable", None) \
        or model.gradient_checkpointing_enable
    enable(kwargs)


# -- a frozen vision tower without autograd ---------------------------------------------------
def resolve_vision_no_grad(model_cfg) -> bool:
    """``model.vision_no_grad`` with ``auto`` resolved: on when the tower is frozen (``vision``
    in ``model.freeze``: LoRA then adds nothing to it, ``apply_lora``)."""
    setting = model_cfg.vision_no_grad
    return "vision" in model_cfg.freeze if setting == "auto" else bool(setting)


def _forward_no_grad(forward):
    def run(self, *args, **kwargs):
        with torch.no_grad():
            return forward(self, *args, **kwargs)
    return run


def vision_no_grad(adapter, on: bool) -> list[str]:
    """Run every vision-tower module without a trainable parameter under ``torch.no_grad``
    (projector modules are left alone); returns the names wrapped. Refused (ConfigError) when a
    vision parameter trains. The wrapper is a method bound to its module, so a deep copy (ASFT's
    reference model) runs its own weights."""
    if not on:
        return []
    parts = adapter.parts()
    training = [n for n, p in parts["vision"] if p.requires_grad]
    if training:
        raise ConfigError(f"model.vision_no_grad: vision parameters train (e.g. {training[0]}); "
                          "it needs a frozen tower ('vision' in model.freeze, no LoRA in it)")
    projector = {id(p) for _, p in parts["projector"]}
    vision = {id(p) for _, p in parts["vision"]}
    wrapped: list[str] = []

    def walk(module: nn.Module, name: str) -> None:
        ids = {id(p) for p in module.parameters()}
        if not ids or ids <= projector or not ids & vision:
            return  # no weights, the projector's own, or outside the tower
        if ids & projector or isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            for child_name, child in module.named_children():
                walk(child, f"{name}.{child_name}")
            return
        forward = module.forward
        if isinstance(forward, types.MethodType) and forward.__self__ is module:
            func = forward.__func__  # the class's forward, or one patched onto the instance
        else:  # some other callable set on the instance
            func = lambda _self, *a, **k: forward(*a, **k)  # noqa: E731
        module.forward = types.MethodType(_forward_no_grad(func), module)
        wrapped.append(name)

    for prefix in adapter.vision_prefixes:
        root = adapter.model.get_submodule(prefix.rstrip("."))
        walk(root, prefix.rstrip("."))
    return wrapped


# -- fused kernels and compilation ------------------------------------------------------------
def apply_liger(model: nn.Module) -> None:
    """``train.liger``: Liger-Kernel's RMSNorm, SwiGLU and RoPE / mRoPE kernels in ``model``
    (its losses untouched). Refused on a machine without CUDA, where liger_kernel is not
    importable, or for a model type it has no kernels for."""
    if not torch.cuda.is_available():
        raise ConfigError("train.liger: Liger-Kernel's kernels are Triton GPU kernels and this "
                          "machine has no CUDA device; set train.liger=false")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as e:
        raise ConfigError(f"train.liger: cannot import liger_kernel ({e}); pip install "
                          "liger-kernel, or set train.liger=false") from None
    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"train.liger: Liger-Kernel has no kernels for model type "
                          f"{model_type!r}; set train.liger=false")
    try:
        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                        cross_entropy=False, fused_linear_cross_entropy=False)
    except ImportError as e:  # e.g. liger-kernel 0.8.5's Qwen2.5-VL patch imports an output
        import transformers  # class that transformers 5.23 removed

        raise ConfigError(f"train.liger: Liger-Kernel cannot patch model type {model_type!r} "
                          f"with transformers {transformers.__version__} ({e}); use a "
                          "transformers version that liger-kernel supports (0.8.5: <= 5.22), "
                          "or set train.liger=false") from None


def _from_liger(obj) -> bool:
    return "liger" in (getattr(obj, "__module__", "") or "")


def liger_modules(model: nn.Module) -> collections.Counter:
    """The modules of ``model`` whose forward is Liger's (it patches instances in place), counted
    by class name."""
    return collections.Counter(type(m).__name__ for m in model.modules()
                               if _from_liger(getattr(m, "forward", None)))


def liger_report(model: nn.Module) -> str:
    """What Liger-Kernel patched into ``model`` and what of it runs: the modules whose forward
    is Liger's (it patches instances in place), by class, and the functions of the model's
    modeling module it swapped for its own that nothing in that module calls (a kernel for an
    older transformers' code path: patched, never run)."""
    import inspect
    import re
    import sys

    kinds = liger_modules(model)
    mod = sys.modules.get(type(model).__module__)
    try:
        src = inspect.getsource(mod) if mod else ""
    except (OSError, TypeError):
        src = ""
    unused = sorted(name for name, f in vars(mod or types.ModuleType("none")).items()
                    if callable(f) and not isinstance(f, type) and _from_liger(f)
                    and not re.search(rf"(?<!def ){re.escape(name)}\(", src))
    said = (f"Liger-Kernel forwards in {sum(kinds.values())} modules ("
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
    if unused:
        said += (f"; swapped but never called by this transformers' "
                 f"{type(model).__name__}: {', '.join(unused)}")
    return said


def compile_regional(model: nn.Module, backend: str = "inductor") -> int:
    """``train.compile: regional``: ``Module.compile`` on every repeated block (transformers'
    ``GradientCheckpointingLayer``: decoder layers, vision blocks), not on blocks inside an
    already compiled one. Returns the number compiled."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    inside: set[int] = set()  # modules of compiled blocks (modules() visits parents first)
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and id(module) not in inside:
            module.compile(backend=backend)
            inside.update(id(m) for m in module.modules())
    return sum(isinstance(m, GradientCheckpointingLayer) for m in model.modules()
               if id(m) in inside and getattr(m, "_compiled_call_impl", None) is not None)
