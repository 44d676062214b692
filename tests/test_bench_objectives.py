"""The objective benchmark script runs (--dry-run) and writes well-formed JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_bench_dry_run(tmp_path: Path) -> None:
    out, md = tmp_path / "res.json", tmp_path / "report.md"
    curated = (ROOT / "bench" / "RESULTS.md").read_text()
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "objectives.py"), "--dry-run", "--out", str(out),
         "--md", str(md)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["dry_run"] is True
    assert {"cpu", "cores", "ram_gib", "torch"} <= set(data["machine"])
    rows = data["rows"]
    assert [r["method"] for r in rows] == ["chunked", "trl", "llamafactory"]
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert r["time_s"] > 0 and r["peak_extra_gib"] >= 0
    # all three compute the same DFT loss (mean over target tokens)
    losses = [r["loss"] for r in rows]
    assert max(losses) - min(losses) <= 1e-5 * abs(losses[0])
    assert {q["vs"] for q in data["ratios"]} == {"trl", "llamafactory"}
    text = md.read_text()
    assert "| tiny | 64 | 48 | chunked |" in text and text in res.stdout
    # bench/RESULTS.md is curated by hand: the script leaves it alone
    assert (ROOT / "bench" / "RESULTS.md").read_text() == curated


def test_gpu_bench_dry_run(tmp_path):
    """The GPU benchmark's CPU dry-run: every method runs and agrees on the loss."""
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench/objectives_gpu.py"), "--dry-run",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} == {"chunked", "chunked_rb128", "chunked_c4096", "naive",
                                           "trl", "llamafactory"}
    losses = [r["loss"] for r in rows]
    assert max(losses) - min(losses) < 1e-5 * max(abs(x) for x in losses)
