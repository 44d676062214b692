"""What DFT users need to see besides the loss: target-probability histograms and curves.

DFT's loss can fall while the model collapses (DESIGN.md section 7), so every run logs plain CE,
the mean target probability, the fraction of target tokens with p < 0.1 and the entropy next to
the objective, saves a histogram of target probabilities every ``train.hist_every`` steps
(``histograms.jsonl``; the DFT paper's key figure shows this distribution turning bimodal), and
at the end draws ``training_curves.png`` and ``prob_histograms.png`` in the output directory
(needs matplotlib: ``pip install "vldft[plot]"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BINS = 20


def prob_histogram(probs: list[torch.Tensor], bins: int = BINS) -> torch.Tensor:
    """Counts of target probabilities in ``bins`` equal bins over [0, 1] (float64 [bins])."""
    if not probs:
        return torch.zeros(bins, dtype=torch.float64)
    p = torch.cat([x.detach().float().flatten().cpu() for x in probs])
    return torch.histc(p, bins=bins, min=0.0, max=1.0).double()


def write_plots(out_dir: Path, history: list[dict], hist_file: Path) -> list[Path]:
    """Curves of every logged metric and first / middle / last histograms as PNG files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('[vldft] matplotlib not installed: no plots (pip install "vldft[plot]")')
        return []
    keys = [("loss", "objective"), ("ce", "plain CE"), ("mean_p", "mean target p"),
            ("low_p_frac", "fraction p < 0.1"), ("entropy", "entropy (nats)"), ("kl", "KL to ref")]
    keys = [(k, t) for k, t in keys if any(k in r for r in history)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    steps = [r["step"] for r in history]
    for ax, (key, title) in zip(axes.flat, keys, strict=False):
        ax.plot(steps, [r.get(key, float("nan")) for r in history])
        ax.set_title(title)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
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
