"""The GPU training benchmark's CPU dry run: same code path, tiny Qwen2.5-VL, seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_gpu_train_dry_run(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--dry-run",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_train.json").read_text())
    assert data["dry_run"] is True and data["machine"]["device"] == "cpu (dry run)"
    rows = data["rows"]
    assert [r["method"] for r in rows] == ["chunked", "naive"]
    for r in rows:
        assert "error" not in r, r
        assert r["seq_len"] == 160 and r["targets"] == 160 - (8 + 1 + 4 + 1 + 56)  # response tokens
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["loss"] > 0
        # FLOPs (common.qwen_flop_terms): 6 N T + causal attention + vision blocks per patch +
        # merger per merged token + lm_head over the targets
        t = r["flop_terms"]
        assert t["text_linear"] == 6 * t["n_text"] * 160
        assert t["text_attention"] == 6 * 2 * 160**2 * 64  # 2 layers, 2 heads x 32
        assert t["vision_linear"] == 6 * t["n_vision"] * 16  # 56 px: 4 x 4 patches
        assert t["projector_linear"] == 6 * t["n_merger"] * 16 / 4  # 2 x 2 merge
        assert t["lm_head_targets"] == 6 * 4096 * 64 * r["targets"]
        assert r["model_flop_per_step"] == t["total"] == sum(
            t[k] for k in ("text_linear", "text_attention", "vision_linear", "projector_linear",
                           "lm_head_targets"))
    # the longest-length search with simulated out-of-memory above 500 tokens: doubling
    # 160 -> 320 -> 640 (OOM), then bisection to the 160-token grid: 480
    for s in data["search"]:
        assert (s["longest_fit"], s["first_oom"], s["capped"]) == (480, 640, False), s
        assert [p["seq_len"] for p in s["probes"]] == [160, 320, 640, 480]
    assert {s["method"] for s in data["search"]} == {"chunked", "naive"}
    assert "| chunked | 160 |" in res.stdout and "longest L that trains" in res.stdout


def test_gpu_train_dry_run_profile_fused_checkpointing(tmp_path: Path) -> None:
    """The options the H100 runs used: per-phase timings + operator table, fused AdamW,
    gradient checkpointing in the timed rows."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--dry-run",
                          "--profile", "160", "--fused-adamw", "--gradient-checkpointing",
                          "--methods", "chunked", "--no-search", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_train.json").read_text())
    assert data["args"]["fused_adamw"] and data["args"]["gradient_checkpointing"]
    assert data["search"] == [] and [r["method"] for r in data["rows"]] == ["chunked"]
    (prof,) = data["profile"]
    phases = prof["phases_s"]
    assert list(phases) == ["forward", "loss", "backward", "clip", "optimizer"]
    assert all(v > 0 for v in phases.values())
    assert abs(prof["step_s"] - sum(phases.values())) < 1e-3
    table = (tmp_path / "profile_chunked_160.txt").read_text()
    assert "aten::mm" in table or "aten::addmm" in table
    assert "fused AdamW, gradient checkpointing" in res.stdout
    assert "| chunked | 160 |" in res.stdout and "phase times" in res.stdout


def test_trl_gpu_reference_dry_run(tmp_path):
    """bench/trl_gpu.py's CPU dry run: vldft's step and TRL's SFTTrainer(loss_type="dft") on the
    same tiny model and batch (needs trl: the bench extra)."""
    pytest.importorskip("trl")
    res = subprocess.run([sys.executable, str(ROOT / "bench/trl_gpu.py"), "--dry-run",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads((tmp_path / "trl_gpu.json").read_text())["rows"]
    assert [r["framework"] for r in rows] == ["vldft", "trl"]
    assert all(r["step_s"] > 0 for r in rows)
