"""Two CPU processes (gloo, torchrun) where rank 0's micro-batch has a video and rank 1's is
text-only or image-only (and one where rank 0's holds an image and a video): DDP and FSDP2
(``fully_shard`` per decoder / vision block) both finish, and the reduced gradients equal one
process running both micro-batches. Guards the vision passes of ``ObjectiveModule``: a rank
without video runs the tower on a blank image BEFORE the language model (as a video rank does
inside the model's forward), as many times as the other ranks (``vision_passes``), so sharded
weights are gathered in the same order on every rank (``tests/video_dist_worker.py``)."""


import pytest
from conftest import torchrun_worker


def run_worker(families: list[str]) -> list[dict]:
    return torchrun_worker("video_dist_worker.py", *families)


def check(results: list[dict], families: list[str]) -> None:
    cases = [f"{e} {f} {c}" for e in ("ddp", "fsdp") for f in families
             for c in ("video+text", "video+image", "mixed+text")]
    assert [r["case"] for r in results] == cases
    for r in results:
        assert not r["missing"] and r["n_expected"] > 40, r
        assert r["worst_rel_grad_diff"] < 1e-5, r
        assert r["unreduced_rel_diff"] > 0.1, r  # one rank's share alone is far from it


def test_video_rank_and_text_or_image_rank_agree_under_ddp_and_fsdp2():
    families = ["qwen3_vl", "llava_onevision"]  # DeepStack mergers; a SigLIP tower + pooling
    check(run_worker(families), families)


@pytest.mark.slow
def test_every_other_video_family_under_ddp_and_fsdp2():
    families = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl_moe", "qwen3_5"]
    check(run_worker(families), families)
