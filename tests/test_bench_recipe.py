"""bench/recipe_gpu.py on the CPU: the shipped recipe's settings applied as the recipe runs
them, packed vs padded on the same samples, the bf16 set-up beside them (seconds of CPU time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = str(ROOT / "bench" / "recipe_gpu.py")
SMALL = ["--scale", "32", "--samples", "32", "--steps", "1", "--rounds", "1"]


def _run(tmp_path: Path, *args: str) -> dict:
    res = subprocess.run([sys.executable, SCRIPT, *args, *SMALL, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| recipe |" in res.stdout
    return json.loads((tmp_path / "recipe_gpu.json").read_text())


def test_recipe_dry_run_tiny(tmp_path: Path) -> None:
    data = _run(tmp_path, "--tiny", "--peak-tflops", "1")  # a CPU run has no MFU without it
    assert data["tiny"] and data["machine"]["device"] == "cpu (dry run)"
    assert data["length_source"].startswith("modelled")
    s = data["setups"]
    # the shipped config's settings, read through vldft.config
    assert s["recipe"]["freeze"] == ["vision"] and s["recipe"]["gradient_checkpointing"]
    assert s["recipe"]["model_dtype"] == "float32" and s["recipe"]["packing"]
    assert s["recipe"]["micro_batches_per_optimizer_step"] == 2  # train.grad_accum: 2
    assert "data.pack_tokens=256" in s["recipe"]["common_overrides"]  # 8,192 / 32
    assert not s["recipe_padded"]["packing"] and s["recipe_padded"]["micro_batch_size"] == 2
    b = s["bf16_bench"]
    assert (b["model_dtype"], b["freeze"], b["gradient_checkpointing"]) == ("bfloat16", [],
                                                                            False)
    assert b["micro_batches_per_optimizer_step"] == 1
    assert b["trainable_params"] == b["params"] > s["recipe"]["trainable_params"]
    rows = {r["setup"]: r for r in data["rows"]}
    assert list(rows) == ["recipe", "recipe_padded", "bf16_bench"]
    for r in rows.values():
        assert "error" not in r, r
        assert r["tokens_per_s"] > r["useful_tokens_per_s"] > 0 and r["mfu"] > 0
        assert r["cuda_kernels"] == 0 and r["timed_passes"] == 1
    # packed vs padded: the same samples, the same tokens per optimizer step
    p, q = rows["recipe"], rows["recipe_padded"]
    assert p["tokens_per_optimizer_step"] == q["tokens_per_optimizer_step"]
    assert p["targets_per_optimizer_step"] == q["targets_per_optimizer_step"]
    assert p["padding_fraction"] == 0 < q["padding_fraction"]
    assert q["micro_batches_per_optimizer_step"] > 2
    # bf16 set-up: the same packed rows, one optimizer step per row
    assert rows["bf16_bench"]["optimizer_steps"] == 2 * p["optimizer_steps"]
    assert {r["setup"] for r in data["rounds"]} == set(rows)


def test_recipe_dry_run_3b_code_path(tmp_path: Path) -> None:
    """Without --tiny: the model built from a Qwen2.5-VL config (2 x 64 here, 3B on the GPU),
    wrapped in vldft's adapter without tokenizer files; bf16 autocast as accelerate applies it."""
    data = _run(tmp_path, "--cpu", "--arch", "small", "--setups", "recipe", "--no-kernels",
                "--set", "train.mixed_precision=bf16")
    assert not data["tiny"]
    (row,) = data["rows"]
    assert row["mixed_precision"] == "bf16" and row["model_dtype"] == "float32"
    assert "error" not in row and row["tokens_per_s"] > 0
