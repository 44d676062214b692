"""``train.eval_tasks``: lmms-eval benchmarks scored on the in-memory model during training.

A tiny demo run (48 rows, 8 steps) scores ``vldft_geo_heldout`` (the bundled held-out split, no
download) every 4 steps with lmms-eval's real evaluator, on CPU and offline.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")

from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from conftest import DEMO_HELDOUT, demo_config, write_tiny_data  # noqa: E402

import vldft.step  # noqa: E402
import vldft.train as train  # noqa: E402
from vldft.config import ConfigError  # noqa: E402
from vldft.eval.in_training import _evaluating_alone  # noqa: E402

TASK = "vldft_geo_heldout"


pytestmark = pytest.mark.usefixtures("hf_offline", "one_thread")


def _tiny(tmp: Path, *extra: str):
    """configs/demo.yaml cut down to 48 rows, 8 steps of 8 samples, no held-out file."""
    data = write_tiny_data(tmp / "train.jsonl", 48)
    return demo_config(
        f"data.train_files=[{data}]", "data.heldout_file=null", f"train.output_dir={tmp / 'run'}",
        "train.max_steps=8", "train.micro_batch_size=8", "train.log_every=4",
        "loss.sft_warmup_steps=4", "train.eval_max_samples=0", *extra)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_benchmarks_every_eval_every_steps_and_at_the_end(tmp_path, capsys):
    cfg = _tiny(tmp_path, f"train.eval_tasks=[{TASK}]", "train.eval_tasks_limit=4",
                "train.eval_every=4", "train.eval_batch_size=4",
                "train.eval_tasks_max_new_tokens=16")
    summary = train.main(cfg)
    run = tmp_path / "run"

    lines = [r for r in _read_jsonl(run / "metrics.jsonl") if "benchmarks" in r]
    assert [r["step"] for r in lines] == [4, 8]
    for r in lines:
        value = r["benchmarks"][TASK]
        assert isinstance(value, float) and 0.0 <= value <= 1.0
        assert r["metric"][TASK] == "accuracy" and r["n"][TASK] == 4
    # the training lines are still there, around the benchmark lines
    assert [r["step"] for r in _read_jsonl(run / "metrics.jsonl") if "loss" in r] == [4, 8]

    for step in (4, 8):
        out = run / "eval" / f"step-{step}"
        results = json.loads((out / "results.json").read_text())
        assert results["lmms_eval"]["n-samples"][TASK]["effective"] == 4
        assert [(m["task"], m["n"]) for m in results["metrics"]] == [(TASK, 4)]
        assert len(_read_jsonl(out / f"samples_{TASK}.jsonl")) == 4
        assert (out / "summary.md").is_file()

    assert [b["step"] for b in summary["benchmarks"]] == [4, 8]
    assert json.loads((run / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]
    printed = capsys.readouterr().out
    assert "[vldft] step 4 benchmarks" in printed and f"{TASK} accuracy" in printed


@pytest.mark.parametrize("overrides, key", [
    (["train.eval_tasks=[vldft_geo_heldout]", "train.eval_tasks_limit=-1"],
     "train.eval_tasks_limit"),
    (["train.eval_tasks=[vldft_geo_heldout]", "train.eval_tasks_max_new_tokens=-8"],
     "train.eval_tasks_max_new_tokens"),
    (["train.eval_tasks=[vldft_geo_heldout]", "train.eval_data_dir=data/no-such-dir"],
     "train.eval_data_dir"),
    (["train.eval_tasks=[vldft_geo_heldout, vldft_geo_heldout]"], "train.eval_tasks"),
    (["train.eval_tasks=['']"], "train.eval_tasks"),
    (["train.eval_tasks=vldft_geo_heldout"], "train.eval_tasks"),  # not a list
    (["train.eval_tasks_limit=many"], "train.eval_tasks_limit"),
    (["train.eval_every=4"], "train.eval_every"),  # neither heldout_file nor eval_tasks
])
def test_bad_values_name_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _tiny(tmp_path, *overrides)


def test_eval_every_runs_with_eval_tasks_alone(tmp_path):
    cfg = _tiny(tmp_path, "train.eval_every=4", f"train.eval_tasks=[{TASK}]")
    assert cfg.train.eval_tasks == [TASK] and cfg.train.eval_tasks_limit == 50


def test_missing_lmms_eval_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r'train\.eval_tasks: .*pip install -e "\.\[eval\]"'):
        _tiny(tmp_path, f"train.eval_tasks=[{TASK}]")
    _tiny(tmp_path)  # without eval_tasks, lmms-eval is not needed


def test_unknown_task_fails_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "load_adapter", lambda *a: pytest.fail("model was loaded"))
    cfg = _tiny(tmp_path, "train.eval_tasks=[vldft_geo_heldoot]")
    with pytest.raises(ConfigError, match=r"train\.eval_tasks: .*vldft_geo_heldoot.*"
                                          r"vldft_geo_heldout"):
        train.main(cfg)


def test_sharded_weights_are_refused(tmp_path, monkeypatch):
    class FSDPAccelerator(Accelerator):
        distributed_type = property(lambda self: DistributedType.FSDP)

    monkeypatch.setattr(vldft.step, "Accelerator", FSDPAccelerator)
    monkeypatch.setattr(train, "load_adapter", lambda *a: pytest.fail("model was loaded"))
    cfg = _tiny(tmp_path, f"train.eval_tasks=[{TASK}]")
    with pytest.raises(ConfigError, match=r"train\.eval_tasks: .*FSDP"):
        train.main(cfg)
    # the held-out scoring during training too (ZeRO-3's refusal: tests/test_deepspeed.py)
    cfg = _tiny(tmp_path, f"data.heldout_file={DEMO_HELDOUT}",
                "train.eval_max_samples=4")
    with pytest.raises(ConfigError, match=r"data\.heldout_file: .* not supported under FSDP "
                                          r".*train\.eval_max_samples=0"):
        train.main(cfg)


def test_evaluation_leaves_the_training_rng_streams_alone():
    """lmms-eval reseeds python / numpy / torch; training continues with its own streams."""
    import random

    import numpy as np
    import torch

    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with _evaluating_alone(Accelerator(cpu=True)):
        random.seed(0), np.random.seed(1), torch.manual_seed(2)
    after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
    assert before[0] == after[0] and (before[1] == after[1]).all()
    assert torch.equal(before[2], after[2])


def test_a_benchmark_without_local_data_names_the_training_key(tmp_path, monkeypatch):
    """Offline, a hub benchmark with no local copy fails before the model loads, naming what
    to set in training (train.eval_data_dir), not vldft.eval's --data-dir flag."""
    monkeypatch.setattr(train, "load_adapter", lambda *a: pytest.fail("model was loaded"))
    cfg = _tiny(tmp_path, "train.eval_tasks=[geoqa]")
    with pytest.raises(ConfigError) as e:
        train.main(cfg)
    msg = str(e.value)
    assert "train.eval_data_dir=DIR" in msg and "then pass --data-dir" not in msg, msg
