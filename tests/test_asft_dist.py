"""ASFT with LoRA on two CPU processes (gloo, torchrun), rank 0 with images or a video and
rank 1 text-only: DDP and FSDP2 finish, and the reduced gradients equal one process running both
micro-batches. Guards the anchor pass of ``ObjectiveModule``: with LoRA the KL anchor is the
same (sharded) model with its adapters disabled, so a text-only rank must run the vision tower
on a blank image in that pass too, as an image rank does (``tests/asft_dist_worker.py``)."""

import pytest
from conftest import torchrun_worker


def run_cases(cases: list[str]) -> None:
    results = torchrun_worker("asft_dist_worker.py", *cases)
    assert [r["case"] for r in results] == [c.replace(":", " ") + "+text" for c in cases]
    for r in results:
        assert not r["missing"] and r["n_expected"] >= 8, r
        assert r["worst_rel_grad_diff"] < 1e-5, r
        assert r["kl_live"] > 0, r  # the anchor differs from the adapted model


def test_asft_lora_anchor_pass_under_fsdp2_matches_one_process():
    """Before the fix, fsdp:image failed with gloo's "collective mismatch" (the text-only rank
    gathered a language-model block while the image rank gathered a vision block)."""
    run_cases(["fsdp:image", "fsdp:video"])


@pytest.mark.slow
def test_asft_lora_anchor_pass_under_ddp_matches_one_process():
    """DDP never gathers weights in forward; the blank-image anchor pass of a text-only rank
    must still leave the gradients exact (the FSDP2 test above covers the same code path)."""
    run_cases(["ddp:image", "ddp:video"])
