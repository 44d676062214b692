"""Crash safety end to end, in real subprocesses: SIGTERM, then SIGKILL after a checkpoint, then
resume reaches bitwise the weights of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, ROOT, TINY_CONFIG
from safetensors.torch import load_file

STEPS, SAVE_EVERY = 30, 5


def overrides(out: Path, *extra: str) -> list[str]:
    # 24 samples / micro-batch 4 = 6 batches per epoch: 30 steps cross 4 epoch boundaries;
    # the SFT -> DFT switch at step 10 and dropout-free tiny model; held-out scoring off
    return ["data.train_files=[]", f"data.sources=[{{path: {DEMO_DATA}, max_samples: 24}}]",
            "data.heldout_file=null", f"train.max_steps={STEPS}", "loss.sft_warmup_steps=10",
            "train.micro_batch_size=4", "train.log_every=5", "train.eval_max_samples=0",
            f"train.save_every={SAVE_EVERY}", "train.keep_checkpoints=2",
            f"train.output_dir={out}", *extra]


def launch(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "vldft.train", str(TINY_CONFIG),
                             *overrides(out, *extra)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.time()
    while not path.is_dir():
        if proc.poll() is not None:
            pytest.fail(f"run ended before {path} appeared:\n{proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final/model.safetensors")


def losses(run: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 10
    for name in wa:  # bitwise: same data order, RNG, optimizer and scheduler state
        assert torch.equal(wa[name], wb[name]), name
    assert losses(a) == losses(b)
    assert len(losses(a)) == STEPS // 5


def test_sigterm_then_sigkill_then_resume_is_bitwise_identical(tmp_path):
    """One interrupted run, resumed twice: SIGTERM after the first checkpoint saves a checkpoint
    and exits cleanly (code 0); the resumed run is killed with SIGKILL after a later checkpoint
    and leaves a half-written save behind; the second resume skips that save and ends with
    bitwise the weights and losses of an uninterrupted run."""
    out = tmp_path / "run"
    proc = launch(out)
    wait_for(out / "checkpoint-5", proc)
    proc.send_signal(signal.SIGTERM)
    log = finish(proc)  # exit code 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and summary["steps"] < STEPS, log[-2000:]
    stopped_at = Path(summary["checkpoint"])
    assert stopped_at.name == f"checkpoint-{summary['steps']}"
    assert (stopped_at / "trainer_state.json").is_file() and not (out / "final").exists()

    later = (summary["steps"] // SAVE_EVERY + 1) * SAVE_EVERY  # the resumed run's first save
    assert later < STEPS, "the SIGTERM came too late to test a SIGKILL after it"
    proc = launch(out)
    wait_for(out / f"checkpoint-{later}", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the kill came too late to test anything"
    (out / "checkpoint-99.tmp").mkdir()  # a half-written save, as a crash mid-save leaves
    log = finish(launch(out))  # train.resume defaults to auto
    assert "ignoring the half-written checkpoint" in log
    assert "resuming from" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith(("checkpoint-10", "checkpoint-15",
                                             "checkpoint-20", "checkpoint-25"))
    finish(launch(tmp_path / "full"))
    assert_same_run(tmp_path / "full", out)
    kept = sorted(p.name for p in out.glob("checkpoint-*") if not p.name.endswith(".tmp"))
    assert kept == ["checkpoint-20", "checkpoint-25"]  # keep_checkpoints=2
