"""What a run reports: the metrics / histogram files, TensorBoard, the progress bar and
console lines while training (``RunLog``), the metrics records, and the end-of-run summary
(``summary.json``, ``data_summary.json``, the plots and the printed summary).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

import yaml
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from vldft.checkpoint import truncate_jsonl
from vldft.config import Config, config_to_dict
from vldft.diagnostics import write_plots
from vldft.guard import CollapseGuard, review
from vldft.heldout import combine, of_answered, score_part
from vldft.loader import data_summary, skip_listing
from vldft.state import RunState


class RunLog:
    """Where a run's progress goes. Rank 0 writes ``config.yaml``, a first
    ``data_summary.json``, ``metrics.jsonl`` and ``histograms.jsonl`` (on resume: cut back to
    the checkpoint's step, then appended to) and TensorBoard (``train.report_to``), and prints
    the console lines; the other ranks' calls do nothing. ``close()`` closes the files."""

    def __init__(self, cfg: Config, out_dir: Path, data, state: RunState, resumed: bool,
                 total: int, is_main: bool) -> None:
        self.is_main, self.postfix = is_main, {}  # postfix: last log line + last benchmarks
        self._files = contextlib.ExitStack()  # closed even if training fails
        self._board = None  # train.report_to=tensorboard: rank 0's writer
        if is_main:
            (out_dir / "config.yaml").write_text(yaml.safe_dump(  # rerunnable from anywhere
                config_to_dict(cfg, absolute=True), sort_keys=False))
            (out_dir / "data_summary.json").write_text(json.dumps(
                data_summary(data, {}, []), indent=2))
            for name in ("metrics.jsonl", "histograms.jsonl"):
                truncate_jsonl(out_dir / name, state.step)  # drop lines after the checkpoint
            mode = "a" if resumed else "w"
            self._metrics = self._files.enter_context(open(out_dir / "metrics.jsonl", mode))
            self._hists = self._files.enter_context(open(out_dir / "histograms.jsonl", mode))
            if cfg.train.report_to == "tensorboard":
                from vldft.diagnostics import TensorBoardWriter

                self._board = self._files.enter_context(TensorBoardWriter(
                    out_dir / "tensorboard", after_step=state.step))
        self.bar = tqdm(total=total, initial=state.step, desc="train",
                        disable=None if is_main else True,  # None: off when stderr is no TTY
                        dynamic_ncols=True)

    def metrics(self, rec: dict) -> None:
        """One line of metrics.jsonl (and its TensorBoard scalars)."""
        if self.is_main:
            self._metrics.write(json.dumps(rec) + "\n")
            self._metrics.flush()
            if self._board is not None:
                self._board.write(rec)

    def histogram(self, step: int, objective: str, counts: list[int]) -> None:
        if self.is_main:
            self._hists.write(json.dumps({"step": step, "objective": objective,
                                          "counts": counts}) + "\n")
            self._hists.flush()

    def show(self, **values: str) -> None:
        """Update the progress bar's values."""
        self.postfix.update(values)
        self.bar.set_postfix(self.postfix)

    def show_record(self, rec: dict) -> None:
        """A metrics record on the progress bar; without a bar (stderr is no terminal: a log
        file, a pipe) as one ``[vldft] step`` line, so a log shows the run's progress."""
        extra = {"kl": f"{rec['kl']:.4f}"} if "kl" in rec else {}
        values = dict(loss=f"{rec['loss']:.4f}", ce=f"{rec['ce']:.3f}", p=f"{rec['mean_p']:.3f}",
                      low_p=f"{rec['low_p_frac']:.3f}", H=f"{rec['entropy']:.3f}", **extra,
                      lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
        self.show(**values)
        if self.is_main and self.bar.disable:
            print(f"[vldft] step {rec['step']}/{self.bar.total} ({rec['objective']}): "
                  + " ".join(f"{k} {v}" for k, v in values.items()), flush=True)

    def log_step(self, state: RunState, step: int, objective: str, lr: float, grad_norm: float,
                 guard: CollapseGuard | None) -> str | None:
        """A metrics line from the window of steps since the last one (kept in
        ``state.history``; the window restarts); the collapse guard's warning about it, if any
        (kept in ``state.collapse_warnings``)."""
        elapsed = state.clock()
        rec = log_record(step, objective, state.window, elapsed, lr, grad_norm)
        state.history.append(rec)
        self.metrics(rec)
        self.show_record(rec)
        state.window = Counter(t0=elapsed)
        msg = guard.observe(rec) if guard is not None else None
        if msg:
            state.collapse_warnings.append({"step": step, "message": msg})
            self.metrics({"step": step, "collapse_warning": msg})
            self.note(f"[vldft] warning: {msg}", file=sys.stderr)
        return msg

    def info(self, *args, **kwargs) -> None:
        """A console line (``print``), rank 0 only."""
        if self.is_main:
            print(*args, **kwargs)

    def note(self, msg: str, **kwargs) -> None:
        """A console line above the progress bar, rank 0 only."""
        if self.is_main:
            tqdm.write(msg, **kwargs)

    def close(self) -> None:
        self._files.close()


def _num(value: float | None) -> str:
    """A held-out mean for the console: n/a when no token was scored."""
    return "n/a" if value is None else f"{value:.4f}"


class Evaluator:
    """The held-out evaluation (every rank scores its share of ``data.heldout_file``; results
    gathered) and ``train.eval_tasks`` (lmms-eval on rank 0), both logged to ``out`` and kept
    in ``state.evals`` / ``state.benchmarks``."""

    def __init__(self, cfg: Config, accelerator, module, adapter, collator, heldout: list,
                 state: RunState, out: RunLog, out_dir: Path) -> None:
        self.cfg, self.accelerator, self.module, self.adapter = cfg, accelerator, module, adapter
        self.collator, self.heldout, self.state = collator, heldout, state
        self.out, self.out_dir = out, out_dir

    def run(self, step: int) -> None:
        self.score_heldout(step)
        self.run_tasks(step)

    def score_heldout(self, step: int) -> None:
        t, accelerator = self.cfg.train, self.accelerator
        if not (self.heldout and t.eval_max_samples):
            return
        self.module.eval()
        share = self.heldout[: t.eval_max_samples][accelerator.process_index::
                                                    accelerator.num_processes]
        part = score_part(self.adapter, self.collator, share, t.eval_batch_size,
                          t.eval_max_new_tokens, self.cfg.loss.spec())
        self.module.train()
        res = combine(gather_object([part]) if accelerator.num_processes > 1 else [part])
        res["step"] = step
        self.state.evals.append(res)
        self.out.metrics({"step": step, "heldout": {k: v for k, v in res.items()
                                                    if k != "examples"}})
        acc = "n/a" if res["accuracy"] is None else f"{res['accuracy']:.1%}{of_answered(res)}"
        self.out.note(f"[vldft] step {step} held-out: ce {_num(res['ce'])}, accuracy {acc}"
                      + (f" ({res['n_skipped']} skipped)" if res["n_skipped"] else ""))

    def run_tasks(self, step: int) -> None:
        """train.eval_tasks (``run_benchmarks``), logged like the held-out evaluation."""
        if not self.cfg.train.eval_tasks:
            return
        from vldft.eval.in_training import run_benchmarks

        rec = run_benchmarks(self.adapter, self.accelerator, self.cfg, step, self.out_dir)
        if rec is None:  # not rank 0
            return
        self.state.benchmarks.append(rec)
        self.out.metrics(rec)
        self.state.window["t0"] += rec["eval_s"]  # next tokens_per_s: training time only
        self.out.show(**{task: f"{v:.3f}" for task, v in rec["benchmarks"].items()})
        self.out.note(f"[vldft] step {step} benchmarks ({rec['eval_s']:.0f} s, "
                      f"eval/step-{step}): " + ", ".join(
                          f"{task} {rec['metric'][task]} {v:.4f} (n={rec['n'][task]})"
                          for task, v in rec["benchmarks"].items()))


def log_record(step: int, objective: str, window: Counter, elapsed: float, lr: float,
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



def run_summary(cfg: Config, state: RunState, data, skipped: Counter, stopped: str | None,
                resume_from: Path | None) -> dict:
    """summary.json's fields known when the loop ends (``finish_summary`` adds the rest)."""
    return {"steps": state.step, "objective": cfg.loss.name,
            "model_commit": state.model_commit,
            "sft_warmup_steps": cfg.loss.sft_warmup_steps, "train_samples": len(data.samples),
            "skipped": dict(skipped), "truncated": state.truncated,
            "video_shortened": state.video_shortened,
            "read_skips": {f"{src}/{why}": n
                           for (src, why), n in sorted(data.skips.counts.items())},
            "nonfinite_steps": state.nonfinite_steps,
            "collapse_warnings": state.collapse_warnings,
            "stopped": stopped, "resumed_from": str(resume_from) if resume_from else None,
            "first_log": state.history[0] if state.history else None,
            "last_log": state.history[-1] if state.history else None,
            "train_seconds": round(state.clock(), 1)}


def finish_summary(summary: dict, state: RunState, on_collapse: str, guarded: bool,
                   loss=None) -> None:
    """Add the held-out and benchmark results and, when the collapse guard ran (``guarded``),
    its review of the whole final phase (drifts too slow for the guard's window)."""
    if state.evals:
        summary["heldout"] = state.evals[-1]
        summary["heldout_history"] = [{k: e[k] for k in ("step", "ce", "loss", "accuracy",
                                                         "n_skipped")}
                                      for e in state.evals]
    if state.benchmarks:
        summary["benchmarks"] = state.benchmarks
    summary["collapse_guard"] = on_collapse
    if guarded:
        summary["collapse_warnings"] = state.collapse_warnings + review(
            state.history, summary.get("heldout_history"), state.collapse_warnings, loss=loss)


def write_summary(out_dir: Path, cfg: Config, summary: dict, history: list[dict], data,
                  encode_entries: list[dict]) -> None:
    """Rank 0's end of a run: the plots, summary.json, data_summary.json (with every skipped
    row) and the console summary."""
    if history:
        switch_at = cfg.loss.sft_warmup_steps if cfg.loss.name != "sft" else 0
        summary["plots"] = [str(p) for p in write_plots(
            out_dir, history, out_dir / "histograms.jsonl", switch_step=switch_at or None,
            evals=summary.get("heldout_history"), warnings=summary["collapse_warnings"])]
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "data_summary.json").write_text(json.dumps(
        data_summary(data, summary["skipped"], encode_entries), indent=2))
    if history and not summary["stopped"]:
        print_summary(summary, history)
    if data.skips.entries or encode_entries:
        print(skip_listing(data.skips.entries + encode_entries, out_dir))


def _reasons(skips: dict) -> str:
    return f" ({', '.join(f'{n} {why}' for why, n in skips.items())})" if skips else ""



def print_summary(summary: dict, history: list[dict]) -> None:
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
          f"truncated {summary['truncated']}"
          + (f"; videos shortened by frames {summary['video_shortened']}"
             if summary.get("video_shortened") else ""))
    planned, passes = summary.get("epochs_planned"), summary.get("data_passes")
    if planned and summary.get("empty_micro_batches"):
        print(f"[vldft] note: train.epochs={planned:g} planned {summary['steps']} steps from the "
              f"data's micro-batches before encoding; {summary['empty_micro_batches']} of them "
              "had every sample skipped while encoding, so the run went on to "
              f"{passes:g} passes over the data (its last steps took samples from the start "
              "again); train.max_steps sets the number of steps exactly")
    for h in summary.get("heldout_history", []):
        acc = "n/a" if h["accuracy"] is None else f"{h['accuracy']:.1%}{of_answered(h)}"
        skipped = f", {h['n_skipped']} skipped" if h.get("n_skipped") else ""
        print(f"[vldft] held-out at step {h['step']} ({summary['heldout']['n']} samples"
              f"{skipped}): ce {_num(h['ce'])}, {summary['objective']} loss {_num(h['loss'])}, "
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
