"""Worker for test_fsdp.py (run under torchrun, 2 CPU processes, gloo): FSDP2 ``fully_shard``
over each decoder and vision block and the ObjectiveModule root, then compare the gradients
of vldft's chunked objective on each rank's half of a batch with those of an unsharded copy
on the whole batch, for each objective named on the command line (one launch for all: torchrun's
start-up is most of the cost). Prints one JSON line per objective from rank 0."""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from vldft.adapters import load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig
from vldft.data import load_jsonl
from vldft.step import ObjectiveModule

ROOT = Path(__file__).resolve().parents[1]


def check(objective: str) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # a fresh model per objective: fully_shard changes it in place
    adapter = load_adapter(ModelConfig(tiny=True, min_pixels=12544, max_pixels=12544))
    coll = Collator(adapter, 512)
    samples = load_jsonl(ROOT / "data/geo_demo/train.jsonl")[:4]
    whole = coll([coll.encode(s) for s in samples])
    half = coll([coll.encode(s) for s in samples[rank * 2:(rank + 1) * 2]])

    reference = copy.deepcopy(ObjectiveModule(adapter))  # unsharded, whole batch
    loss, _, _ = reference(dict(whole), objective)
    loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters()}

    module = ObjectiveModule(adapter)
    for block in [*adapter.model.model.language_model.layers, *adapter.model.model.visual.blocks]:
        fully_shard(block)
    fully_shard(module)
    loss_half, _, _ = module(dict(half), objective)
    loss_half.backward()
    total = loss_half.detach().clone()
    dist.all_reduce(total)
    worst, sharded = 0.0, 0
    for name, p in module.named_parameters():
        sharded += type(p).__name__ == "DTensor"
        got = p.grad.full_tensor() * world  # FSDP averages gradients over ranks
        ref = expected[name]
        worst = max(worst, float((got - ref).abs().max() / (ref.abs().max() + 1e-12)))
    if rank == 0:
        print(json.dumps({"objective": objective,
                          "loss_sharded": float(total), "loss_whole": float(loss),
                          "worst_rel_grad_diff": worst, "sharded_params": sharded,
                          "head_is_dtensor": type(adapter.output_layer().weight).__name__
                          == "DTensor"}), flush=True)


def main(objectives: list[str]) -> None:
    dist.init_process_group("gloo")
    for objective in objectives:
        check(objective)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
