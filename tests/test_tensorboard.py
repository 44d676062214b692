"""``train.report_to: tensorboard``: the numbers of metrics.jsonl, read back from the event files
with TensorBoard's own reader, and a clear error when tensorboard is missing."""

import json

import pytest
from conftest import demo_config, write_tiny_data

pytest.importorskip("tensorboard", reason="needs the tensorboard extra")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from vldft.config import ConfigError  # noqa: E402
from vldft.train import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def test_metrics_are_tensorboard_scalars(tmp_path):
    data = write_tiny_data(tmp_path / "train.jsonl", 16)
    out = tmp_path / "run"
    main(demo_config(
        f"data.train_files=[{data}]", f"data.heldout_file={data}", f"train.output_dir={out}",
        "train.max_steps=4", "train.micro_batch_size=4", "train.log_every=2",
        "loss.sft_warmup_steps=2", "train.eval_max_samples=4", "train.eval_max_new_tokens=4",
        "train.report_to=tensorboard"))
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/mean_p", "train/lr", "heldout/accuracy"} <= tags
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    expected = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert [s for s, _ in losses] == [s for s, _ in expected] == [2, 4]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_missing_tensorboard_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train\.report_to: tensorboard is not installed"):
        demo_config("train.report_to=tensorboard")
