"""Worker for test_asft_dist.py (run under torchrun, 2 CPU processes, gloo): ASFT with LoRA,
whose KL anchor is a second, gradient-free forward of the SAME model with its adapters disabled.
Rank 0's micro-batch has images (or a video), rank 1's is text-only. Under FSDP2 (``fully_shard``
over every decoder / vision block and the root) the anchor pass gathers sharded blocks too, so
the text-only rank must make the same vision passes in it as the image rank. Two
optimizer-free steps of ``accumulate_gradients``; the reduced gradients are compared with one
process running both micro-batches. Collectives time out after 60 s, so a mismatch fails
instead of hanging. Prints one JSON line per case from rank 0."""

import datetime
import json
import sys

import torch
import torch.distributed as dist
from video_dist_worker import VIDEO, engine_gradients, samples, targets, tensors

from vldft.adapters import load_adapter
from vldft.adapters.lora import apply_lora
from vldft.collate import Collator
from vldft.config import LoraSettings, ModelConfig
from vldft.step import ObjectiveModule


def run(engine: str, first: str, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(tiny=True))
    adapter.freeze(["vision"])  # the shipped recipes' freeze; LoRA on the language model
    apply_lora(adapter, LoraSettings(r=4, alpha=8, dropout=0.0, parts=["language"]), ["vision"])
    adapter.freeze_unused()
    for name, p in adapter.model.named_parameters():  # B != 0: the anchor differs from the
        if "lora_B" in name:                         # adapted model, so the KL term is live
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    coll = Collator(adapter, 1024, video=VIDEO)
    micro = [tensors(coll([coll.encode(s) for s in samples(kind, 3)]))
             for kind in (first, "text")]
    n_global = sum(targets(b) for b in micro)

    expected: dict[str, torch.Tensor] = {}  # one process, both micro-batches, before sharding
    unsharded = ObjectiveModule(adapter)
    for b in micro:
        loss, _, _ = unsharded(dict(b), "asft")
        (loss / n_global).backward()
    for name, p in unsharded.named_parameters():
        if p.grad is not None:
            expected[name] = p.grad.clone()
            p.grad = None

    worst, missing, totals = engine_gradients(engine, adapter, micro[rank], "asft", expected,
                                              n_global)
    return {"case": f"{engine} {first}+text", "worst_rel_grad_diff": worst,
            "missing": missing[:5], "n_expected": len(expected),
            "kl_live": float(totals.get("kl_sum", 0.0))}


def main(cases: list[str]) -> None:
    """``cases``: ENGINE:KIND, e.g. fsdp:image (rank 0's micro-batch kind; rank 1's is text)."""
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    for case in cases:
        engine, first = case.split(":")
        res = run(engine, first, rank, world)
        if rank == 0:
            print(json.dumps(res), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
