"""The run's state between optimizer steps: what a checkpoint's ``trainer_state.json`` carries
besides the model, optimizer, lr scheduler and RNG states (those are ``accelerator.save_state``'s),
and the stop request that SIGTERM / Ctrl-C raise.

``RunState`` is the one definition of those fields: a fresh run starts from ``RunState()``, a
resumed one from ``RunState.from_dict(read_state(checkpoint))``, and every checkpoint writes
``to_dict()``. The fields hold their live forms (sets, Counters); ``to_dict`` gives the JSON form.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vldft.checkpoint import TrainingAborted, complete_checkpoints, read_state
from vldft.loader import merge_skip_state, seen_keys


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    pos: dict = field(default_factory=lambda: {"epoch": 0, "consumed": 0})  # this rank's data
    seen: set = field(default_factory=set)  # skipped samples' (source, id): each counted once
    skips: Counter = field(default_factory=Counter)  # (source, reason) -> skipped samples
    skip_entries: list[dict] = field(default_factory=list)  # every skipped sample, with file...
    truncated: int = 0  # samples cut to data.max_length
    video_shortened: int = 0  # samples whose videos were sampled with fewer frames to fit
    window: Counter = field(default_factory=Counter)  # sums since the last metrics line
    history: list[dict] = field(default_factory=list)  # the metrics lines
    evals: list[dict] = field(default_factory=list)  # held-out evaluations
    benchmarks: list[dict] = field(default_factory=list)  # train.eval_tasks results
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient, in all
    nonfinite_run: int = 0  # ... in a row, up to now
    collapse_warnings: list[dict] = field(default_factory=list)
    elapsed: float = 0.0  # training seconds before this process started (see ``clock``)
    config: dict = field(default_factory=dict)  # the config the checkpoint was written with
    data: dict = field(default_factory=dict)  # the training set it was written on (data_identity)
    model_commit: str | None = None  # the hub commit of model.name_or_path this run loaded
    world_size: int | None = None  # processes that wrote the checkpoint (None: not recorded)
    # not saved: a checkpoint of an older version kept skip counts but no entries
    counts_only_skips: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        self.start_clock()

    def start_clock(self) -> None:
        """Count training time from now on, on top of ``elapsed``."""
        self._origin = time.perf_counter() - self.elapsed

    def clock(self) -> float:
        """Training seconds up to now, this process's and the checkpoint's before it."""
        return time.perf_counter() - self._origin

    def own_skips(self) -> tuple[list, list[dict]]:
        """This rank's part of the checkpoint's skip fields (``to_dict``'s ``skip_parts``)."""
        return sorted(self.seen, key=str), self.skip_entries

    def to_dict(self, skip_parts: list[tuple[list, list[dict]]] | None = None) -> dict:
        """trainer_state.json's content. ``skip_parts``: every rank's ``own_skips()`` (the
        checkpoint holds their union); default this rank's only."""
        return {"step": self.step, "pos": dict(self.pos),
                **merge_skip_state(skip_parts or [self.own_skips()]),
                "truncated": self.truncated, "video_shortened": self.video_shortened,
                "window": dict(self.window),
                "history": self.history, "evals": self.evals, "benchmarks": self.benchmarks,
                "nonfinite_steps": self.nonfinite_steps, "nonfinite_run": self.nonfinite_run,
                "collapse_warnings": self.collapse_warnings, "elapsed": self.clock(),
                "config": self.config, "data": self.data, "model_commit": self.model_commit,
                "world_size": self.world_size}

    @classmethod
    def from_dict(cls, d: dict) -> RunState:
        """The state a checkpoint saved. Older checkpoints may lack ``skip_entries`` (skips
        were counts only; ``seen`` plain ids), ``benchmarks`` and ``config``."""
        return cls(step=d["step"], pos=d["pos"], seen=seen_keys(d),
                   skips=Counter({tuple(k): n for k, n in d["skips"]}),
                   skip_entries=list(d.get("skip_entries", [])), truncated=d["truncated"],
                   video_shortened=d.get("video_shortened", 0),
                   window=Counter(d["window"]), history=d["history"], evals=d["evals"],
                   benchmarks=d.get("benchmarks", []), nonfinite_steps=d["nonfinite_steps"],
                   nonfinite_run=d["nonfinite_run"], collapse_warnings=d["collapse_warnings"],
                   elapsed=d["elapsed"], config=d.get("config", {}), data=d.get("data", {}),
                   model_commit=d.get("model_commit"), world_size=d.get("world_size"),
                   counts_only_skips="skip_entries" not in d and bool(d["skips"]))

    @classmethod
    def resume(cls, path: Path, total: int, config: dict, final: Path, log,
               data: dict | None = None, explicit: bool = False,
               model_commit: str | None = None, world_size: int = 1) -> RunState:
        """The state of checkpoint ``path`` for a run of ``total`` steps with ``config`` (logs
        the config keys that differ from the checkpoint's; refuses a checkpoint past ``total``;
        one at ``total`` only writes ``final``). ``data`` (:func:`data_identity` of this run's
        training set) other than the checkpoint's: refused when resuming the run's own
        checkpoint, a warning when the checkpoint was named (``explicit``: train.resume=PATH).
        A hub ``model_commit`` other than the one the checkpoint's run loaded is a warning: the
        checkpoint's weights and optimizer state are restored, but what is read from the model
        repository (processor, tokenizer, chat template) is the new commit's. A checkpoint
        written by another number of processes than ``world_size`` is refused unless it is at
        the last step (only final/ is written): its data position counts micro-batches per
        rank, and the global batch (without train.global_batch_size), the packing bins and the
        per-rank RNG follow the count."""
        state = cls.from_dict(read_state(path))
        if state.world_size not in (None, world_size) and state.step < total:
            n = state.world_size
            raise SystemExit(
                f"train.resume: {path} was written by {n} process{'es' * (n > 1)}; this run "
                f"has {world_size}: the data position, batches and RNG of a resume would not "
                f"carry over (samples trained twice or never); resume with {n} "
                f"(torchrun --nproc_per_node {n}), or start a new run from its weights with "
                f"model.name_or_path={path} and another train.output_dir")
        data_change = data_changes(state.data, data or {})
        if data_change and not explicit:
            raise SystemExit(
                f"train.resume: the training data changed since {path} was saved "
                f"({data_change}): the resumed run would go on over other samples in another "
                "order; restore the data (or the model's processor files), or start a new run "
                "(train.overwrite=true, or another train.output_dir), or continue from this "
                f"checkpoint on the new data with train.resume={path}")
        if data:
            state.data = data
        if state.step > total:
            raise SystemExit(f"train.resume: {path} is at step {state.step}, past this "
                             f"run's {total} steps; resume from an earlier checkpoint, or raise "
                             "train.max_steps (train.epochs)")
        if state.step == total:  # stopped at the last step: no step to run, final/ is written
            log(f"[vldft] {path} is at the last step ({total}); writing "
                f"{final} and the summary from it")
        changed = changed_keys(state.config, config)
        log(f"[vldft] resuming from {path} (step {state.step} of {total})"
            + (f"; warning: config differs from the checkpoint's in {changed}" if changed
               else "")
            + (f"; warning: the training data differs from the checkpoint's ({data_change})"
               if data_change else ""))
        old_commit = state.model_commit
        if model_commit and old_commit and model_commit != old_commit:
            log(f"[vldft] warning: model.name_or_path now loads hub commit {model_commit[:12]}, "
                f"the checkpoint's run loaded {old_commit[:12]}: the checkpoint's weights are "
                "restored, but the processor, tokenizer and chat template are the new commit's; "
                f"set model.revision={old_commit} to resume on the old one")
        state.config = config  # the next checkpoint's
        state.world_size = world_size
        state.model_commit = model_commit
        return state

    def count_nonfinite(self, step: int, loss_sum: float, grad_norm: float) -> str:
        """Record a step skipped for a non-finite loss or gradient; the message to log."""
        self.nonfinite_steps, self.nonfinite_run = self.nonfinite_steps + 1, self.nonfinite_run + 1
        return (f"step {step}: non-finite loss ({loss_sum}) or gradient norm ({grad_norm}); "
                f"step skipped ({self.nonfinite_run} in a row, {self.nonfinite_steps} in all)")

    def too_many_nonfinite(self, limit: int, out_dir: Path | None = None
                           ) -> NonFiniteError | None:
        """The error that stops the run once ``limit`` steps in a row were non-finite: one line
        naming the newest whole checkpoint in ``out_dir`` (skipped steps change no weight, so
        it is good) and how to continue from it."""
        if self.nonfinite_run < limit:
            return None
        found = complete_checkpoints(out_dir, quiet=True) if out_dir is not None else []
        fixes = "a lower train.lr, train.max_grad_norm > 0, or train.mixed_precision=no"
        then = (f"kept: {found[-1][1].name} (last good checkpoint); continue from it with "
                f"train.resume={found[-1][1]} and {fixes}" if found else
                f"no checkpoint was kept; rerun with {fixes}")
        return NonFiniteError(
            f"stopped at step {self.step}: {self.nonfinite_run} consecutive steps had a "
            f"non-finite loss or gradient (train.max_nonfinite_steps={limit}); {then}")


class NonFiniteError(TrainingAborted):
    """``train.max_nonfinite_steps`` non-finite steps in a row (see ``too_many_nonfinite``)."""


def data_identity(data, cfg) -> dict:
    """What a checkpoint records of the training set ``data`` (``vldft.data.mix.TrainingSet``)
    it was written on: rows read and used per source, a digest of every sample's estimated
    length in mixture order (rows added, removed or edited to another length change it) and a
    digest of the samples' content in that order (messages, answers, image / video references:
    an edit that keeps every length changes it; ``vldft.data.rowstore.content_digest``). The
    start-up cache's key, which also covers file times and vldft's code, would change on a
    touched file or an upgrade."""
    import hashlib

    import numpy as np

    from vldft.data.formats import image_roots
    from vldft.data.rowstore import content_digest

    digest = hashlib.sha256(np.asarray(data.lengths, dtype=np.int64).tobytes()).hexdigest()[:16]
    return {"sources": {row["source"]: [row["read"], row["used"]] for row in data.table},
            "lengths": digest, "content": content_digest(data.samples, image_roots(cfg))}


def data_changes(old: dict, new: dict) -> str:
    """How two ``data_identity`` records differ, in words ("" when they agree, or when either
    is missing: a checkpoint from before they were recorded). A record without ``content`` (a
    checkpoint from before the content was recorded) is compared on what it has."""
    shared = old.keys() & new.keys()
    if not old or not new or all(old[k] == new[k] for k in shared):
        return ""
    a, b = old.get("sources", {}), new.get("sources", {})
    parts = [f"source {name}: rows read / used {a.get(name, 'absent')} -> {b.get(name, 'absent')}"
             for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    if parts:
        return "; ".join(parts)
    if old.get("lengths") != new.get("lengths"):
        return ("the same row counts, other estimated sample lengths: rows edited, or another "
                "tokenizer, chat template or image processor")
    return ("the same row counts and estimated lengths, other sample content: a text, an answer "
            "or an image / video reference edited, or rows in another order")


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``train.resume`` ignored)."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b, full = old.get(k), new.get(k), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{full}.")
        elif a != b and full != "train.resume":
            keys.append(full)
    return keys



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
        how = "Ctrl-C again" if signum == signal.SIGINT else "SIGINT (Ctrl-C)"
        print(f"\n[vldft] {self.signal} received: saving a checkpoint after this step "
              f"({how} to abort without saving)", file=sys.stderr, flush=True)

    def agreed(self, accelerator) -> str | None:
        """The stop every rank agrees on after a step (a collective when several ranks run):
        this rank's signal, ``"signal"`` when only another rank got one, else None."""
        if self.signal is None and accelerator.num_processes == 1:
            return None
        asked = torch.tensor([float(self.signal is not None)], device=accelerator.device)
        if float(accelerator.reduce(asked, reduction="sum")) > 0:
            return self.signal or "signal"
        return None

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
