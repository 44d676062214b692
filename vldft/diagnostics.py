"""What DFT users need to see besides the loss: target-probability histograms and curves.

DFT's loss can fall while the model collapses
(docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu), so every run logs plain CE, the mean
target probability, the fraction of target tokens with p < 0.1 and the entropy next to the
objective, saves a histogram of target probabilities every ``train.hist_every`` steps
(``histograms.jsonl``; the DFT paper's key figure shows this distribution turning bimodal), and
at the end draws ``training_curves.png`` (objective switch, held-out evaluations and collapse
warnings marked) and ``prob_histograms.png`` in the output directory (needs matplotlib:
``pip install "vldft[plot]"``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vldft.plotting import pyplot

BINS = 20


def prob_histogram(probs: list[torch.Tensor], bins: int = BINS) -> torch.Tensor:
    """Counts of target probabilities in ``bins`` equal bins over [0, 1] (float64 [bins])."""
    if not probs:
        return torch.zeros(bins, dtype=torch.float64)
    p = torch.cat([x.detach().float().flatten().cpu() for x in probs])
    return torch.histc(p, bins=bins, min=0.0, max=1.0).double()


def switch_steps(history: list[dict]) -> list[tuple[int, str, str]]:
    """``(step, from, to)`` for every change of objective between consecutive records: the
    switch happens after ``step``, the last step of the earlier objective."""
    return [(a["step"], a["objective"], b["objective"])
            for a, b in zip(history, history[1:], strict=False)
            if a.get("objective") != b.get("objective")]


def curve_figure(history: list[dict], switch_step: int | None = None,
                 evals: list[dict] | None = None, warnings: list[dict] | None = None):
    """The training-curves figure: one panel per logged metric, each objective's records drawn
    as its own line (an SFT loss and a DFT loss are different quantities), and on every panel
    a dashed line at the objective switch (``switch_step``, else any change of objective in
    ``history``), dotted lines at held-out evaluations (``evals``: ``{"step", "accuracy",
    "ce"}``) and red lines at collapse warnings (``warnings``: ``{"step", "message"}``); held-out
    CE is drawn on the plain-CE panel and held-out accuracy gets its own panel. Returns the
    matplotlib figure (the caller saves and closes it); ImportError without matplotlib."""
    plt = pyplot()
    evals, warnings = evals or [], warnings or []
    keys = [("loss", "objective"), ("ce", "plain CE"), ("mean_p", "mean target p"),
            ("low_p_frac", "fraction p < 0.1"), ("entropy", "entropy (nats)"), ("kl", "KL to ref")]
    keys = [(k, t) for k, t in keys if any(k in r for r in history)]
    accs = [e for e in evals if e.get("accuracy") is not None]
    n = len(keys) + bool(accs)
    rows = max(1, -(-n // 3))
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.5 * rows), squeeze=False)
    after = next((r["objective"] for r in history if switch_step and r["step"] > switch_step),
                 None)
    if after is not None:  # an explicit switch the run got past
        prev = next((r["objective"] for r in history if r["step"] <= switch_step), "sft")
        switches = [(switch_step, prev, after)]
    else:
        switches = switch_steps(history)
    objectives = list(dict.fromkeys(r.get("objective", "?") for r in history))
    panels = list(axes.flat)
    for ax, (key, title) in zip(panels, keys, strict=False):
        if key == "loss":
            for name in objectives:
                part = [r for r in history if r.get("objective", "?") == name]
                ax.plot([r["step"] for r in part], [r.get(key, float("nan")) for r in part],
                        marker=".", label=f"{name} loss")
        else:
            ax.plot([r["step"] for r in history], [r.get(key, float("nan")) for r in history],
                    label=f"train {title}")
        if key == "ce" and evals:
            ces = [float("nan") if e.get("ce") is None else e["ce"] for e in evals]
            ax.plot([e["step"] for e in evals], ces, "s", color="tab:green",
                    label="held-out CE")
        _markers(ax, switches, evals, warnings)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key in ("loss", "ce"):
            ax.legend(fontsize=7)
    if accs:
        ax = panels[len(keys)]
        ax.plot([e["step"] for e in accs], [e["accuracy"] for e in accs], "s-",
                color="tab:green", label="held-out accuracy")
        _markers(ax, switches, evals, warnings)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("held-out answer accuracy")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in panels[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _markers(ax, switches: list[tuple[int, str, str]], evals: list[dict],
             warnings: list[dict]) -> None:
    """Vertical lines: objective switches (dashed), held-out evaluations (dotted), collapse
    warnings (red); each kind labelled once per panel for the legend."""
    for i, (step, a, b) in enumerate(switches):
        ax.axvline(step, color="k", linestyle="--", linewidth=1,
                   label=f"switch {a} -> {b} (step {step})" if i < 3 else None)
    for i, e in enumerate(evals):
        ax.axvline(e["step"], color="tab:green", linestyle=":", linewidth=0.8,
                   label="held-out evaluation" if i == 0 else None)
    for i, w in enumerate(warnings):
        ax.axvline(w["step"], color="tab:red", linewidth=1.5,
                   label="collapse warning" if i == 0 else None)


def write_plots(out_dir: Path, history: list[dict], hist_file: Path,
                switch_step: int | None = None, evals: list[dict] | None = None,
                warnings: list[dict] | None = None) -> list[Path]:
    """Curves of every logged metric (:func:`curve_figure`, with the objective switch,
    held-out evaluations and collapse warnings marked) and first / middle / last histograms as
    PNG files."""
    plt = pyplot(skip="plots")
    if plt is None:
        return []
    fig = curve_figure(history, switch_step, evals, warnings)
    paths = [out_dir / "training_curves.png"]
    fig.savefig(paths[0], dpi=80)
    plt.close(fig)

    hists = []
    if hist_file.exists():
        hists = [json.loads(x) for x in hist_file.read_text().splitlines()]
    if hists:
        chosen = [hists[0], hists[len(hists) // 2], hists[-1]]
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 1.0 / BINS
        for h in {id(h): h for h in chosen}.values():
            total = max(sum(h["counts"]), 1)
            centers = [(i + 0.5) * width for i in range(BINS)]
            ax.plot(centers, [c / total for c in h["counts"]], marker="o",
                    label=f"step {h['step']} ({h['objective']})")
        ax.set_xlabel("target-token probability")
        ax.set_ylabel("fraction of target tokens")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "prob_histograms.png")
        fig.savefig(paths[-1], dpi=80)
        plt.close(fig)
    return paths


class TensorBoardWriter:
    """``train.report_to: tensorboard``: every number of a ``metrics.jsonl`` record becomes a
    scalar at its step: ``train/<key>`` for the log lines (loss, ce, mean_p, lr, ...),
    ``heldout/<key>`` and ``benchmarks/<task>`` for evaluations; warnings become text. On
    resume, events logged after the checkpoint's step are dropped (``purge_step``), as the
    metrics file's lines are."""

    def __init__(self, log_dir: str | Path, after_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=after_step + 1 if after_step
                                    else None)

    def write(self, rec: dict) -> None:
        step = int(rec.get("step", 0))
        for key, value in rec.items():
            if key == "step":
                continue
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"train/{key}", value, step)
            elif isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and \
                            math.isfinite(v):
                        self.writer.add_scalar(f"{key}/{sub}", v, step)
            elif isinstance(value, str):
                self.writer.add_text(key, value, step)
        self.writer.flush()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.close()
