"""Worker for test_video_dist.py (run under torchrun, 2 CPU processes, gloo): rank 0's
micro-batch has a video (or an image and a video), rank 1's is text-only or image-only. For each
engine (DDP, then FSDP2 ``fully_shard`` over every decoder / vision block and the root) and each
family given, two optimizer-free steps of vldft's ``accumulate_gradients`` (global
normalisation, vision passes), and the gradients after the engine's reduction are compared with
one process that runs both micro-batches (sum of losses / global count).
Collectives time out after 120 s, so a rank that skips the vision tower fails instead of
hanging. Prints one JSON line per (engine, family, rank-1 kind) from rank 0."""

import contextlib
import copy
import datetime
import json
import random
import sys

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from PIL import Image, ImageDraw
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from vldft.adapters import load_adapter
from vldft.collate import IGNORE, Collator
from vldft.config import ModelConfig, VideoSettings
from vldft.data import Sample
from vldft.data.video import Video
from vldft.step import ObjectiveModule, accumulate_gradients

VIDEO = VideoSettings(fps=2.0, max_frames=4, min_frames=2, min_pixels=28 * 28,
                      max_pixels=64 * 64)
BLOCKS = ("DecoderLayer", "VisionBlock", "EncoderLayer")  # what FSDP2 shards one by one


def frame(x: int) -> Image.Image:
    im = Image.new("RGB", (64, 64))
    ImageDraw.Draw(im).rectangle([x, 20, x + 14, 40], fill="white")
    return im


def turn(role: str, parts: list) -> dict:
    return {"role": role, "content": parts}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def samples(kind: str, k: int) -> list[Sample]:
    """Two samples of one kind: video, image or text (mixed: an image one and a video one)."""
    if kind == "mixed":
        return samples("image", k)[:1] + samples("video", k)[1:]
    rng = random.Random(k)
    out = []
    for i in range(2):
        if kind == "video":
            v = Video(frames=[frame(4 + 10 * f + rng.randint(0, 3)) for f in range(4)])
            out.append(Sample(f"v{i}", [turn("user", [{"type": "video"}, text("Which way?")]),
                                        turn("assistant", [text("Right." * (i + 1))])],
                              videos=[v]))
        elif kind == "image":
            out.append(Sample(f"i{i}", [turn("user", [{"type": "image"}, text("Shape?")]),
                                        turn("assistant", [text("A square" + "!" * i)])],
                              [frame(20 + rng.randint(0, 8))]))
        else:
            out.append(Sample(f"t{i}", [turn("user", [text(f"What is {i} + 1?")]),
                                        turn("assistant", [text(str(i + 1))])]))
    return out


class Ranks:
    """What ``accumulate_gradients`` asks of accelerate's ``Accelerator``, over the
    torch.distributed group (DDP and FSDP2 are set up by hand here; accelerate builds FSDP on
    GPUs only)."""

    device = torch.device("cpu")

    def __init__(self, world: int, kind: DistributedType) -> None:
        self.num_processes, self.distributed_type = world, kind

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        assert reduction == "sum"
        dist.all_reduce(tensor)
        return tensor

    def no_sync(self, module):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def tensors(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def targets(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def engine_gradients(engine: str, adapter, micro_batch: dict, objective: str,
                     expected: dict[str, torch.Tensor], n_global: int) -> tuple[float, list, dict]:
    """Wrap a fresh ObjectiveModule over ``adapter`` in DDP or FSDP2 (``fully_shard`` per block
    and the root), run two optimizer-free steps of ``accumulate_gradients`` on this rank's
    ``micro_batch`` (a second step: DDP reports parameters the first one left unreduced), and
    compare the reduced gradients with ``expected`` (one process, every micro-batch). Returns
    the worst relative difference, the parameters missing a gradient, the last step's totals."""
    module = ObjectiveModule(adapter)
    if engine == "ddp":
        wrapped = DistributedDataParallel(module)
    else:
        for m in list(adapter.model.modules()):
            if type(m).__name__.endswith(BLOCKS):
                fully_shard(m)
        wrapped = fully_shard(module)
    world = dist.get_world_size()
    ranks = Ranks(world, DistributedType.MULTI_CPU if engine == "ddp" else DistributedType.FSDP)
    worst, missing = 0.0, []
    for _ in range(2):
        module.zero_grad(set_to_none=True)
        totals = accumulate_gradients(wrapped, [micro_batch], objective, ranks)
        assert totals["n_tokens"] == n_global
        for name, p in module.named_parameters():
            ref = expected.get(name)
            if p.grad is None:
                if ref is not None:
                    missing.append(name)
                continue
            got = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            ref = torch.zeros_like(got) if ref is None else ref
            worst = max(worst, float((got - ref).abs().max() / (ref.abs().max() + 1e-6)))
    return worst, missing, totals


def run(engine: str, family: str, first: str, other: str, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(family=family, tiny=True))
    adapter.freeze_unused()  # as training does (LLaVA-OneVision: SigLIP's head is never used)
    coll = Collator(adapter, 1024, video=VIDEO)
    micro = [tensors(coll([coll.encode(s) for s in samples(kind, 7)]))
             for kind in (first, other)]
    assert "pixel_values_videos" in micro[0] and "pixel_values_videos" not in micro[1]
    n_global = sum(targets(b) for b in micro)

    reference = copy.deepcopy(ObjectiveModule(adapter))  # one process, both micro-batches
    shares = []
    for b in micro:
        reference.zero_grad(set_to_none=True)
        loss, _, _ = reference(dict(b), "dft")
        (loss / n_global).backward()
        shares.append({n: p.grad.clone() for n, p in reference.named_parameters()
                       if p.grad is not None})
    expected = {n: sum(s[n] for s in shares if n in s) for n in set(shares[0]) | set(shares[1])}
    # this rank's share alone, scaled as the ranks scale it: far from the reduced result
    unreduced = max(float((shares[rank][n] * world - expected[n]).abs().max()
                          / (expected[n].abs().max() + 1e-6)) for n in shares[rank])

    worst, missing, _ = engine_gradients(engine, adapter, micro[rank], "dft", expected, n_global)
    return {"case": f"{engine} {family} {first}+{other}", "worst_rel_grad_diff": worst,
            "missing": missing[:5], "n_expected": len(expected), "unreduced_rel_diff": unreduced}


CASES = (("video", "text"), ("video", "image"), ("mixed", "text"))  # rank 0's, rank 1's


def main(families: list[str]) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    for engine in ("ddp", "fsdp"):
        for family in families:
            for first, other in CASES:
                res = run(engine, family, first, other, rank, world)
                if rank == 0:
                    print(json.dumps(res), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
