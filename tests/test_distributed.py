"""Two-process DDP on the CPU (gloo, launched with torchrun) equals one process with the same
global batch: the loss trajectory and the final weights agree to 1e-5 relative, including
steps where one rank's micro-batch is text-only and the other's has images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, ROOT, TINY_CONFIG, assert_same_weights, free_port

from vldft.adapters import load_adapter
from vldft.config import load_config
from vldft.data.mix import LengthGroupedSampler, build_training_set
from vldft.train import main

STEPS = 8


def text_only_file(tmp_path: Path) -> Path:
    rows = []
    for line in DEMO_DATA.read_text().splitlines()[100:108]:
        row = json.loads(line)
        row["messages"][0]["content"] = [p for p in row["messages"][0]["content"]
                                         if p["type"] == "text"]
        row["images"], row["id"] = [], row["id"] + "-text"
        rows.append(json.dumps(row))
    path = tmp_path / "text.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def overrides(tmp_path: Path, out: str, grad_accum: int) -> list[str]:
    return ["data.train_files=[]",
            f"data.sources=[{{path: {DEMO_DATA}, max_samples: 8, name: img}}, "
            f"{{path: {text_only_file(tmp_path)}, name: txt}}]",
            "data.group_by_length=true", "data.heldout_file=null", f"train.max_steps={STEPS}",
            "loss.name=dft", "loss.sft_warmup_steps=4", "train.micro_batch_size=2",
            f"train.grad_accum={grad_accum}", "train.log_every=1", "train.eval_max_samples=0",
            "train.mixed_precision=no", f"train.output_dir={tmp_path / out}"]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.usefixtures("one_thread")
def test_two_rank_ddp_equals_one_rank_with_the_same_global_batch(tmp_path):
    cfg_path = str(TINY_CONFIG)
    # the sampler's order decides which micro-batches share a step: check that some step
    # pairs a text-only micro-batch with an image one across the two ranks
    cfg = load_config(cfg_path, overrides(tmp_path, "probe", 2))
    data = build_training_set(cfg, load_adapter(cfg.model))
    sampler = LengthGroupedSampler(data.lengths, [bool(s.images) for s in data.samples], 2, 0)
    mixed = 0
    for epoch in range(2):
        sampler.set_position(epoch)
        b = sampler.batches()
        mixed += sum(bool(data.samples[b[k][0]].images) != bool(data.samples[b[k + 1][0]].images)
                     for k in range(0, len(b) - 1, 2))
    assert mixed >= 1

    # one process: what `python -m vldft.train` runs, here in this process (one thread, as the
    # torchrun workers have), which saves a start-up of torch and transformers
    main(load_config(cfg_path, overrides(tmp_path, "one", 2)))
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), "-m", "vldft.train", cfg_path,
         *overrides(tmp_path, "two", 1)])

    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert a["target_tokens"] == b["target_tokens"]
        for key in ("loss", "ce", "mean_p"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    assert_same_weights(tmp_path / "one/final", tmp_path / "two/final")
    # and training moved the weights well beyond that tolerance
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    init = load_adapter(cfg.model).model.state_dict()
    final = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "one/final").state_dict()
    moved = [n for n in init if not torch.allclose(final[n], init[n], atol=1e-4)]
    assert len(moved) > 10
