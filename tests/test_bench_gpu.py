"""The GPU benchmarks' CPU dry runs: same code paths, tiny Qwen2.5-VL, seconds (the GPU runs:
bench/gpu.sh)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_gpu_train_dry_run(tmp_path: Path) -> None:
    # a peak given: the MFU plumbing runs (a CPU dry run has no MFU without one)
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--dry-run",
                          "--peak-tflops", "1", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300,
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


def _bench(name: str):
    """A bench/ script imported in-process (its ``main(argv)`` runs the dry run without a new
    interpreter: seconds, not tens of seconds)."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return __import__(name)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.mark.usefixtures("one_thread")
def test_trl_gpu_rows_on_the_same_samples(tmp_path):
    """bench/trl_gpu.py's dry run: vldft padded / packed and TRL's rows train the same samples
    (same targets and tokens per optimizer step); packed rows carry no padding; a row that cannot
    run (trl or liger-kernel missing, Liger on a CPU) says so; the goal ratio is packed / the best
    TRL row."""
    res = _bench("trl_gpu").main(["--dry-run", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "trl_gpu.json").read_text())["rows"] == res["rows"]
    rows = {r["row"]: r for r in res["rows"]}
    assert list(rows) == ["vldft_padded", "vldft_packed", "trl", "trl_liger"]
    padded, packed = rows["vldft_padded"], rows["vldft_packed"]
    for r in (padded, packed):
        assert "error" not in r, r
        assert r["useful_tokens_per_s"] > 0 and r["tokens_per_s"] > r["useful_tokens_per_s"]
        assert r["samples_per_step"] == 4 and r["timed_steps"] == 1
    assert packed["targets_per_step"] == padded["targets_per_step"]
    assert packed["tokens_per_step"] == padded["tokens_per_step"]
    assert packed["padding_fraction"] == 0 < padded["padding_fraction"]
    assert padded["micro_batches_per_step"] == [2] and packed["micro_batches_per_step"] == [1]
    assert packed["attention"] != "sdpa" and padded["attention"] == "sdpa"  # varlen when packed
    assert len(res["same_samples"]) == 1 and len(res["same_samples"][0]) == 4
    liger = rows["trl_liger"]
    assert liger["error"].startswith("not run: ")  # no CUDA here: never a time
    if not _importable("trl"):
        assert "trl is not importable" in rows["trl"]["error"]
        assert res["goal"] == {"checked": False,
                               "why": "vldft_packed or every TRL row did not run"}
        return
    trl = rows["trl"]
    assert "error" not in trl, trl
    assert trl["targets_per_step"] == padded["targets_per_step"]
    assert trl["padding_fraction"] == padded["padding_fraction"]
    if _importable("liger_kernel") and "CUDA" in liger["error"]:
        assert liger["liger_patched_modules"] > 0  # the patch applies; only running is refused
    goal = res["goal"]
    assert goal["checked"] and goal["best_trl_row"] == "trl"
    assert goal["useful_tokens_per_s_ratio"] == round(
        packed["useful_tokens_per_s"] / trl["useful_tokens_per_s"], 3)
    assert goal["peak_mem_ratio"] is None  # no peak memory on the CPU


def test_objectives_gpu_liger_head(tmp_path):
    """The loss-head bench's Liger DFT row. With liger-kernel, Triton's CPU interpreter runs its
    kernels: the liger check (loss and gradients vs vldft's chunked DFT) passes and the row's
    loss is vldft's. Without it, the row and the check say why they did not run."""
    out = tmp_path / "objectives.json"
    args = ["--dry-run", "--methods", "chunked,liger", "--out", str(out)]
    if not _importable("liger_kernel"):
        _bench("objectives_gpu").main(args)
        data = json.loads(out.read_text())
        (check,) = data["liger_check"]
        assert not check["checked"] and "liger_kernel is not importable" in check["why"]
        liger = [r for r in data["rows"] if r["method"] == "liger"]
        assert liger and "liger_kernel is not importable" in liger[0]["error"]
        return
    # the interpreter is chosen when Triton's kernels are defined: a fresh process
    res = subprocess.run([sys.executable, str(ROOT / "bench/objectives_gpu.py"), *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    (check,) = data["liger_check"]
    assert check["checked"] and check["triton_interpret"] and check["equal_within_tolerance"]
    assert check["loss_rel_diff"] < 1e-5 and check["grad_weight_rel_l2"] < 1e-5  # fp32 here
    loss = {r["method"]: r["loss"] for r in data["rows"]}
    assert math.isclose(loss["liger"], loss["chunked"], rel_tol=1e-5)


@pytest.mark.usefixtures("one_thread", "hf_offline")
def test_eval_throughput_gpu_mode_dry_run(tmp_path):
    """bench/eval_throughput.py --gpu's dry run: vldft.eval's model class at a budget (random
    weights: every batch runs to it), one in-training evaluation through lmms-eval's evaluator,
    and the recipe's evaluation estimated from the two."""
    pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")
    res = _bench("eval_throughput").main(["--dry-run", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "eval_gpu.json").read_text())["model_class"] == \
        res["model_class"]
    a, b, c = res["model_class"], res["in_training"], res["recipe_estimate"]
    assert a["samples"] == 4 and a["batch_size"] == 2 and len(a["batch_s"]) == 2
    assert a["new_tokens_per_batch"] == [6, 6] and a["every_sample_ran_to_budget"]
    assert math.isclose(a["samples_per_s"], 4 / a["wall_s"], rel_tol=1e-2)
    assert b["metrics_line"]["n"] == {"vldft_geo_heldout": 2}
    assert b["new_tokens_per_batch"] == [6]  # the task's 96, capped at --max-new-tokens
    assert 0 < b["generate_s"] < b["wall_s"] and b["other_s"] > 0
    # configs/qwen25vl_geo.yaml: 3 tasks x ceil(50 / 8) batches
    assert c["batches"] == 21 and c["eval_tasks_max_new_tokens"] == 1024
    assert c["estimate_s"] == round(21 * a["median_batch_s"] + b["other_s"], 1)
    assert not c["same_budget_as_measured"]  # the dry run's budget is 6 tokens, batch 2


def test_gpu_scripts_present_and_parse():
    """bench/gpu.sh and bench/wheels.sh parse, and every script gpu.sh runs is in the tree
    (engines_gpu.py is optional: gpu.sh skips it when absent)."""
    for sh in ("gpu.sh", "wheels.sh"):
        res = subprocess.run(["bash", "-n", str(ROOT / "bench" / sh)], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
    text = (ROOT / "bench" / "gpu.sh").read_text()
    scripts = {w for w in text.split() if w.startswith("bench/") and w.endswith(".py")}
    assert {"bench/trl_gpu.py", "bench/eval_throughput.py", "bench/objectives_gpu.py",
            "bench/recipe_gpu.py"} <= scripts
    for path in scripts - {"bench/engines_gpu.py"}:
        assert (ROOT / path).is_file(), path


def test_gpu_sh_lever_variants_are_configs_vldft_accepts():
    """Every variant of gpu.sh's phase 3 (the levers) is an override list the shipped recipe
    loads with: a variant vldft refuses would spend a GPU window on a config error.
    (``train.liger=true`` is left out here: its package check depends on the machine.)"""
    import re

    from vldft.config import ConfigError, load_config

    text = (ROOT / "bench" / "gpu.sh").read_text()
    block = text[text.index("VARIANTS=("):]
    variants = re.findall(r'^\s+"([a-z0-9_]+):([^"]*)"$', block[:block.index(")")], re.M)
    assert len(variants) >= 8 and variants[0] == ("shipped", "")
    for name, sets in variants:
        overrides = [kv for kv in sets.split() if kv != "train.liger=true"]
        try:
            load_config(ROOT / "configs/qwen25vl_geo.yaml", overrides)
        except ConfigError as e:
            raise AssertionError(f"gpu.sh lever variant {name}: {e}") from None


def _window_levers(text: str) -> list[str]:
    import re

    return re.search(r'WINDOW_LEVERS:-([a-z0-9_ ]+)\}', text).group(1).split()


def test_gpu_sh_window_levers_are_variants():
    """PHASE=window's default levers are names of VARIANTS (an unknown name would be skipped
    on the GPU with 'no variant named ...', its device time lost), each one overrides the
    shipped recipe, and the window's order puts the correctness tests and the recipe first."""
    import re

    text = (ROOT / "bench" / "gpu.sh").read_text()
    block = text[text.index("VARIANTS=("):]
    names = re.findall(r'^\s+"([a-z0-9_]+):', block[:block.index("\n)")], re.M)
    levers = _window_levers(text)
    assert levers and set(levers) <= set(names) and "shipped" not in levers, (levers, names)
    window = text[text.index('if [ "$PHASE" = window ]'):]
    order = [window.index(s) for s in ("tests/test_gpu.py", "bench/recipe_gpu.py",
                                       "run_lever", "bench/trl_gpu.py")]
    assert order == sorted(order)


def test_gpu_sh_window_skips_what_the_budget_does_not_cover(tmp_path):
    """PHASE=window starts no step once its budget is spent: with WINDOW_BUDGET=0 every step
    says it was not run, nothing runs (no JSON), and the call still ends cleanly."""
    env = {**os.environ, "PHASE": "window", "DRY_RUN": "1", "WINDOW_BUDGET": "0",
           "OUT": str(tmp_path), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    log = (tmp_path / "gpu.log").read_text()
    text = (ROOT / "bench" / "gpu.sh").read_text()
    expected = ["window 1. tests/test_gpu.py not run", "window 2. recipe_gpu.py not run",
                *[f"window 3. levers: {n} not run" for n in _window_levers(text)],
                "window 4. trl_gpu.py not run"]
    for line in expected:
        assert line in log, (line, log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.log"]
