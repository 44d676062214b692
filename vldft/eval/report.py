"""Compare evaluation runs, paper style: one row per run, one column per benchmark (its headline
metric), an average column, and differences against the first run. Written as ``comparison.md``
(also printed), ``comparison.csv`` and a grouped bar chart ``comparison.png``.

    python -m vldft.eval compare runs/eval/base runs/eval/sft runs/eval/dft [--out DIR]

A benchmark's headline metric is the one its paper reports (``benchmarks.HEADLINE``; the first
metric of a task otherwise). Runs scored on different sample counts for the same task (e.g. one
with ``--limit``) are flagged: their numbers are not comparable.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from vldft.data.benchmarks import HEADLINE, PERCENT_TASKS
from vldft.plotting import pyplot


@dataclass
class Run:
    """One evaluation run: its label, headline score and sample count per task."""

    label: str
    scores: dict[str, float]
    n: dict[str, int | None]
    versions: dict[str, str] = field(default_factory=dict)  # task version, lmms-eval version
    # how the replies were generated (model class, arguments but the checkpoint's path) and the
    # digest of each task's local data: runs that differ in these score different things
    settings: str | None = None
    data: dict[str, str | None] = field(default_factory=dict)


def load_run(run_dir: str | Path) -> Run:
    """The headline metric of each task of a run directory written by ``vldft.eval``."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json (not a `python -m vldft.eval` run)")
    data = json.loads(path.read_text())
    if "metrics" not in data:
        raise ValueError(f"{path}: no 'metrics' key (not written by vldft.eval)")
    scores: dict[str, float] = {}
    n: dict[str, int | None] = {}
    for row in data["metrics"]:
        task, metric = row["task"], row["metric"]
        wanted = HEADLINE.get(task)
        if (wanted is None and task not in scores) or metric == wanted:
            scores[task] = float(row["value"]) / (100 if task in PERCENT_TASKS else 1)
            n[task] = row.get("n")
    lmms, meta = data.get("lmms_eval") or {}, data.get("vldft") or {}
    versions = {t: f"task {(lmms.get('versions') or {}).get(t)}, lmms-eval "
                   f"{meta.get('lmms_eval_version')}" for t in scores}
    args = str(meta.get("model_args", ""))
    if meta.get("model"):
        args = args.replace(str(meta["model"]), "<checkpoint>")
    settings = f"{meta.get('model_class')} {args}" if meta else None
    identity_data = (meta.get("identity") or {}).get("data") or {}
    digests = {t: (identity_data.get(t) or {}).get("files") for t in scores}
    return Run(Path(run_dir).resolve().name, scores, n, versions, settings, digests)


def _columns(runs: list[Run]) -> list[str]:
    return list(dict.fromkeys(t for r in runs for t in r.scores))


def average(run: Run, columns: list[str]) -> float | None:
    """Mean over ``columns``; None unless the run has every one of them (a partial average
    would not be comparable)."""
    if not columns or any(c not in run.scores for c in columns):
        return None
    return sum(run.scores[c] for c in columns) / len(columns)


def sample_count_warnings(runs: list[Run]) -> list[str]:
    """One line per task whose runs were scored on different numbers of samples, with
    different task / lmms-eval versions or on different local data, and one if the runs
    generated with different settings: their numbers are not comparable."""
    out = []
    for task in _columns(runs):
        counts = {r.label: r.n.get(task) for r in runs if task in r.scores}
        if len(set(counts.values())) > 1:
            out.append(f"{task}: runs scored different sample counts: "
                       + ", ".join(f"{k} n={v}" for k, v in counts.items())
                       + " (e.g. --limit): not comparable")
        versions = {r.label: r.versions.get(task) for r in runs if task in r.scores}
        if len(set(versions.values())) > 1:
            out.append(f"{task}: runs used different versions: "
                       + "; ".join(f"{k} {v}" for k, v in versions.items()))
        data = {r.label: r.data.get(task) for r in runs if task in r.scores and r.data.get(task)}
        if len(set(data.values())) > 1:
            out.append(f"{task}: runs read different data (the local files' digests differ: "
                       f"{', '.join(data)}): not comparable")
    settings = {r.label: r.settings for r in runs if r.settings is not None}
    if len(set(settings.values())) > 1:
        out.append("runs generated with different settings (model class / arguments, e.g. "
                   "--max-new-tokens, pixel limits): "
                   + "; ".join(f"{k}: {v}" for k, v in settings.items()))
    return out


def comparison_table(runs: list[Run]) -> str:
    """Markdown: rows = runs, columns = tasks + ``avg``; later rows show ``0.4200 (+0.0500)``,
    the difference to the first run; ``-`` where a run lacks the task."""
    cols = _columns(runs)
    head = "| run | " + " | ".join(cols) + " | avg |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    base = runs[0]
    base_values = {**base.scores, "avg": average(base, cols)}
    for i, run in enumerate(runs):
        values = {**run.scores, "avg": average(run, cols)}
        cells = []
        for c in [*cols, "avg"]:
            v, b = values.get(c), base_values.get(c)
            if v is None:
                cells.append("-")
            elif i == 0 or b is None:
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.4f} ({v - b:+.4f})")
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    warnings = sample_count_warnings(runs)
    if warnings:
        lines += ["", *[f"> warning: {w}" for w in warnings]]
    return "\n".join(lines) + "\n"


def write_csv(runs: list[Run], path: Path) -> Path:
    """``run, <task>..., avg`` then ``<task>_n`` columns; empty cells where a value is missing."""
    cols = _columns(runs)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["run", *cols, "avg", *[f"{c}_n" for c in cols]])
        for run in runs:
            avg = average(run, cols)
            w.writerow([run.label, *[run.scores.get(c, "") for c in cols],
                        "" if avg is None else avg, *[run.n.get(c, "") for c in cols]])
    return path


def bar_chart(runs: list[Run], path: Path) -> Path:
    """Grouped bars: one group per task (and avg), one bar per run (needs matplotlib)."""
    plt = pyplot()
    cols = _columns(runs)
    keys = [*cols, "avg"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(keys) * len(runs) ** 0.5 + 2), 3.6))
    for i, run in enumerate(runs):
        values = {**run.scores, "avg": average(run, cols) or 0.0}
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [values.get(k, 0.0) for k in keys], width, label=run.label)
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
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # runs/a/final and runs/b/final: label by parent too
        for run, d in zip(runs, run_dirs, strict=True):
            run.label = "/".join(Path(d).resolve().parts[-2:])
    table = comparison_table(runs)
    out = Path(out_dir) if out_dir else Path(run_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table)
    write_csv(runs, out / "comparison.csv")
    bar_chart(runs, out / "comparison.png")
    print(table, end="")
    print(f"[vldft] wrote {out / 'comparison.md'}, comparison.csv and comparison.png")
    return table
