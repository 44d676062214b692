"""Compare evaluation runs: a task x checkpoint markdown table with differences against the first
run, written to stdout and ``comparison.md``, and a grouped bar chart ``comparison.png``.
"""

from __future__ import annotations

import json
from pathlib import Path


def load_run(run_dir: str | Path) -> tuple[str, dict[str, float]]:
    """(label, {"task metric": value}) from a run directory written by ``vldft.eval.run``."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json (not a `python -m vldft.eval` run)")
    data = json.loads(path.read_text())
    if "metrics" not in data:
        raise ValueError(f"{path}: no 'metrics' key (not written by vldft.eval)")
    values = {f"{r['task']} {r['metric']}": float(r["value"]) for r in data["metrics"]}
    return Path(run_dir).resolve().name, values


def comparison_table(runs: list[tuple[str, dict[str, float]]]) -> str:
    """Markdown: one row per task metric, one column per run; later columns show the
    difference to the first (``0.4200 (+0.0500)``); ``-`` where a run lacks the metric."""
    keys = list(dict.fromkeys(k for _, vals in runs for k in vals))
    head = "| task | " + " | ".join(label for label, _ in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    base = runs[0][1]
    for key in keys:
        cells = []
        for i, (_, vals) in enumerate(runs):
            if key not in vals:
                cells.append("-")
            elif i == 0 or key not in base:
                cells.append(f"{vals[key]:.4f}")
            else:
                cells.append(f"{vals[key]:.4f} ({vals[key] - base[key]:+.4f})")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(runs: list[tuple[str, dict[str, float]]], path: Path) -> Path:
    """Grouped bars: one group per task metric, one bar per run (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for _, vals in runs for k in vals))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(keys) * len(runs) ** 0.5 + 2), 3.6))
    for i, (label, vals) in enumerate(runs):
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [vals.get(k, 0.0) for k in keys], width, label=label)
    ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> str:
    """Print and write the comparison of ``run_dirs`` (first = baseline); returns the table."""
    if not run_dirs:
        raise ValueError("compare: give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    table = comparison_table(runs)
    out = Path(out_dir) if out_dir else Path(run_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table)
    bar_chart(runs, out / "comparison.png")
    print(table, end="")
    print(f"[vldft] wrote {out / 'comparison.md'} and {out / 'comparison.png'}")
    return table
