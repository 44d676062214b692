"""FSDP2 on the CPU (torch's fully_shard over gloo): vldft's chunked objective gives the same
loss and gradients when the output layer is sharded across 2 ranks as unsharded on one.
(accelerate only builds FSDP on GPUs; this checks the objective under torch's own FSDP2.)"""


import pytest
from conftest import torchrun_worker

OBJECTIVES = ["dft", "sft"]


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    """One torchrun launch checks every objective (its start-up is most of the cost)."""
    lines = torchrun_worker("fsdp_worker.py", *OBJECTIVES, timeout=600)
    found = {res["objective"]: res for res in lines}
    assert sorted(found) == sorted(OBJECTIVES), lines
    return found


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_chunked_objective_under_fsdp2_sharding_matches_unsharded(results, objective):
    res = results[objective]
    assert res["head_is_dtensor"] and res["sharded_params"] > 40
    assert res["loss_sharded"] == pytest.approx(res["loss_whole"], rel=1e-6)
    assert res["worst_rel_grad_diff"] < 1e-5
