"""Evaluation on many processes: ``torchrun --nproc_per_node 2 -m vldft.eval`` (CPU, gloo)
splits the documents between the ranks, gathers them on rank 0 and writes the same per-sample
outputs and scores as one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, demo_config, free_port

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")

from vldft.adapters import load_adapter  # noqa: E402
from vldft.eval.run import evaluate  # noqa: E402


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.mark.usefixtures("hf_offline", "one_thread")
def test_two_processes_write_the_same_results_as_one(tmp_path):
    # a tiny model with large random weights: its greedy answers differ from prompt to prompt
    cfg = demo_config()
    adapter = load_adapter(cfg.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapter.model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    ckpt = tmp_path / "ckpt"
    adapter.save(ckpt)
    args = ["--model", str(ckpt), "--tasks", "vldft_geo_heldout", "--limit", "11",
            "--batch-size", "1", "--max-new-tokens", "6"]
    # one process: what `python -m vldft.eval` runs, here in this process (one thread, as the
    # workers have), which saves a start-up of lmms-eval
    evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "one", limit=11, batch_size=1,
             max_new_tokens=6)
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), "-m", "vldft.eval", *args,
         "--out", str(tmp_path / "two")])

    def load(out: str) -> tuple[list[dict], dict]:
        rows = [json.loads(x) for x in (tmp_path / out / "samples_vldft_geo_heldout.jsonl")
                .read_text().splitlines()]
        return rows, json.loads((tmp_path / out / "results.json").read_text())

    (one, res1), (two, res2) = load("one"), load("two")
    assert [r["doc_id"] for r in one] == list(range(11))  # an odd count: uneven shards
    assert one == two
    assert len({r["response"] for r in one}) > 1  # the outputs tell documents apart
    assert res1["metrics"] == res2["metrics"]
    assert (res1["vldft"]["world_size"], res2["vldft"]["world_size"]) == (1, 2)
