"""Fine-tune a vision-language model with DFT (or SFT): one readable loop on accelerate.

    python -m vldft.train configs/demo.yaml                       # tiny model, CPU, minutes
    python -m vldft.train configs/demo.yaml train.lr=1e-3 loss.name=sft
    python -m vldft.train configs/demo.yaml --print-config        # resolved config; no training
    torchrun --nproc_per_node 8 -m vldft.train configs/qwen25vl_geo.yaml
    vldft-train CONFIG [section.key=value ...]                    # the installed command

Per optimizer step: gather ``grad_accum`` micro-batches, count their target tokens on every rank,
sum the counts over ranks, then backpropagate ``loss_sum / global_count`` for each micro-batch
(times the world size, because DDP averages gradients). Batch 8 x accumulation 1 and batch 2 x
accumulation 4 therefore give the same update. Outputs go to ``train.output_dir``:
``config.yaml``, ``data_summary.json``, ``metrics.jsonl``, ``histograms.jsonl``,
``checkpoint-<step>/`` (resumable, see ``vldft.checkpoint``) and ``final/`` (Hugging Face
format), ``summary.json``, ``training_curves.png`` and ``prob_histograms.png``.

Faults: SIGTERM / Ctrl-C save a checkpoint and exit cleanly; a step whose loss or gradient is
not finite is skipped (no update), counted and logged, and ``train.max_nonfinite_steps`` in a
row abort the run; an unwritable or too-full ``output_dir`` fails before training starts.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    InitProcessGroupKwargs,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from vldft.adapters import Adapter, load_adapter
from vldft.adapters.lora import apply_lora
from vldft.checkpoint import (
    check_explicit_resume,
    check_free_space,
    check_writable,
    checkpoint_bytes,
    claim_output_dir,
    find_resume,
    prune,
    read_state,
    save,
    truncate_jsonl,
)
from vldft.collate import IGNORE, Collator, SampleError, Skipped
from vldft.config import Config, ConfigError, config_to_dict, load_config, world_size
from vldft.data import DataError, Sample, load_jsonl
from vldft.data.formats import format_entry, skip_entry
from vldft.data.mix import (
    EpochBatchSampler,
    LengthGroupedSampler,
    RandomBatchSampler,
    build_training_set,
    format_table,
)
from vldft.diagnostics import prob_histogram, write_plots
from vldft.guard import CollapseGuard, review
from vldft.heldout import combine, score_part
from vldft.objectives import STAT_KEYS, ObjectiveSpec, as_spec, compute_objective


class EncodedDataset(Dataset):
    """Samples encoded lazily (in DataLoader workers) by the collator. A sample the collator
    rejects becomes a ``Skipped`` naming it (file:line, id, image, reason): counted with
    ``on_error="skip"``, ``fatal`` with ``raise`` (the loop then stops with a one-line
    ``DataError``; raising in a worker would bury the location in a traceback)."""

    def __init__(self, samples: list[Sample], collator: Collator, on_error: str = "raise"):
        self.samples, self.collator, self.on_error = samples, collator, on_error

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            return self.collator.encode(s)
        except SampleError as e:
            return Skipped(s.id, e.reason, s.source, s.origin, e.image,
                           str(e).removeprefix(f"sample {s.id}: "),
                           fatal=self.on_error == "raise")


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

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never uses dropout
        return self

    def forward(self, batch: dict[str, torch.Tensor], spec: ObjectiveSpec | str):
        spec = as_spec(spec)
        batch = dict(batch)
        labels = batch.pop("labels")
        hidden = self.adapter.hidden_states(batch)
        head = self.adapter.output_layer()
        ref = {}
        if spec.name == "asft":
            lora = self.adapter.lora
            if self.reference is None and lora is None:
                raise RuntimeError("asft needs a reference model (build_reference)")
            with torch.no_grad(), (lora.disable_adapter() if lora is not None
                                   else contextlib.nullcontext()):
                ref_hidden = self.adapter.hidden_states(
                    batch, model=None if lora is not None else self.reference)
            ref_head = self.adapter.output_layer(None if lora is not None else self.reference)
            ref = {"ref_hidden": ref_hidden, "ref_weight": ref_head.weight,
                   "ref_bias": ref_head.bias}
        out = compute_objective(hidden, head.weight, labels, spec, bias=head.bias, **ref)
        loss_sum = out.loss_sum
        if "pixel_values" not in batch:  # text-only micro-batch: keep the vision tower in step
            loss_sum = loss_sum + self.adapter.dummy_vision_loss()
        return loss_sum, out.stats, out.probs


def build_reference(adapter: Adapter) -> nn.Module:
    """Frozen copy of the model as it is now (ASFT's reference without LoRA; with LoRA the
    reference is the same model with its adapters disabled, no copy)."""
    ref = copy.deepcopy(adapter.model)
    ref.requires_grad_(False)
    return ref.eval()


def model_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def count_targets(batch: dict) -> int:
    """Target tokens of a micro-batch (labels are shifted inside the objective)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def accumulate_gradients(module: nn.Module, micro_batches: list[dict],
                         spec: ObjectiveSpec | str, accelerator: Accelerator,
                         probs: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Forward + backward over one optimizer step's micro-batches with global normalisation.

    Returns the step's totals (summed over ranks): n_tokens, loss_sum, the STAT_KEYS sums,
    n_seen (non-padding tokens processed) and n_slots (token slots incl. padding). Target
    probabilities are appended to ``probs``.
    """
    spec = as_spec(spec)
    local = torch.tensor([sum(count_targets(b) for b in micro_batches)], dtype=torch.float64,
                         device=accelerator.device)
    n_global = float(accelerator.reduce(local, reduction="sum").item())
    scale = accelerator.num_processes / max(n_global, 1.0)
    totals = torch.zeros(3 + len(STAT_KEYS), dtype=torch.float64, device=accelerator.device)
    for k, batch in enumerate(micro_batches):
        inputs = model_inputs(batch, accelerator.device)
        sync = k == len(micro_batches) - 1
        ctx = accelerator.no_sync(module) if not sync else contextlib.nullcontext()
        with ctx:
            loss_sum, stats, step_probs = module(inputs, spec)
            accelerator.backward(loss_sum * scale)
        if probs is not None:
            probs.append(step_probs)
        mask = inputs["attention_mask"]
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


def micro_batch_stream(loader: DataLoader, sampler: EpochBatchSampler, skips: Counter,
                       counts: Counter, pos: dict, seen: set, world: int,
                       entries: list[dict] | None = None):
    """Endless stream of non-empty micro-batches over epochs. ``pos`` ({"epoch", "consumed"})
    is the data position a checkpoint saves: micro-batches this rank has taken from the
    current epoch (trainable or not). Records skipped samples (each once: ``seen`` holds their
    (source, id); counted by (source, reason) in ``skips`` and listed in ``entries`` with file,
    line, id, image, message); a ``fatal`` skip
    (data.on_error=raise) stops with a ``DataError`` naming it; stops with an error if a whole
    pass over the data yields nothing to train on."""
    while True:
        full_pass, yielded = pos["consumed"] == 0, 0
        # every rank takes every world-th batch of the sampler's order, so a rank that has
        # consumed k batches of this epoch resumes after k x world of the sampler's batches
        sampler.set_position(pos["epoch"], pos["consumed"] * world)
        for batch in _guard_workers(loader):
            pos["consumed"] += 1
            for s in batch["skipped"]:
                if s.fatal:
                    where = f"{s.origin or s.source} (id {s.sample_id})"
                    msg = s.message.removeprefix(f"sample {s.sample_id}: ")
                    raise DataError(f"{where}: {msg} (data.on_error=skip skips such samples)",
                                    s.reason, where, msg, image=s.image)
                # keyed by (source, id): ids such as "0" or "train.jsonl:3" recur across
                # sources (a plain id: from an older checkpoint that stored ids only)
                if (s.source, s.sample_id) not in seen and s.sample_id not in seen:
                    seen.add((s.source, s.sample_id))
                    skips[(s.source, s.reason)] += 1
                    if entries is not None:
                        entries.append(skip_entry(s.source, s.origin or s.sample_id, s.reason,
                                                  s.message or s.reason, s.sample_id, s.image,
                                                  stage="encode"))
            counts["truncated"] += batch["n_truncated"]
            if "input_ids" in batch:
                yielded += 1
                yield batch
        if full_pass and not yielded:
            raise RuntimeError("a whole pass over the training data yielded no trainable "
                               f"sample; skipped: {dict(skips)}")
        pos["epoch"], pos["consumed"] = pos["epoch"] + 1, 0


def _guard_workers(loader: DataLoader):
    """Iterate ``loader``, turning a dead worker process into an actionable error."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if not any(k in str(e) for k in ("killed by signal", "exited unexpectedly")):
                raise
            raise RuntimeError(
                f"a data-loading worker process died ({e}). Usual causes: out of memory "
                "(lower data.num_workers or train.micro_batch_size) or a crash while decoding "
                "an image; rerun with data.num_workers=0 to see the failing sample's error "
                "in the main process") from e
        yield batch


class StopRequest:
    """SIGTERM / SIGINT (Ctrl-C) ask the loop to save a checkpoint and stop after the current
    step; a second Ctrl-C interrupts at once. Handlers are restored by ``close()``."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n[vldft] {self.signal} received: saving a checkpoint after this step "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _mixed_precision(cfg: Config) -> str:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


def _sharded(accelerator: Accelerator) -> bool:
    """True under FSDP / DeepSpeed: parameters are sharded across ranks."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _model_writer(adapter: Adapter, accelerator: Accelerator, module: nn.Module):
    """A function writing the Hugging Face files of the current weights. Under FSDP /
    DeepSpeed the parameters are sharded: their full state dict is gathered first (a
    collective, so every rank calls this)."""
    if _sharded(accelerator):
        full = accelerator.get_state_dict(module)
        state = {k[len("model."):]: v for k, v in (full or {}).items()
                 if k.startswith("model.")}
        return lambda d: adapter.save(d, state_dict=state)
    return adapter.save


def _register_zero3(module: ObjectiveModule, accelerator: Accelerator) -> None:
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


def main(cfg: Config) -> dict:
    """Train per ``cfg``; returns the summary dict (also written to output_dir/summary.json)."""
    t = cfg.train
    # the other ranks wait for rank 0's train.eval_tasks evaluation: a long collective timeout
    timeout = [InitProcessGroupKwargs(timeout=datetime.timedelta(hours=6))] if t.eval_tasks \
        else []
    # without a GPU, accelerate forms a multi-process (gloo) group only when told cpu=True
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg),
                              cpu=not torch.cuda.is_available(), kwargs_handlers=timeout)
    if accelerator.num_processes != world_size():
        raise SystemExit(f"WORLD_SIZE is {world_size()} but accelerate formed a group of "
                         f"{accelerator.num_processes}; launch with torchrun or accelerate launch")
    for env, engine in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                        ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(env, "").lower() == "true" and accelerator.distributed_type != engine:
            warnings.warn(f"{engine.value} was requested but accelerate runs "
                          f"{accelerator.distributed_type.value} (FSDP and DeepSpeed need GPUs)",
                          stacklevel=1)
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
    if t.eval_tasks:  # unknown tasks / missing data fail before any model loads
        from vldft.eval.in_training import check_eval_tasks, run_benchmarks

        check_eval_tasks(cfg)
    out_dir = cfg.resolve(t.output_dir)
    is_main = accelerator.is_main_process
    log = print if is_main else (lambda *a, **k: None)
    # output_dir has one owner (vldft.checkpoint.claim_output_dir): rank 0 decides, before any
    # model or data is loaded, and every rank acts on its decision (no rank waits alone)
    decision: list = [None]
    if is_main:
        try:
            check_writable(out_dir)
            # an explicit train.resume is checked (whole, same model) before anything is removed
            explicit = check_explicit_resume(t.resume, config_to_dict(cfg), cfg.resolve)
            decision[0] = claim_output_dir(out_dir, config_to_dict(cfg), t.resume, t.overwrite,
                                           explicit)
        except SystemExit as e:
            decision[0] = ("refuse", str(e))
        except Exception as e:  # noqa: BLE001 (any failure refuses on every rank, never a hang)
            decision[0] = ("refuse", f"train.output_dir: could not check {out_dir} "
                           f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    if accelerator.num_processes > 1:
        decision = broadcast_object_list(decision)
    action, detail = decision[0]
    if action == "refuse":
        raise SystemExit(f"[vldft] refused: {detail}")
    if action == "finished":
        log(f"[vldft] {out_dir} already holds this run, finished ({detail.get('steps')} steps, "
            f"{out_dir / 'final'}); nothing to do (train.overwrite=true retrains it, or choose a "
            "new train.output_dir)")
        return detail
    if action == "fresh" and detail:
        log(f"[vldft] train.overwrite: removed the previous run's {len(detail)} outputs from "
            f"{out_dir} ({', '.join(sorted(p.name for p in detail)[:6])}"
            f"{', ...' if len(detail) > 6 else ''})")
    accelerator.wait_for_everyone()
    resume_from = find_resume(t.resume, out_dir, cfg.resolve)
    set_seed(t.seed)

    root = cfg.resolve(cfg.data.image_root) if cfg.data.image_root else None
    heldout = load_jsonl(cfg.resolve(cfg.data.heldout_file), root) if cfg.data.heldout_file else []
    adapter = load_adapter(cfg.model)
    data = build_training_set(cfg, adapter)
    samples = data.samples
    if not samples:
        raise SystemExit("no training samples: every row was skipped or the sources are empty"
                         + (f"\n{data.skips.summary()}" if data.skips.total else ""))
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
    if cfg.model.gradient_checkpointing:
        adapter.model.gradient_checkpointing_enable({"use_reentrant": False})
    adapter.model.config.use_cache = False
    n_params = {part: sum(p.numel() for _, p in ps) for part, ps in adapter.parts().items()}
    n_trainable = sum(p.numel() for p in adapter.model.parameters() if p.requires_grad)
    frozen = (f"all base weights (LoRA adapters train in "
              f"{[p for p in cfg.model.lora.parts if p not in cfg.model.freeze]})"
              if cfg.model.lora else cfg.model.freeze or "none")
    log(f"[vldft] {cfg.model.family} ({cfg.model.name_or_path or 'tiny'}): "
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n_params.items())
        + f"; trainable {n_trainable / 1e6:.2f}M"
        + (f" (LoRA r={cfg.model.lora.r} on {cfg.model.lora.parts})" if cfg.model.lora else "")
        + f"; frozen: {frozen}; {len(samples)} training samples; "
        f"engine {accelerator.distributed_type.value} x {accelerator.num_processes} on "
        f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}")
    if is_main:
        bytes_per = next(adapter.model.parameters()).element_size()
        check_free_space(out_dir, checkpoint_bytes(sum(n_params.values()), n_trainable,
                                                   bytes_per, resumable=t.save_every > 0),
                         "one checkpoint")

    log(f"[vldft] data mixture (seed {t.seed}; token counts estimated):\n"
        + format_table(data.table))
    if data.skips.total:
        log(f"[vldft] skipped while reading:\n{data.skips.summary()}\n  (every skipped row "
            f"with file, line, id, image and reason: {out_dir / 'data_summary.json'})")

    collator = Collator(adapter, cfg.data.max_length, cfg.data.overlong, cfg.data.train_on,
                        data.pixels)
    dataset = EncodedDataset(samples, collator, cfg.data.on_error)
    if cfg.data.group_by_length:
        sampler = LengthGroupedSampler(data.lengths, [bool(s.images) for s in samples],
                                       t.micro_batch_size, t.seed)
    else:
        sampler = RandomBatchSampler(len(samples), t.micro_batch_size, t.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                        num_workers=cfg.data.num_workers)
    world = accelerator.num_processes
    grad_accum = t.global_batch_size // (t.micro_batch_size * world) if t.global_batch_size \
        else t.grad_accum
    optimizer = build_optimizer(adapter, cfg, sharded=_sharded(accelerator))
    lm_group = next((i for i, g in enumerate(optimizer.param_groups)
                     if g["name"] == "language"), 0)  # the logged lr
    module = ObjectiveModule(adapter)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    _register_zero3(accelerator.unwrap_model(module), accelerator)
    total = t.max_steps or max(1, math.ceil(t.epochs * len(loader) / grad_accum))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total),
                              num_training_steps=total)
    accelerator.register_for_checkpointing(scheduler)

    # state that a checkpoint carries besides model / optimizer / scheduler / RNG
    st = {"step": 0, "pos": {"epoch": 0, "consumed": 0}, "seen": [], "skips": [],
          "truncated": 0, "window": {}, "history": [], "evals": [], "nonfinite_steps": 0,
          "nonfinite_run": 0, "collapse_warnings": [], "elapsed": 0.0, "benchmarks": []}
    if resume_from is not None:
        st = read_state(resume_from)
        if st["step"] > total:
            raise SystemExit(f"train.resume: {resume_from} is at step {st['step']}, past this "
                             f"run's {total} steps; resume from an earlier checkpoint, or raise "
                             "train.max_steps (train.epochs)")
        if st["step"] == total:  # stopped at the last step: no step to run, final/ is written
            log(f"[vldft] {resume_from} is at the last step ({total}); writing "
                f"{out_dir / 'final'} and the summary from it")
        if (cfg.loss.name == "asft" and adapter.lora is None
                and st["step"] > cfg.loss.sft_warmup_steps):
            accelerator.unwrap_model(module).reference = build_reference(adapter)
        accelerator.load_state(str(resume_from / "state"))  # weights, optimizer, lr, RNG
        changed = _changed_keys(st.get("config", {}), config_to_dict(cfg))
        log(f"[vldft] resuming from {resume_from} (step {st['step']} of {total})"
            + (f"; warning: config differs from the checkpoint's in {changed}" if changed
               else ""))

    files = contextlib.ExitStack()  # metrics files are closed even if training fails
    stop = StopRequest()
    files.callback(stop.close)
    board = None  # train.report_to=tensorboard: rank 0's writer
    if is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        (out_dir / "data_summary.json").write_text(json.dumps(
            _data_summary(data, {}, []), indent=2))
        for name in ("metrics.jsonl", "histograms.jsonl"):
            truncate_jsonl(out_dir / name, st["step"])  # drop lines logged after the checkpoint
        mode = "a" if resume_from is not None else "w"
        metrics_file = files.enter_context(open(out_dir / "metrics.jsonl", mode))
        hist_file = files.enter_context(open(out_dir / "histograms.jsonl", mode))
        if t.report_to == "tensorboard":
            from vldft.diagnostics import TensorBoardWriter

            board = files.enter_context(TensorBoardWriter(out_dir / "tensorboard",
                                                          after_step=st["step"]))
    try:
        skips = Counter({tuple(k): n for k, n in st["skips"]})
        # encode-time skips of all ranks up to the checkpoint (each rank then adds its own)
        skip_entries = list(st.get("skip_entries", []))
        counts = Counter(truncated=st["truncated"])
        seen, pos = _seen_keys(st), st["pos"]
        stream = micro_batch_stream(loader, sampler, skips, counts, pos, seen, world,
                                    skip_entries)
        window: Counter = Counter(st["window"])
        history, evals = st["history"], st["evals"]
        benchmarks = st.get("benchmarks", [])  # train.eval_tasks lines (absent: older checkpoints)
        postfix: dict[str, str] = {}  # the progress bar's: last log line + last benchmarks
        start = time.perf_counter() - st["elapsed"]
        guard = CollapseGuard(window=t.collapse_window) if t.on_collapse != "off" else None
        stopped = None

        def write_metrics(rec: dict) -> None:
            if is_main:
                metrics_file.write(json.dumps(rec) + "\n")
                metrics_file.flush()
                if board is not None:
                    board.write(rec)

        def run_heldout(step: int) -> None:
            """Every rank scores its share of the held-out samples; results are gathered."""
            if not (heldout and t.eval_max_samples):
                return
            module.eval()
            share = heldout[: t.eval_max_samples][accelerator.process_index::
                                                   accelerator.num_processes]
            part = score_part(adapter, collator, share, t.eval_batch_size, t.eval_max_new_tokens,
                              cfg.loss.spec())
            module.train()
            res = combine(gather_object([part]) if accelerator.num_processes > 1 else [part])
            res["step"] = step
            evals.append(res)
            write_metrics({"step": step, "heldout": {k: v for k, v in res.items()
                                                     if k != "examples"}})
            acc = "n/a" if res["accuracy"] is None else f"{res['accuracy']:.1%}"
            if is_main:
                tqdm.write(f"[vldft] step {step} held-out: ce {res['ce']:.4f}, accuracy {acc}"
                           + (f" ({res['n_skipped']} skipped)" if res["n_skipped"] else ""))

        def run_tasks(step: int) -> None:
            """train.eval_tasks (``run_benchmarks``), logged like the held-out evaluation."""
            if not t.eval_tasks:
                return
            rec = run_benchmarks(adapter, accelerator, cfg, step, out_dir)
            if rec is None:  # not rank 0
                return
            benchmarks.append(rec)
            write_metrics(rec)
            window["t0"] += rec["eval_s"]  # the next log line's tokens_per_s: training time only
            postfix.update({task: f"{v:.3f}" for task, v in rec["benchmarks"].items()})
            bar.set_postfix(postfix)
            tqdm.write(f"[vldft] step {step} benchmarks ({rec['eval_s']:.0f} s, "
                       f"eval/step-{step}): " + ", ".join(
                           f"{task} {rec['metric'][task]} {v:.4f} (n={rec['n'][task]})"
                           for task, v in rec["benchmarks"].items()))

        def save_checkpoint(step: int) -> Path:
            path = out_dir / f"checkpoint-{step}"
            # trainer_state.json is the main process's: it holds every rank's skips
            own = (sorted(seen, key=str), skip_entries)
            state = {"step": step, "pos": dict(pos),
                     **_merge_skip_state(gather_object([own]) if world > 1 else [own]),
                     "truncated": counts["truncated"], "window": dict(window),
                     "history": history, "evals": evals, "benchmarks": benchmarks,
                     "nonfinite_steps": nonfinite,
                     "nonfinite_run": bad_run, "collapse_warnings": collapse_msgs,
                     "elapsed": time.perf_counter() - start, "config": config_to_dict(cfg)}
            save(path, accelerator, _model_writer(adapter, accelerator, module), state)
            if is_main:
                prune(out_dir, t.keep_checkpoints)
            return path

        bar = tqdm(total=total, initial=st["step"], desc="train",
                   disable=None if is_main else True,  # None: off when stderr is not a TTY
                   dynamic_ncols=True)
        hist_every = t.hist_every or t.log_every
        max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
        nonfinite, bad_run, collapse_msgs = st["nonfinite_steps"], st["nonfinite_run"], \
            st["collapse_warnings"]
        module.train()
        step = st["step"]
        for step in range(st["step"] + 1, total + 1):
            objective = "sft" if step <= cfg.loss.sft_warmup_steps else cfg.loss.name
            unwrapped = accelerator.unwrap_model(module)
            if objective == "asft" and adapter.lora is None and unwrapped.reference is None:
                unwrapped.reference = build_reference(adapter)
            micro = [next(stream) for _ in range(grad_accum)]
            probs: list[torch.Tensor] | None = [] if step % hist_every == 0 or step == 1 else None
            step_totals = accumulate_gradients(module, micro, cfg.loss.spec(objective), accelerator,
                                               probs)
            grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), max_norm))
            if math.isfinite(step_totals["loss_sum"]) and math.isfinite(grad_norm):
                optimizer.step()
                bad_run = 0
                window.update(step_totals)
            else:  # no update; the step still counts towards max_steps and the lr schedule
                nonfinite, bad_run = nonfinite + 1, bad_run + 1
                msg = (f"step {step}: non-finite loss ({step_totals['loss_sum']}) or gradient "
                       f"norm ({grad_norm}); step skipped ({bad_run} in a row, {nonfinite} "
                       "in all)")
                write_metrics({"step": step, "nonfinite": msg})
                log(f"[vldft] warning: {msg}", file=sys.stderr)
                if bad_run >= t.max_nonfinite_steps:
                    raise RuntimeError(
                        f"{bad_run} consecutive steps had a non-finite loss or gradient (train."
                        f"max_nonfinite_steps={t.max_nonfinite_steps}); stopping. Try a lower "
                        "train.lr, train.max_grad_norm > 0, or train.mixed_precision=no; the "
                        "last good checkpoint is unaffected")
                probs = None
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if probs is not None:
                counts_t = accelerator.reduce(prob_histogram(probs).to(accelerator.device), "sum")
                if is_main:
                    counts_l = [int(c) for c in counts_t.tolist()]
                    hist_file.write(json.dumps({"step": step, "objective": objective,
                                                "counts": counts_l}) + "\n")
                    hist_file.flush()
            # a record never averages two objectives: the window is also flushed at the last
            # SFT step of a warm-up, so the next record covers DFT (or ASFT) steps only
            switch = step == cfg.loss.sft_warmup_steps and cfg.loss.name != "sft"
            if step % t.log_every == 0 or step == total or switch:
                elapsed = time.perf_counter() - start
                rec = _log_record(step, objective, window, elapsed,
                                  scheduler.get_last_lr()[lm_group], grad_norm)
                history.append(rec)
                write_metrics(rec)
                extra = {"kl": f"{rec['kl']:.4f}"} if "kl" in rec else {}
                postfix.update(loss=f"{rec['loss']:.4f}", ce=f"{rec['ce']:.3f}",
                               p=f"{rec['mean_p']:.3f}", low_p=f"{rec['low_p_frac']:.3f}",
                               H=f"{rec['entropy']:.3f}", **extra, lr=f"{rec['lr']:.2e}",
                               tok_s=f"{rec['tokens_per_s']:.0f}")
                bar.set_postfix(postfix)
                window = Counter(t0=elapsed)
                msg = guard.observe(rec) if guard is not None else None
                if msg:
                    collapse_msgs.append({"step": step, "message": msg})
                    write_metrics({"step": step, "collapse_warning": msg})
                    if is_main:
                        tqdm.write(f"[vldft] warning: {msg}", file=sys.stderr)
                    if t.on_collapse == "stop":
                        stopped = "collapse"
            bar.update(1)
            if stop.signal is not None or world > 1:  # every rank must agree to stop
                asked = torch.tensor([float(stop.signal is not None)], device=accelerator.device)
                if float(accelerator.reduce(asked, reduction="sum")) > 0:
                    stopped = stopped or (stop.signal or "signal")
            if stopped:
                break
            if step < total and ((t.eval_every and step % t.eval_every == 0)
                                 or step == cfg.loss.sft_warmup_steps):
                run_heldout(step)
            if step < total and t.eval_every and step % t.eval_every == 0:
                run_tasks(step)
            if t.save_every and step % t.save_every == 0 and step < total:
                save_checkpoint(step)
        bar.close()

        skipped: Counter = Counter()  # encode-time skips of all ranks, "source/reason" -> samples
        for part in (gather_object([dict(skips)]) if world > 1 else [skips]):
            skipped.update({f"{src or 'data'}/{why}": n for (src, why), n in part.items()})
        # every rank's entries; a sample skipped on two ranks (different epochs) counts once,
        # so any number of processes agrees with a single-process run
        all_entries = _dedupe([e for part in (gather_object([skip_entries]) if world > 1
                                              else [skip_entries]) for e in part])
        if "skip_entries" in st or not st["skips"]:  # (older checkpoints: counts only)
            skipped = Counter(f"{e['source'] or 'data'}/{e['reason']}" for e in all_entries)
        summary = {"steps": step, "objective": cfg.loss.name,
                   "sft_warmup_steps": cfg.loss.sft_warmup_steps, "train_samples": len(samples),
                   "skipped": dict(skipped), "truncated": counts["truncated"],
                   "read_skips": {f"{src}/{why}": n
                                  for (src, why), n in sorted(data.skips.counts.items())},
                   "nonfinite_steps": nonfinite, "collapse_warnings": collapse_msgs,
                   "stopped": stopped, "resumed_from": str(resume_from) if resume_from else None,
                   "first_log": history[0] if history else None,
                   "last_log": history[-1] if history else None,
                   "train_seconds": round(time.perf_counter() - start, 1)}
        if stopped:
            path = save_checkpoint(step)
            summary["checkpoint"] = str(path)
            log(f"[vldft] stopped at step {step} ({stopped}); resumable checkpoint: {path}. "
                "Rerun the same command to " + ("write final/ from it" if step >= total
                                                else "continue") + " (train.resume=auto).")
        else:
            final_dir = out_dir / "final"
            _save(_model_writer(adapter, accelerator, module), accelerator, final_dir)
            summary["checkpoint"] = str(final_dir)
            run_heldout(total)
            run_tasks(total)
        if evals:
            summary["heldout"] = evals[-1]
            summary["heldout_history"] = [{k: e[k] for k in ("step", "ce", "loss", "accuracy")}
                                          for e in evals]
        if benchmarks:
            summary["benchmarks"] = benchmarks
        summary["collapse_guard"] = t.on_collapse
        if guard is not None:  # the whole final phase: drifts too slow for the guard's window
            summary["collapse_warnings"] = collapse_msgs + review(
                history, summary.get("heldout_history"), collapse_msgs)
        if is_main:
            if history:
                switch_at = cfg.loss.sft_warmup_steps if cfg.loss.name != "sft" else 0
                summary["plots"] = [str(p) for p in write_plots(
                    out_dir, history, out_dir / "histograms.jsonl", switch_step=switch_at or None,
                    evals=summary.get("heldout_history"),
                    warnings=summary["collapse_warnings"])]
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            (out_dir / "data_summary.json").write_text(json.dumps(
                _data_summary(data, summary["skipped"], all_entries), indent=2))
            if history and not stopped:
                _print_summary(summary, history)
            if data.skips.entries or all_entries:
                print(_skip_listing(data.skips.entries + all_entries, out_dir))
        accelerator.wait_for_everyone()
        return summary
    finally:
        files.close()


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``train.resume`` ignored)."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b, full = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{full}.")
        elif a != b and full != "train.resume":
            keys.append(full)
    return keys


def _log_record(step: int, objective: str, window: Counter, elapsed: float, lr: float,
                grad_norm: float) -> dict:
    """One metrics line: the window's sums divided by its target-token count."""
    n = max(window["n_tokens"], 1.0)
    rec = {"step": step, "objective": objective, "loss": window["loss_sum"] / n,
           "ce": window["ce_sum"] / n, "mean_p": window["p_sum"] / n,
           "low_p_frac": window["low_p_count"] / n, "entropy": window["entropy_sum"] / n,
           "mean_weight": window["weight_sum"] / n, "lr": lr, "grad_norm": grad_norm,
           "target_tokens": int(window["n_tokens"]),
           "pad_frac": 1.0 - window["n_seen"] / max(window["n_slots"], 1.0),
           "tokens_per_s": window["n_seen"] / max(elapsed - window.get("t0", 0.0), 1e-9),
           "elapsed_s": round(elapsed, 2)}
    if objective == "asft":
        rec["kl"] = window["kl_sum"] / n
    return rec


def _save(write_model, accelerator: Accelerator, path: Path) -> None:
    """Hugging Face files only (``final/``), written to ``<path>.tmp`` then renamed."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written save from a crashed run
        write_model(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    accelerator.wait_for_everyone()


def _reasons(skips: dict) -> str:
    return f" ({', '.join(f'{n} {why}' for why, n in skips.items())})" if skips else ""


SHOWN_SKIPS = 5  # skipped rows listed on the console (all of them: data_summary.json)


def _dedupe(entries: list[dict]) -> list[dict]:
    """Encode-time skip entries, one per (source, id, reason), in a stable order."""
    out = {(e["source"], e["id"], e["reason"]): e for e in entries}
    return sorted(out.values(), key=lambda e: (e["source"], str(e["file"]), e["line"] or 0,
                                               str(e["id"])))


def _seen_keys(st: dict) -> set:
    """The encode-time skips a checkpoint recorded, as the (source, id) keys of
    ``micro_batch_stream``'s ``seen``. Older checkpoints stored plain ids: one that a saved
    entry names takes that entry's source; one that none names (checkpoints with counts only)
    stays a plain id, which matches that id in any source."""
    sources: dict[str, list] = {}
    for e in st.get("skip_entries", []):
        sources.setdefault(e["id"], []).append(e["source"])
    keys: set = set()
    for k in st["seen"]:
        if isinstance(k, (list, tuple)):
            keys.add(tuple(k))
        elif k in sources:
            keys.update((src, k) for src in sources[k])
        else:
            keys.add(k)
    return keys


def _merge_skip_state(parts: list[tuple[list, list[dict]]]) -> dict:
    """The encode-time skip fields of a checkpoint from every rank's (``seen``, entries): their
    union, deduplicated, with counts by (source, reason) from the entries. Every rank resumes
    from this union, so a skip met only on rank k > 0 before the checkpoint is not lost."""
    seen = {tuple(k) if isinstance(k, (list, tuple)) else k for keys, _ in parts for k in keys}
    entries = _dedupe([e for _, part in parts for e in part])
    skips = Counter((e["source"], e["reason"]) for e in entries)
    return {"seen": sorted((list(k) if isinstance(k, tuple) else k for k in seen), key=str),
            "skips": [[list(k), n] for k, n in skips.items()], "skip_entries": entries}


def _data_summary(data, encode_counts: dict, encode_entries: list[dict]) -> dict:
    """data_summary.json: the mixture table, skip counts (read / encode) and every skipped
    row (``skipped``: stage, source, reason, file, line, id, image, offset, message)."""
    read = data.skips.to_dict()
    return {"sources": data.table,
            "read_skips": {k: v for k, v in read.items() if k != "entries"},
            "encode_skips": encode_counts,
            "skipped": read["entries"] + encode_entries}


def _skip_listing(entries: list[dict], out_dir: Path) -> str:
    """Console lines: skip counts by reason, the first few skipped rows, where the rest are."""
    by_reason = Counter(f"{e['stage']} {e['reason']}" for e in entries)
    lines = [f"[vldft] {len(entries)} skipped rows ("
             + ", ".join(f"{n} {why}" for why, n in sorted(by_reason.items())) + "):"]
    lines += [f"  {format_entry(e)}" for e in entries[:SHOWN_SKIPS]]
    more = f"{len(entries) - SHOWN_SKIPS} more; " if len(entries) > SHOWN_SKIPS else ""
    lines.append(f"  ({more}every skipped row with file, line, id, image and reason: "
                 f"{out_dir / 'data_summary.json'})")
    return "\n".join(lines)


def _print_summary(summary: dict, history: list[dict]) -> None:
    first, last = summary["first_log"], summary["last_log"]
    print("\n[vldft] loss curve (step: objective loss | plain CE | mean target p):")
    stride = max(1, len(history) // 10)
    for rec in history[::stride] + ([history[-1]] if (len(history) - 1) % stride else []):
        print(f"  {rec['step']:>5} {rec['objective']:>3}: {rec['loss']:.4f} | ce {rec['ce']:.4f}"
              f" | p {rec['mean_p']:.3f}")
    print(f"[vldft] {summary['steps']} steps in {summary['train_seconds']} s; "
          f"ce {first['ce']:.4f} -> {last['ce']:.4f}; "
          f"skipped {sum(summary.get('read_skips', {}).values())} rows while reading"
          f"{_reasons(summary.get('read_skips', {}))} and {sum(summary['skipped'].values())} "
          f"samples while encoding{_reasons(summary['skipped'])}; "
          f"truncated {summary['truncated']}")
    for h in summary.get("heldout_history", []):
        acc = "n/a" if h["accuracy"] is None else f"{h['accuracy']:.1%}"
        print(f"[vldft] held-out at step {h['step']} ({summary['heldout']['n']} samples): "
              f"ce {h['ce']:.4f}, {summary['objective']} loss {h['loss']:.4f}, "
              f"answer accuracy {acc}")
    for b in summary.get("benchmarks", []):
        print(f"[vldft] benchmarks at step {b['step']}: " + ", ".join(
            f"{task} {b['metric'][task]} {v:.4f} (n={b['n'][task]})"
            for task, v in b["benchmarks"].items()))
    if summary.get("heldout", {}).get("accuracy_by_kind"):
        kinds = summary["heldout"]["accuracy_by_kind"]
        print("[vldft] final accuracy by kind: "
              + ", ".join(f"{k} {v:.0%}" for k, v in kinds.items()))
    warned = summary.get("collapse_warnings") or []
    if warned:
        print(f"[vldft] {len(warned)} collapse warning(s) (also in summary.json):")
        for w in warned:
            print(f"  step {w['step']}" + (f" ({w['when']})" if w.get("when") else "")
                  + f": {w['message']}")
    elif summary["objective"] != "sft":
        print("[vldft] collapse guard: " + ("off (train.on_collapse=off)"
                                            if summary.get("collapse_guard") == "off"
                                            else "no warnings"))
    print(f"[vldft] saved Hugging Face checkpoint: {summary['checkpoint']}")


def cli(argv: list[str] | None = None) -> None:
    """``python -m vldft.train CONFIG [section.key=value ...] [--print-config]`` (``--help``)."""
    import argparse
    import dataclasses
    import textwrap
    import typing

    argv = sys.argv[1:] if argv is None else argv

    def keys(cls: type, prefix: str = "") -> list[str]:
        """``cls``'s keys; nested sections as ``lora.r``, lists of mappings as ``sources[]``."""
        out = []
        for name, tp in typing.get_type_hints(cls).items():
            inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
            if not inner:
                out.append(prefix + name)
            elif typing.get_origin(tp) is list:  # data.sources: a list of mappings
                out.append(f"{prefix}{name}[] ({', '.join(keys(inner[0]))})")
            else:
                out += keys(inner[0], f"{prefix}{name}.")
        return out

    sections = "\n".join(
        textwrap.fill(f"{name}: " + ", ".join(keys(tp)), width=96, initial_indent="  ",
                      subsequent_indent="      ", break_long_words=False)
        for name, tp in typing.get_type_hints(Config).items() if name != "base_dir")
    epilog = (
        "config sections and keys (defaults and meanings: README.md, section \"Config "
        f"reference\"):\n{sections}\n\n"
        "overrides: section.key=value, the value read as YAML, applied after the file:\n"
        "  train.lr=1e-5 loss.name=sft model.freeze=[vision] model.lora.r=8 "
        "data.heldout_file=null\n\n"
        "Progress bars are drawn only when stderr is a terminal; a log file gets the periodic "
        "[vldft] lines.")
    prog = "vldft-train" if Path(sys.argv[0]).name == "vldft-train" else "python -m vldft.train"
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                        help="optional overrides of the config's values (see below)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + overrides + defaults) as YAML "
                             "and exit without loading a model")
    args = parser.parse_intermixed_args(argv)
    from vldft.progress import quiet_if_logging

    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(f"# {args.config} + overrides {args.overrides}; relative paths resolve "
                  f"against {cfg.base_dir}")
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return
        main(cfg)
    except ConfigError as e:  # from loading, or from main's checks before any model loads
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:  # a bad row / image with data.on_error=raise: file, line, id
        raise SystemExit(f"data error: {e}") from None


if __name__ == "__main__":
    cli()
