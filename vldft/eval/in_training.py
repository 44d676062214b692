"""``train.eval_tasks``: lmms-eval benchmarks scored on the in-memory model during training
(``vldft.train`` calls these every ``train.eval_every`` steps and at the end; needs the eval
extra). Results go to ``output_dir/eval/step-<N>/`` and one ``metrics.jsonl`` line per
evaluation: ``{"step", "benchmarks": {task: headline value}, "metric", "n", "eval_s"}``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from vldft.adapters.base import Adapter
from vldft.config import Config, ConfigError


def eval_data_dir(cfg: Config) -> Path | None:
    """Where ``train.eval_tasks`` read their benchmarks: ``train.eval_data_dir``; when that is
    null, the data dir (``data.data_dir``, where ``vldft-data download`` puts the copies the
    config needs) if it holds a copy of every benchmark behind the tasks, else None (the hub /
    the datasets cache)."""
    from vldft.data.benchmarks import BY_TASK, LocalDataError, find_local

    t = cfg.train
    if t.eval_data_dir:
        return cfg.resolve(t.eval_data_dir)
    benches = [BY_TASK[name] for name in t.eval_tasks if name in BY_TASK]
    root = cfg.data_root()
    try:
        for bench in benches:
            find_local(bench, root)
    except LocalDataError:
        return None
    return root if benches else None


def check_eval_tasks(cfg: Config) -> None:
    """Resolve ``train.eval_tasks`` with lmms-eval before any model loads: an unknown task, a
    missing local copy (``train.eval_data_dir``) or unreachable, uncached hub data fails here,
    not after the first ``eval_every`` steps. lmms-eval is imported here, not at module level."""
    t = cfg.train
    if not t.eval_tasks:
        return
    from loguru import logger

    from vldft.eval.run import (
        TASK_DIR,
        EvalSetupError,
        build_tasks,
        prepare_environment,
        resolve_tasks,
        task_manager,
    )

    logger.remove()  # lmms-eval logs at DEBUG by default
    logger.add(sys.stderr, level="WARNING")
    data_dir = eval_data_dir(cfg)
    try:
        prepare_environment()
        manager = task_manager("WARNING", include_path=[str(TASK_DIR)], model_name="vldft")
        names = resolve_tasks(t.eval_tasks, [], set(manager.all_tasks))
        build_tasks(names, manager, data_dir, chat=True, model_name="vldft")
    except (ValueError, EvalSetupError) as e:  # in training, vldft.eval's --data-dir DIR is
        # the train.eval_data_dir key
        why = str(e).replace("then pass --data-dir DIR", "then set train.eval_data_dir=DIR")
        raise ConfigError(f"train.eval_tasks: {why}") from None


@contextlib.contextmanager
def _evaluating_alone(accelerator: Accelerator):
    """Rank 0 runs lmms-eval by itself while the other ranks wait: lmms-eval splits its work by
    ``WORLD_SIZE`` / ``RANK`` and torch.distributed's state, so both are hidden for the
    duration; and it reseeds python / numpy / torch, so training's RNG streams are restored."""
    import random
    from unittest import mock

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [accelerator.device.index or 0] if accelerator.device.type == "cuda" else []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=cuda))
        if accelerator.num_processes > 1:
            stack.enter_context(mock.patch.dict(os.environ, {"WORLD_SIZE": "1", "RANK": "0"}))
            stack.enter_context(mock.patch.object(torch.distributed, "is_initialized",
                                                  lambda: False))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def run_benchmarks(adapter: Adapter, accelerator: Accelerator, cfg: Config, step: int,
                   out_dir: Path) -> dict | None:
    """Score ``train.eval_tasks`` with lmms-eval's evaluator on the in-memory model (rank 0;
    the other ranks wait) into ``out_dir/eval/step-<step>/``. Returns the metrics line
    ``{"step", "benchmarks": {task: headline value}, "metric", "n", "eval_s"}`` on rank 0,
    None elsewhere. A failure on rank 0 is raised on every rank (none is left waiting)."""
    t = cfg.train
    rec, error = None, None
    if accelerator.is_main_process:
        try:
            from vldft.data.benchmarks import HEADLINE
            from vldft.eval.model import VldftLMM
            from vldft.eval.run import evaluate

            lm = VldftLMM.from_adapter(adapter, batch_size=t.eval_batch_size,
                                       max_new_tokens=t.eval_tasks_max_new_tokens or None,
                                       video=cfg.data.video)
            lm.accelerator = accelerator  # else lmms-eval builds a second Accelerator
            start = time.perf_counter()
            with _evaluating_alone(accelerator):
                written = evaluate(lm, t.eval_tasks, out_dir / "eval" / f"step-{step}",
                                   limit=t.eval_tasks_limit or None, batch_size=t.eval_batch_size,
                                   data_dir=eval_data_dir(cfg), overwrite=True,
                                   label=f"{out_dir.name} step {step}")
            rec = {"step": step, "benchmarks": {}, "metric": {}, "n": {},
                   "eval_s": round(time.perf_counter() - start, 1)}
            for row in written["rows"]:  # the headline metric, else a task's first one
                task = row["task"]
                if task not in rec["benchmarks"] or row["metric"] == HEADLINE.get(task):
                    rec["benchmarks"][task], rec["metric"][task] = row["value"], row["metric"]
                    rec["n"][task] = row["n"]
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    if accelerator.num_processes > 1:  # also the barrier the other ranks wait at
        failed = torch.tensor([float(error is not None)], device=accelerator.device)
        if float(accelerator.reduce(failed, reduction="sum")) > 0 and error is None:
            raise RuntimeError(f"train.eval_tasks: the evaluation at step {step} failed on "
                               "rank 0 (its error is in rank 0's output)")
    if error is not None:
        raise error
    return rec
