"""One optimizer step and the engine around it: the objective module, target counting, the
globally normalised gradient accumulation, the optimizer, and the FSDP / DeepSpeed specifics.

Per optimizer step: gather ``grad_accum`` micro-batches, count their target tokens on every rank,
sum the counts over ranks, then backpropagate ``loss_sum / global_count`` for each micro-batch
(times the world size, because DDP averages gradients). Batch 8 x accumulation 1 and batch 2 x
accumulation 4 therefore give the same update.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib.util
import os
import warnings

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from torch import nn

from vldft.adapters import Adapter
from vldft.adapters.lora import apply_lora
from vldft.collate import IGNORE
from vldft.config import Config, ConfigError, world_size
from vldft.levers import apply_levers, inputs_on
from vldft.objectives import STAT_KEYS, ObjectiveSpec, as_spec, compute_objective


class ObjectiveModule(nn.Module):
    """Backbone + objective in ONE forward, so DDP / FSDP wrap (and gather) both together.

    ``reference`` is the frozen starting model for ASFT's KL anchor: a full copy of the weights
    (same dtype; no gradients or optimizer state), i.e. +1x the model's parameter memory. The
    loop sets it when ASFT starts (after any SFT warm-up), so the anchor is the model ASFT
    starts from, not the pre-warm-up one.
    """

    def __init__(self, adapter: Adapter, reference: nn.Module | None = None) -> None:
        super().__init__()
        self.model = adapter.model
        self.reference = reference
        self.adapter = adapter
        # accelerate's FSDP shards the blocks named here one by one (its transformer wrap policy
        # reads them from the module it prepares: this one, not the Hugging Face model)
        self._no_split_modules = list(getattr(adapter.model, "_no_split_modules", None) or [])

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never uses dropout
        return self

    def forward(self, batch: dict[str, torch.Tensor], spec: ObjectiveSpec | str,
                vision_passes: int = 1):
        """``vision_passes``: how many times this micro-batch runs the vision tower (its images
        one pass, its videos one), made up by passes on a blank image (``dummy_vision_loss``: a
        zero loss term, exact-zero gradients) that run where the real ones do: inside the
        model's forward, right after it embeds the tokens (``blank_passes``). Sharded weights
        (FSDP / ZeRO-3) are gathered module by module in forward order, and DeepSpeed ZeRO-3
        also checks that every rank ran the same modules in the same order, so every rank must
        make the same passes at the same point (``accumulate_gradients`` asks for 2 where some
        rank's micro-batch holds images and videos); 1 also gives a text-only micro-batch the
        pass DDP needs (every vision parameter used)."""
        spec = as_spec(spec)
        batch = dict(batch)
        labels = batch.pop("labels")
        real = ("pixel_values" in batch) + ("pixel_values_videos" in batch)
        with blank_passes(self.adapter, vision_passes - real):  # exact-zero gradients
            hidden = self.adapter.hidden_states(batch)  # for the vision parameters
        head = self.adapter.output_layer()
        ref = {}
        if spec.name == "asft":
            lora = self.adapter.lora
            if self.reference is None and lora is None:
                raise RuntimeError("asft needs a reference model (build_reference)")
            with torch.no_grad(), (lora.disable_adapter() if lora is not None
                                   else contextlib.nullcontext()):
                # with LoRA the anchor is this (maybe sharded) model: the same vision passes
                # as the other ranks make (a copied reference is never sharded: none)
                with blank_passes(self.adapter,
                                  vision_passes - real if lora is not None else 0):
                    ref_hidden = self.adapter.hidden_states(
                        batch, model=None if lora is not None else self.reference)
            ref_head = self.adapter.output_layer(None if lora is not None else self.reference)
            ref = {"ref_hidden": ref_hidden, "ref_weight": ref_head.weight,
                   "ref_bias": ref_head.bias}
        out = compute_objective(hidden, head.weight, labels, spec, bias=head.bias, **ref)
        loss_sum = out.loss_sum
        aux = self.adapter.pop_aux_loss()  # MoE router load balancing (coefficient applied)
        if aux is not None:  # weighted by target tokens: after the global division it is the
            loss_sum = loss_sum + aux * out.n_tokens  # token-weighted mean over micro-batches
        return loss_sum, out.stats, out.probs


@contextlib.contextmanager
def blank_passes(adapter: Adapter, n: int):
    """Within it, the model's forward runs ``n`` vision passes on a blank image right after
    embedding the tokens, where every supported family runs its real image and video passes
    (a forward hook on the input embedding, once), and adds their zero terms to the embedded
    tokens, where an image micro-batch's features join them: so the language model's input
    depends on the vision tower (and requires grad) as with images, and the backward visits
    the same modules in the same order (with LoRA on the projector and a frozen embedding,
    only an image batch's would otherwise reach the first layer's frozen weights). Run
    before the forward, the passes made a text-only rank gather and run the vision tower
    before the embedding while an image rank does the reverse: under ZeRO-3 a collective
    mismatch, or DeepSpeed's "disagreement on list contents" of its module trace."""
    if n <= 0:
        yield
        return

    ran = []

    def after_embedding(_module, _args, output):
        handle.remove()
        ran.extend(adapter.dummy_vision_loss() for _ in range(n))
        return output + sum(ran).to(output.dtype)  # + exactly zero

    handle = adapter.model.get_input_embeddings().register_forward_hook(after_embedding)
    try:
        yield
    finally:
        handle.remove()
    if len(ran) != n:
        raise RuntimeError(f"{type(adapter.model).__name__}'s forward never ran its input "
                           "embedding: the blank vision passes of a text-only micro-batch "
                           "had no place to run")


def build_reference(adapter: Adapter) -> nn.Module:
    """Frozen copy of the model as it is now (ASFT's reference without LoRA; with LoRA the
    reference is the same model with its adapters disabled, no copy)."""
    ref = copy.deepcopy(adapter.model)
    ref.requires_grad_(False)
    return ref.eval()


def count_targets(batch: dict) -> int:
    """Target tokens of a micro-batch (labels are shifted inside the objective)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


@contextlib.contextmanager
def no_sync(accelerator: Accelerator, module: nn.Module):
    """A micro-batch before a step's last: no gradient reduction (``accelerator.no_sync``), and
    under DeepSpeed no optimizer step either: accelerate runs DeepSpeed's engine step inside
    every ``accelerator.backward`` whose gradients sync."""
    if getattr(accelerator, "distributed_type", None) != DistributedType.DEEPSPEED:
        with accelerator.no_sync(module):
            yield
        return
    accelerator.gradient_state._set_sync_gradients(False)
    try:
        yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)


def accumulate_gradients(module: nn.Module, micro_batches: list[dict],
                         spec: ObjectiveSpec | str, accelerator: Accelerator,
                         probs: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Forward + backward over one optimizer step's micro-batches with global normalisation.

    Returns the step's totals (summed over ranks): n_tokens, loss_sum, the STAT_KEYS sums,
    n_seen (non-padding tokens processed) and n_slots (token slots incl. padding). Target
    probabilities are appended to ``probs``.
    """
    spec = as_spec(spec)
    # sharded weights: a micro-batch with images and videos runs the vision tower twice, and
    # then every rank's micro-batches must (ObjectiveModule.forward's vision_passes)
    both = sharded(accelerator) and any("pixel_values" in b and "pixel_values_videos" in b
                                        for b in micro_batches)
    local = torch.tensor([sum(count_targets(b) for b in micro_batches), float(both)],
                         dtype=torch.float64, device=accelerator.device)
    n_global, n_both = accelerator.reduce(local, reduction="sum").tolist()
    passes = 2 if n_both > 0 else 1
    scale = accelerator.num_processes / max(n_global, 1.0)
    totals = torch.zeros(3 + len(STAT_KEYS), dtype=torch.float64, device=accelerator.device)
    for k, batch in enumerate(micro_batches):
        inputs = inputs_on(batch, accelerator.device)  # + precomputed attention segments
        sync = k == len(micro_batches) - 1
        ctx = no_sync(accelerator, module) if not sync else contextlib.nullcontext()
        with ctx:
            loss_sum, stats, step_probs = module(inputs, spec, vision_passes=passes)
            accelerator.backward(loss_sum * scale)
        if probs is not None:
            probs.append(step_probs)
        mask = inputs.get("attention_mask")
        if mask is None:  # a packed micro-batch (vldft.packing): no padding, no mask
            mask = torch.ones_like(inputs["input_ids"])
        totals += torch.stack([loss_sum.detach().double(), mask.sum().double(),
                               torch.tensor(float(mask.numel()), dtype=torch.float64,
                                            device=mask.device),
                               *(stats[key].double() for key in STAT_KEYS)])
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    keys = ("loss_sum", "n_seen", "n_slots", *STAT_KEYS)
    return {"n_tokens": n_global, **dict(zip(keys, totals, strict=True))}


def build_optimizer(adapter: Adapter, cfg: Config, sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW with one group per (part, decay): per-part learning rates, no decay on 1-D params.

    ``train.optimizer_impl`` picks torch's kernels: ``fused`` (one kernel for all tensors;
    measured 0.18 -> 0.04 s per step on the CPU benchmark model and 70 -> 29 ms at 3B on an
    H100, bench/RESULTS.md) or ``foreach``; ``auto`` is fused unless ``sharded`` (FSDP /
    DeepSpeed, whose sharded parameters vldft has not run with the fused kernel)."""
    t = cfg.train
    fused = t.optimizer_impl == "fused" or (t.optimizer_impl == "auto" and not sharded)
    lrs = {"language": t.lr, "vision": t.vision_lr or t.lr, "projector": t.projector_lr or t.lr}
    groups = []
    for part, named in adapter.parts().items():
        params = [p for _, p in named if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": lrs[part], "name": f"{part}",
                               "weight_decay": t.weight_decay if decay else 0.0})
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas),
                             **({"fused": True} if fused else {"foreach": True}))


def mixed_precision(cfg: Config) -> str:
    """``train.mixed_precision``, with ``auto`` resolved: bf16 where the GPU supports it."""
    mp = cfg.train.mixed_precision
    if mp == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


def sharded(accelerator: Accelerator) -> bool:
    """True under FSDP / DeepSpeed: parameters are sharded across ranks."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def model_writer(adapter: Adapter, accelerator: Accelerator, module: nn.Module):
    """A function writing the Hugging Face files of the current weights. Under FSDP /
    DeepSpeed the parameters are sharded: their full state dict is gathered first (a
    collective, so every rank calls this)."""
    if sharded(accelerator):
        full = accelerator.get_state_dict(module)
        state = {k[len("model."):]: v for k, v in (full or {}).items()
                 if k.startswith("model.")}
        return lambda d: adapter.save(d, state_dict=state)
    return adapter.save


def register_zero3(module: ObjectiveModule, accelerator: Accelerator) -> None:
    """DeepSpeed ZeRO-3 gathers a module's parameters only inside that module's forward; the
    objective reads lm_head.weight outside lm_head's forward, so register it as an external
    parameter of the ObjectiveModule (DeepSpeed's API for exactly this)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return
    import deepspeed

    head = module.adapter.output_layer()
    for p in (head.weight, head.bias):
        if p is not None:
            deepspeed.zero.register_external_parameter(module, p)


def build_accelerator(cfg: Config) -> Accelerator:
    """The accelerate engine for ``cfg``, with the checks that must fail before any model loads:
    the process group matches WORLD_SIZE, a requested FSDP / DeepSpeed is really running (else a
    warning), ASFT under ZeRO-3 has LoRA, and train.eval_tasks and the held-out scoring run on
    unsharded weights. DeepSpeed runs without a GPU too (its CPU accelerator, gloo), and gets
    vldft's loop settings: micro-batch, clipping at train.max_grad_norm, no accumulation of its
    own (its engine steps once a step: ``no_sync``; docs/distributed.md)."""
    t = cfg.train
    gpu = torch.cuda.is_available()
    # DeepSpeed without a GPU runs on its CPU accelerator (communication backend gloo).
    # accelerate enables DeepSpeed only when not told cpu=True, and without a GPU it then forms
    # the process group only when given the backend by name.
    deepspeed_cpu = (not gpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
                     and int(os.environ.get("LOCAL_RANK", -1)) != -1
                     and importlib.util.find_spec("deepspeed") is not None)
    group = {"backend": "gloo"} if deepspeed_cpu else {}
    if t.eval_tasks:  # the other ranks wait for rank 0's evaluation: a long collective timeout
        group["timeout"] = datetime.timedelta(hours=6)
    # otherwise, without a GPU, accelerate forms a multi-process (gloo) group only with cpu=True
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg),
                              cpu=not gpu and not deepspeed_cpu,
                              kwargs_handlers=[InitProcessGroupKwargs(**group)] if group else [])
    if accelerator.num_processes != world_size():
        raise SystemExit(f"WORLD_SIZE is {world_size()} but accelerate formed a group of "
                         f"{accelerator.num_processes}; launch with torchrun or accelerate launch")
    for env, engine in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(env, "").lower() == "true" and accelerator.distributed_type != engine:
            why = ("accelerate builds FSDP only on GPUs" if engine == DistributedType.FSDP
                   else "without a GPU it needs the deepspeed extra and a launcher "
                   "(accelerate launch)")
            warnings.warn(f"{engine.value} was requested but accelerate runs "
                          f"{accelerator.distributed_type.value} ({why})", stacklevel=1)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3 and cfg.loss.name == "asft" \
            and cfg.model.lora is None:
        raise SystemExit("loss.name=asft under DeepSpeed ZeRO-3 needs model.lora (the reference "
                         "is then the adapter-disabled model; a full copy cannot be sharded)")
    if t.eval_tasks and (accelerator.distributed_type == DistributedType.FSDP
                         or (plugin is not None and plugin.zero_stage == 3)):
        raise ConfigError("train.eval_tasks: not supported with sharded weights (FSDP / "
                          "DeepSpeed ZeRO-3); evaluate the saved checkpoints with "
                          "`python -m vldft.eval` instead, or set train.eval_tasks=[]")
    engine = ("FSDP" if accelerator.distributed_type == DistributedType.FSDP else
              "DeepSpeed ZeRO-3" if plugin is not None and plugin.zero_stage == 3 else None)
    if engine and cfg.data.heldout_file and t.eval_max_samples:
        # the held-out scoring multiplies by lm_head.weight outside any forward, where ZeRO-3
        # and FSDP hold a shard of it (a failure at the first evaluation; found on the CPU
        # under ZeRO-3), and each rank generates for its own samples until they end, so the
        # ranks would not gather the sharded blocks in step
        raise ConfigError(f"data.heldout_file: the held-out scoring during training is not "
                          f"supported under {engine} (sharded weights); set "
                          "train.eval_max_samples=0 and score the saved checkpoints with "
                          "`python -m vldft.heldout CHECKPOINT HELDOUT_FILE` instead")
    if plugin is not None:
        # vldft's loop, not DeepSpeed's defaults: the micro-batch size (vldft's loader has a
        # batch sampler), clipping at train.max_grad_norm (accelerate would fill in 1.0; 0: no
        # clipping), and no division of the loss by the accumulation steps (the loss is
        # already divided by the step's global target count: vldft.step.accumulate_gradients)
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
        ds["gradient_accumulation_steps"] = 1
        # DeepSpeed checks train_batch_size = micro-batch x accumulation x ranks: a DeepSpeed
        # JSON of the user's may hold its own figure for its own accumulation
        ds["train_batch_size"] = t.micro_batch_size * accelerator.num_processes
        ds["gradient_clipping"] = max(t.max_grad_norm, 0.0)

    return accelerator


def objective_at(cfg: Config, step: int) -> str:
    """The objective of optimizer step ``step`` (1-based): SFT during the warm-up."""
    return "sft" if step <= cfg.loss.sft_warmup_steps else cfg.loss.name


def prepare_model(adapter: Adapter, cfg: Config, log) -> None:
    """Make the loaded model trainable per ``cfg.model``: freeze parts, add LoRA adapters,
    freeze the vision parameters the model never uses, the levers (``vldft.levers``: gradient
    checkpointing, frozen tower without autograd, Liger, compile), no KV cache."""
    adapter.freeze(cfg.model.freeze)
    if cfg.model.lora is not None:
        try:
            apply_lora(adapter, cfg.model.lora, cfg.model.freeze)
        except ValueError as e:
            raise SystemExit(f"config error: {e}") from None
    unused = adapter.freeze_unused()
    if unused:
        log(f"[vldft] froze {len(unused)} vision parameters the model never uses "
            f"(e.g. {unused[0]})")
    apply_levers(adapter, cfg, log)  # checkpointing, frozen tower, Liger, compile
    adapter.model.config.use_cache = False


def count_parameters(adapter: Adapter) -> tuple[dict[str, int], int]:
    """Parameters per part (language, vision, projector) and the trainable ones."""
    n_params = {part: sum(p.numel() for _, p in ps) for part, ps in adapter.parts().items()}
    return n_params, sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)


def describe_model(adapter: Adapter, cfg: Config, commit: str | None = None) -> str:
    """The console's model line: family (and the hub ``commit`` loaded), parameters per part,
    trainable, LoRA, frozen."""
    n_params, n_trainable = count_parameters(adapter)
    lora = cfg.model.lora
    parts = [p for p in lora.parts if p not in cfg.model.freeze] if lora else []
    skipped = [p for p in lora.parts if p in cfg.model.freeze] if lora else []
    on = f"{parts}" + (f"; none on {skipped}: model.freeze" if skipped else "")
    frozen = ("all base weights (LoRA adapters train)" if lora
              else cfg.model.freeze or "none")
    name = "tiny" if cfg.model.tiny else cfg.model.name_or_path
    name += f" at commit {commit[:12]}" if commit else ""
    return (f"{cfg.model.family} ({name}): "
            + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n_params.items())
            + (f"; trainable {n_trainable / 1e6:.2f}M" if n_trainable >= 5000
               else f"; trainable {n_trainable:,}")
            + (f" (LoRA r={lora.r} on {on})" if lora else "") + f"; frozen: {frozen}")
