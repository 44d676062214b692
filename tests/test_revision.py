"""``model.revision``: a hub id loads the branch, tag or commit asked for, and a run says which
commit it trained. The hub here is a real Hugging Face cache laid out on disk (two commits of
a tiny model, ``main`` and the tag ``v1`` naming different ones) read offline, in a fresh
process so that the cache location takes effect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_CONFIG, write_tiny_data

REPO = "vldft-test/tiny-qwen25vl"
MAIN, V1 = "a" * 40, "b" * 40  # the commits refs/main and refs/v1 name


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """An HF_HUB_CACHE holding REPO at two commits whose processors differ (max_pixels)."""
    from vldft.adapters import build_tiny

    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{REPO.replace('/', '--')}"
    for commit, pixels in ((MAIN, 12544), (V1, 25088)):
        model, processor = build_tiny("qwen2_5_vl", 3136, pixels)
        model.save_pretrained(repo / "snapshots" / commit)
        processor.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v1").write_text(V1)
    return cache


def offline(hub: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


LOAD = """
import json
from vldft.adapters import model_commit, load_adapter
from vldft.config import ModelConfig
out = {{}}
for rev in (None, "v1", "{v1}"):
    cfg = ModelConfig(name_or_path="{repo}", revision=rev)
    a = load_adapter(cfg)
    out[str(rev)] = [a.processor.image_processor.size["longest_edge"], model_commit(cfg)]
print(json.dumps(out))
"""


def test_a_hub_id_loads_the_revision_asked_for_and_names_its_commit(hub):
    proc = offline(hub, LOAD.format(repo=REPO, v1=V1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"None": [12544, MAIN], "v1": [25088, V1], V1: [25088, V1]}


def test_a_run_logs_and_records_the_commit_it_trained(hub, tmp_path):
    data = write_tiny_data(tmp_path / "train.jsonl", 8)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vldft.train", str(TINY_CONFIG), "model.tiny=false",
           f"model.name_or_path={REPO}", "model.revision=v1", f"data.train_files=[{data}]",
           "data.heldout_file=null", f"train.output_dir={out}", "train.micro_batch_size=4",
           "train.grad_accum=1", "train.save_every=1", "loss.sft_warmup_steps=0",
           "train.max_steps=2"]
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"({REPO} at commit {V1[:12]})" in proc.stdout + proc.stderr
    assert json.loads((out / "summary.json").read_text())["model_commit"] == V1
    # resumed where the hub cache's v1 now names another commit: said, and the summary names
    # the commit this process loaded
    (hub / f"models--{REPO.replace('/', '--')}" / "refs" / "v1").write_text(MAIN)
    again = tmp_path / "again"
    proc = subprocess.run([*cmd, f"train.output_dir={again}", f"train.resume={out}/checkpoint-1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "resuming from" in said, said[-2000:]
    assert f"now loads hub commit {MAIN[:12]}, the checkpoint's run loaded {V1[:12]}" in said
    assert json.loads((again / "summary.json").read_text())["model_commit"] == MAIN


def test_a_revision_for_a_local_folder_or_an_unknown_one_is_refused(hub, tmp_path):
    from vldft.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.revision: 'v1' applies to a hub id"):
        load_config(TINY_CONFIG, ["model.tiny=false", f"model.name_or_path={tmp_path}",
                                  "model.revision=v1"])
    proc = offline(hub, LOAD.replace('(None, "v1", "{v1}")', '("v2",)').format(repo=REPO))
    assert proc.returncode != 0
    assert f"model.name_or_path: cannot load {REPO} at revision 'v2'" in proc.stderr
