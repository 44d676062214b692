"""Run lmms-eval's real evaluator (``lmms_eval.evaluator.simple_evaluate``) on a checkpoint and
write ``results.json``, per-sample logs ``samples_<task>.jsonl`` and ``summary.md`` to one run
directory (``python -m vldft.eval --help``).
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import time
from pathlib import Path

from vldft.eval.scoring import extract_answer

TASK_DIR = Path(__file__).resolve().parents[2] / "eval"  # the repo's task YAMLs (--include_path)
# Rule-scored lmms-eval tasks (no API key; names checked against lmms-eval 0.7.3), and the
# offline tasks of eval/. The reasoning tasks import math-verify: see the README's caveat.
SUITES = {
    "geo": ["geometry3k", "mathvision_testmini", "mathverse_testmini_reasoning",
            "mathvista_testmini_cot_reasoning", "wemath_testmini_reasoning",
            "dynamath_reasoning", "logicvista_reasoning"],
    "local": ["vldft_geo_heldout", "geometry3k_local"],
}


def resolve_tasks(tasks: list[str], suites: list[str], known: set[str]) -> list[str]:
    """Tasks named directly plus those of each suite, in order, checked against ``known``."""
    names = list(tasks)
    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; suites: {sorted(SUITES)}")
        names += SUITES[suite]
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no tasks: pass --tasks and/or --suite")
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise ValueError(f"task {name!r} is not known to lmms-eval (with --include_path "
                             f"{TASK_DIR}); closest: {close}")
    return names


def metric_rows(results: dict) -> list[dict]:
    """One row per (task, metric) of lmms-eval's ``results`` (stderr kept beside its metric)."""
    rows = []
    for task, values in results.get("results", {}).items():
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in values.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            stderr = values.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric, "value": float(value), "n": n,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows


def write_samples(out: Path, samples: dict) -> list[Path]:
    """``samples_<task>.jsonl``: doc id, target, response, extracted answer, metrics."""
    paths = []
    for task, rows in samples.items():
        path = out / f"samples_{task}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for s in rows:
                resp = s.get("filtered_resps") or s.get("resps") or [""]
                while isinstance(resp, list):
                    resp = resp[0] if resp else ""
                doc = s.get("doc") or {}
                choices = doc.get("choices") if isinstance(doc, dict) else None
                metrics = {k: s[k] for k in s if isinstance(s[k], (int, float)) and k not in (
                    "doc_id",)}
                fh.write(json.dumps({"doc_id": s.get("doc_id"), "target": str(s.get("target")),
                                     "response": str(resp),
                                     "extracted": extract_answer(str(resp), choices),
                                     **metrics}, ensure_ascii=False, default=str) + "\n")
        paths.append(path)
    return paths


def summary_markdown(model: str, rows: list[dict], meta: dict) -> str:
    lines = [f"# Evaluation of `{model}`", "",
             f"lmms-eval {meta['lmms_eval_version']}, model class `{meta['model_class']}`, "
             f"limit {meta['limit']}, batch size {meta['batch_size']}, "
             f"{meta['wall_s']:.0f} s, {meta['date']}", "",
             "| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['stderr']:.4f}" if r["stderr"] is not None else "-"
        lines.append(f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {err} | {r['n']} |")
    return "\n".join(lines) + "\n"


def evaluate(model: str, tasks: list[str], out_dir: str | Path, suites: list[str] = (),
             limit: int | float | None = None, batch_size: int = 1,
             data_dir: str | Path | None = None, max_new_tokens: int | None = None,
             model_class: str = "vldft", model_args: str = "", device: str | None = None,
             verbosity: str = "WARNING") -> dict:
    """Evaluate ``model`` on ``tasks`` (+ ``suites``) with lmms-eval; returns what was written:
    {"results": path, "summary": path, "samples": [paths], "rows": metric rows}."""
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {data_dir}: not a directory")
        os.environ["VLDFT_EVAL_DATA"] = str(Path(data_dir).resolve())
    import lmms_eval
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(verbosity, include_path=str(TASK_DIR), model_name=model_class)
    names = resolve_tasks(list(tasks), list(suites), set(manager.all_tasks))
    args = f"pretrained={model}"  # batch_size / device reach the class from simple_evaluate
    if model_class == "vldft" and max_new_tokens:
        args += f",max_new_tokens={max_new_tokens}"
    if model_args:
        args += f",{model_args}"
    start = time.perf_counter()
    results = evaluator.simple_evaluate(
        model=model_class, model_args=args, tasks=names, limit=limit, batch_size=batch_size,
        device=device, log_samples=True, task_manager=manager, verbosity=verbosity)
    wall = time.perf_counter() - start
    if results is None:  # only on non-zero ranks of a distributed run
        return {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", {})
    meta = {"model": str(model), "model_class": model_class, "model_args": args,
            "tasks": names, "limit": limit, "batch_size": batch_size,
            "lmms_eval_version": getattr(lmms_eval, "__version__", None) or _version(),
            "wall_s": wall, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "data_dir": os.environ.get("VLDFT_EVAL_DATA")}
    rows = metric_rows(results)
    results_path = out / "results.json"
    results_path.write_text(json.dumps({"vldft": meta, "metrics": rows, "lmms_eval": results},
                                       indent=2, default=str, ensure_ascii=False))
    sample_paths = write_samples(out, samples)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(str(model), rows, meta))
    return {"results": results_path, "summary": summary, "samples": sample_paths, "rows": rows}


def _version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")
