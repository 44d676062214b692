"""A small objective study: train a grid of runs, score each on held-out data, tabulate and plot.

    python -m vldft.compare configs/demo.yaml --grid loss.name=sft,dft train.seed=0,1 \\
        --variant warm_dft loss.name=dft loss.sft_warmup_steps=300 --out runs/cmp
    python -m vldft.compare ... --list           # the same arguments: runs and their indices
    python -m vldft.compare ... --index 3        # only run 3 (job arrays)
    python -m vldft.compare ... --report         # table + plots of the finished runs
    python -m vldft.compare study.yaml           # grid / variants from the YAML's sweep section

The shipped CPU study: see the header of ``configs/study_geo.yaml`` and ``docs/study_geo.md``.

CONFIG is a training config, optionally with a ``sweep`` section (removed before the training
config is validated)::

    sweep:
      out: runs/my_study             # study directory (default: <train.output_dir>_compare)
      variants:                      # named sets of overrides (default: one, "base")
        sft: {loss.name: sft}
        sft_then_dft: {loss.name: dft, loss.sft_warmup_steps: 300}
      grid:                          # crossed with every variant
        train.seed: [0, 1, 2]

``--grid KEY=V1,V2`` and ``--variant NAME KEY=V ...`` add to (or replace) the YAML's axes and
variants; trailing ``key=value`` arguments apply to every run. Runs: the grid's product (unless
variants are given and the grid only varies ``train.seed``), plus each variant crossed with the
grid axes it does not set itself; named ``<variant>_<key><value>...`` (``loss.name`` by its
value); each trains with :func:`vldft.train.main` into
``<out>/runs/<name>`` and is scored on ``data.heldout_file`` (required) by the loop's held-out
scorer (``vldft.heldout``: teacher-forced CE and greedy answer accuracy, lenient and counting
only stated answers) every
``train.eval_every`` steps and at the end, on the final weights (what ``final/`` holds). A run
whose ``summary.json`` exists is not trained again (``--force`` retrains it with
``train.overwrite=true``: the old outputs are removed under the run directory's lock), unless
a signal stopped it (SIGTERM, Ctrl-C): it is continued from its checkpoint, and it is not
tabulated until it finishes. A signal stops the study (exit 0), not only the current run.

The report groups runs that differ only in ``train.seed`` and gives mean, sample standard
deviation and range over seeds (``results.md``, ``results.csv``, ``results.json``) and plots
held-out accuracy, plain CE, the objective and the mean target probability over steps, one line
per run (``compare.png``). Collapse warnings are those the training loop's guard gave (or, for
runs trained with the guard off, what :func:`vldft.guard.scan` finds in ``metrics.jsonl``).

On a cluster, one array task per run, then one report (every run is independent; a run is a
normal training, so it may itself use several GPUs)::

    N=$(python -m vldft.compare study.yaml --list | tail -n +2 | wc -l)
    sbatch --array=0-$((N-1)) --wrap "torchrun --nproc_per_node 8 -m vldft.compare study.yaml"
    python -m vldft.compare study.yaml --report    # after the array finished

(the index comes from ``--index``, else ``SLURM_ARRAY_TASK_ID``, ``PBS_ARRAY_INDEX`` or
``LSB_JOBINDEX``; without one, every run is trained in turn).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

from vldft.config import ConfigError, config_to_dict, load_config
from vldft.guard import scan
from vldft.plotting import pyplot
from vldft.progress import prog_name, quiet_if_logging
from vldft.study import SEED_KEY, Run, Study, build_study, run_dir

INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAY_INDEX", "LSB_JOBINDEX")
METRICS = [("accuracy", "held-out accuracy"),
           ("accuracy_strict", "held-out accuracy, stated answers only"),
           ("heldout_ce", "held-out CE"),
           ("train_ce", "train CE (last log)"), ("objective", "objective (last log)"),
           ("mean_p", "train mean p (last log)")]
# per-kind tables: lenient scoring, and only replies that state their answer ("Answer: X")
BY_KIND = {"accuracy_by_kind": "Held-out accuracy by kind",
           "accuracy_strict_by_kind": "Held-out accuracy by kind, stated answers only"}


def run_config(study: Study, run: Run):
    """The config ``run`` trains with (the study's base, its overrides, its folder)."""
    return load_config(None, [*study.base, *run.overrides,
                              f"train.output_dir={run_dir(study, run)}"], bundled=study.bundled)


def check_same_run(study: Study, run: Run) -> None:
    """A run folder that holds a finished run must hold *this* run: the settings its
    ``run.json`` records equal the study's for it (``vldft.run_dir`` fingerprints). Else a
    one-line ``SystemExit`` naming the keys that differ: reusing it would report another
    study's numbers under this one's settings."""
    from vldft.run_dir import (
        absolute_forms,
        fingerprint,
        fingerprint_diff,
        recorded_absolute,
        recorded_fingerprint,
    )

    out = run_dir(study, run)
    cfg = run_config(study, run)
    config, absolute = config_to_dict(cfg), config_to_dict(cfg, absolute=True)
    old = recorded_fingerprint(out)
    diff = ["its settings are not recorded"] if old is None else fingerprint_diff(
        old, fingerprint(config), recorded_absolute(out), absolute_forms(config, absolute))
    if diff:
        raise SystemExit(f"compare: {out} holds run {run.name} trained with other settings "
                         f"({'; '.join(diff)}); --force retrains every run, or choose another "
                         "--out")


def train_run(study: Study, run: Run, force: bool = False) -> dict:
    """Train (unless this very run is done) and return the run's summary. A data or model
    error stops the study in one line naming the run, as ``vldft.train`` says it."""
    from vldft.checkpoint import TrainingAborted
    from vldft.data import DataError

    try:
        return _train_run(study, run, force)
    except ConfigError as e:
        raise SystemExit(f"compare: run {run.name}: config error: {e}") from None
    except DataError as e:
        raise SystemExit(f"compare: run {run.name}: data error: {e}") from None
    except TrainingAborted as e:
        raise SystemExit(f"compare: run {run.name}: error: {e}") from None


def _train_run(study: Study, run: Run, force: bool) -> dict:
    from vldft.data.download import require_data
    from vldft.train import main

    out = run_dir(study, run)
    done = out / "summary.json"
    if done.is_file() and not force:
        check_same_run(study, run)
        summary = json.loads(done.read_text())
        if not interrupted(summary):
            print(f"[vldft] compare: {run.name} already done ({done}); --force retrains it")
            return summary
        print(f"[vldft] compare: {run.name} was stopped at step {summary.get('steps')} "
              f"({summary['stopped']}): continuing it")
    cfg = run_config(study, run)
    # --force: the training run replaces the old one's outputs itself, under the run
    # directory's lock (removing the folder here first would pull it from under a process
    # still training into it, which then shared the path with this one)
    cfg.train.overwrite = cfg.train.overwrite or force
    require_data(cfg)  # missing downloads: one line, before the model loads
    print(f"[vldft] compare: training {run.name}: {' '.join(run.overrides) or '(base)'}")
    return main(cfg)


def interrupted(summary: dict) -> bool:
    """A run stopped by a signal (SIGTERM, Ctrl-C): resumable, not a result. A run the collapse
    guard stopped (``train.on_collapse: stop``) is one: that is how it ended."""
    return summary.get("stopped") not in (None, "collapse")


def _summary(study: Study, run: Run) -> dict | None:
    try:
        return json.loads((run_dir(study, run) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def collect(study: Study, run: Run) -> dict | None:
    """One row of results for a finished run (None if it has no summary yet)."""
    out = run_dir(study, run)
    if not (out / "summary.json").is_file():
        return None
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in lines if "loss" in r]
    held = [{"step": r["step"], **r["heldout"]} for r in lines if "heldout" in r]
    warnings = summary.get("collapse_warnings")
    if warnings is None:  # trained before the guard existed, or with it off
        warnings = scan(logs)
    last, h = logs[-1] if logs else {}, summary.get("heldout") or {}
    return {"name": run.name, "group": run.group, "variant": run.variant,
            "seed": run.settings.get(SEED_KEY), **{k: v for k, v in run.settings.items()
                                                   if k != SEED_KEY},
            "accuracy": h.get("accuracy"), "heldout_ce": h.get("ce"),
            "accuracy_by_kind": h.get("accuracy_by_kind", {}),
            "accuracy_strict": h.get("accuracy_strict"),
            "accuracy_strict_by_kind": h.get("accuracy_strict_by_kind", {}),
            "train_ce": last.get("ce"), "objective": last.get("loss"),
            "mean_p": last.get("mean_p"), "entropy": last.get("entropy"),
            "collapse_warnings": len(warnings),
            "first_warning_step": warnings[0]["step"] if warnings else None,
            "stopped": summary.get("stopped"), "steps": summary.get("steps"),
            "train_seconds": summary.get("train_seconds"),
            "curves": {"logs": [{k: r.get(k) for k in ("step", "objective", "loss", "ce",
                                                        "mean_p", "entropy")} for r in logs],
                       "heldout": [{k: r.get(k) for k in ("step", "accuracy", "ce")}
                                   for r in held]}}


def _spread(values: list) -> dict:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return {"n": 0}
    return {"n": len(vals), "mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals)}


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean / std / range over the seeds of each group, in the order groups first appear."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    table = []
    for name, rs in groups.items():
        kinds = sorted({k for r in rs for k in r["accuracy_by_kind"]})
        table.append({"group": name, "runs": len(rs),
                      "seeds": [r["seed"] for r in rs],
                      **{key: _spread([r.get(key) for r in rs]) for key, _ in METRICS},
                      **{by: {k: _spread([r.get(by, {}).get(k) for r in rs]) for k in kinds}
                         for by in BY_KIND},
                      "runs_with_collapse_warning": sum(r["collapse_warnings"] > 0 for r in rs),
                      "train_seconds": _spread([r["train_seconds"] for r in rs])})
    return table


def _fmt(s: dict, pct: bool = False) -> str:
    if not s.get("n"):
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.4f}" if v < 10 else f"{v:.1f}")
    if s["n"] == 1:
        return f(s["mean"])
    return f"{f(s['mean'])} ± {f(s['std'])} [{f(s['min'])}, {f(s['max'])}]"


def markdown(table: list[dict]) -> str:
    head = ["run (seeds)", "held-out acc. %", "stated answers only %", "held-out CE",
            "train CE", "objective", "train mean p", "collapse warned"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in table:
        lines.append("| " + " | ".join([
            f"{g['group']} ({len(g['seeds'])})", _fmt(g["accuracy"], pct=True),
            _fmt(g["accuracy_strict"], pct=True), _fmt(g["heldout_ce"]), _fmt(g["train_ce"]),
            _fmt(g["objective"]), _fmt(g["mean_p"]),
            f"{g['runs_with_collapse_warning']}/{g['runs']}"]) + " |")
    for by, title in BY_KIND.items():
        kinds = sorted({k for g in table for k in g[by] if g[by][k].get("n")})
        if not kinds:
            continue
        lines += ["", f"{title} (%, mean ± std over seeds):", "",
                  "| run | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
        for g in table:
            lines.append(f"| {g['group']} | " + " | ".join(
                _fmt(g[by].get(k, {}), pct=True).split(" [")[0] for k in kinds) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path | None:
    plt = pyplot(skip="compare.png")
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    styles = ["-", "--", ":", "-."]
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    panels = [(axes[0, 0], "heldout", "accuracy", "held-out answer accuracy"),
              (axes[0, 1], "logs", "ce", "plain CE (training tokens)"),
              (axes[1, 0], "logs", "loss", "objective (the loss trained)"),
              (axes[1, 1], "logs", "mean_p", "mean target probability")]
    for ax, curve, key, title in panels:
        for r in rows:
            pts = [(c["step"], c[key]) for c in r["curves"][curve] if c.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), color=colors[r["group"]],
                        linestyle=styles[seeds.index(r["seed"]) % len(styles)],
                        marker="o" if curve == "heldout" or len(pts) == 1 else None,
                        markersize=3, label=r["name"])  # one point: a line draws nothing
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0, 1].set_yscale("log")
    axes[1, 0].set_yscale("log")
    legend = next((ax for ax in axes.flat if ax.get_legend_handles_labels()[0]), None)
    if legend is not None:  # (held-out accuracy may be absent: no empty-legend warning)
        legend.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def report(study: Study) -> tuple[list[dict], list[dict]]:
    """Write results.{md,csv,json} and compare.png for every finished run; print the table."""
    for run in study.runs:  # a finished run of other settings must not enter the table
        if (run_dir(study, run) / "summary.json").is_file():
            check_same_run(study, run)
    summaries = {run.name: _summary(study, run) for run in study.runs}
    stopped = [run.name for run in study.runs
               if summaries[run.name] is not None and interrupted(summaries[run.name])]
    rows = [r for r in (collect(study, run) for run in study.runs
                        if run.name not in stopped) if r is not None]
    missing = [run.name for run in study.runs if summaries[run.name] is None]
    if not rows:
        raise SystemExit(f"compare: no finished run under {study.out / 'runs'} yet"
                         + (f" (interrupted: {', '.join(stopped)}; rerun the study without "
                            "--report to continue them)" if stopped else ""))
    table = aggregate(rows)
    study.out.mkdir(parents=True, exist_ok=True)
    md = markdown(table)
    (study.out / "results.md").write_text(md + "\n")
    (study.out / "results.json").write_text(json.dumps({"groups": table, "runs": rows,
                                                        "missing": missing,
                                                        "interrupted": stopped}, indent=2))
    flat = [{k: v for k, v in r.items() if k != "curves" and k not in BY_KIND} for r in rows]
    with open(study.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        writer.writeheader()
        writer.writerows(flat)
    png = plot(rows, study.out / "compare.png")
    print(f"\n[vldft] compare: {len(rows)} of {len(study.runs)} runs finished"
          + (f" (missing: {', '.join(missing)})" if missing else "")
          + (f" (interrupted, not tabulated: {', '.join(stopped)}; rerun the study to continue "
             "them)" if stopped else "") + "\n" + md)
    print(f"[vldft] wrote {study.out / 'results.md'}, results.csv, results.json"
          + (f", {png}" if png else ""))
    return rows, table


def _array_index() -> int | None:
    for env in INDEX_ENV:
        if os.environ.get(env, "").strip():
            return int(os.environ[env])
    return None


def cli(argv: list[str] | None = None) -> Study:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog=prog_name("vldft.compare", "vldft-compare"), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides: section.key=value (value read as YAML), as for python -m vldft.train "
               "(its --help lists the config keys)")
    parser.add_argument("config", help="training config, optionally with a sweep section")
    parser.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                        help="optional overrides applied to every run")
    parser.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                        help="grid axes (crossed with each other and with the variants); "
                             "every KEY=V item up to the next option is an axis, one without a "
                             "comma too (an axis of one value, in the run names): give plain "
                             "overrides before --grid")
    parser.add_argument("--variant", nargs="+", action="append", default=[],
                        metavar=("NAME", "KEY=VALUE"), help="a named set of overrides")
    parser.add_argument("--out", default=None,
                        help="study directory (relative: to the working directory; default: "
                             "the study file's sweep.out, else train.output_dir + _compare)")
    parser.add_argument("--index", type=int, default=None,
                        help="train only run INDEX (default: $SLURM_ARRAY_TASK_ID etc.)")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument("--report", action="store_true", help="only tabulate finished runs")
    parser.add_argument("--force", action="store_true", help="retrain finished runs")
    args = parser.parse_intermixed_args(argv)  # overrides after options too
    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    try:
        study = build_study(args.config, args.overrides, args.grid, args.variant, args.out)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    if args.list:
        print("index  run  overrides")
        for i, run in enumerate(study.runs):
            print(f"{i}  {run.name}  {' '.join(run.overrides)}")
        return study
    index = args.index if args.index is not None else _array_index()
    if not args.report:
        if index is not None:
            if not 0 <= index < len(study.runs):
                raise SystemExit(f"--index {index}: the study has runs 0-{len(study.runs) - 1}")
            _stop_if_interrupted(train_run(study, study.runs[index], args.force),
                                 study.runs[index])
            return study  # the report comes from a last, separate call
        for i, run in enumerate(study.runs):
            print(f"[vldft] compare: run {i + 1}/{len(study.runs)}")
            _stop_if_interrupted(train_run(study, run, args.force), run)
    if _is_main_process():
        report(study)
    return study


def _stop_if_interrupted(summary: dict, run: Run) -> None:
    """A run stopped by a signal stops the study too (the next run is not started): exit 0,
    as vldft.train does, saying how to go on."""
    if summary and interrupted(summary):
        print(f"[vldft] compare: stopped ({summary['stopped']}) in {run.name} at step "
              f"{summary.get('steps')}; rerun the same command to continue it (the finished "
              "runs are kept)", flush=True)
        raise SystemExit(0)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> None:
    """The ``vldft-compare`` command (``cli`` returns the Study, which is not an exit code)."""
    cli(argv)


if __name__ == "__main__":
    main()
