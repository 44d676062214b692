"""FSDP2 on the CPU (torch's fully_shard over gloo): vldft's chunked objective gives the same
loss and gradients when the output layer is sharded across 2 ranks as unsharded on one.
(accelerate only builds FSDP on GPUs; this checks the objective under torch's own FSDP2.)"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port

OBJECTIVES = ["dft", "sft"]


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    """One torchrun launch checks every objective (its start-up is most of the cost)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), str(ROOT / "tests/fsdp_worker.py"), *OBJECTIVES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    found = {res["objective"]: res for res in lines}
    assert sorted(found) == sorted(OBJECTIVES), proc.stdout[-4000:]
    return found


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_chunked_objective_under_fsdp2_sharding_matches_unsharded(results, objective):
    res = results[objective]
    assert res["head_is_dtensor"] and res["sharded_params"] > 40
    assert res["loss_sharded"] == pytest.approx(res["loss_whole"], rel=1e-6)
    assert res["worst_rel_grad_diff"] < 1e-5
