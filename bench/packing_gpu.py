"""GPU: packed vs padded micro-batches on the Qwen2.5-VL-3B architecture (random weights, bf16):
tokens/s, useful (target) tokens/s, MFU, peak memory and CUDA kernels per step.

    bash bench/gpu.sh                                    # runs this among the GPU set
    python bench/packing_gpu.py [--pack-tokens 8192,16384,32768] [--padded-batch 4]
                                [--padded-attention sdpa,varlen] [--steps 3] [--warmup 1]
                                [--out DIR]
    python bench/packing_gpu.py --dry-run                # tiny model on the CPU (same code)

Samples (seeded, nothing downloaded): a Geometry3K-like length mix with random token ids:
prompt 30-200 tokens, answer 50-1,500 tokens (log-uniform), 80 % with one image of 224-672 px a
side (64-576 image tokens after the 2 x 2 merger), 20 % text-only. Targets: the answers.

Configurations, each timed on its own micro-batches of the same sample stream:
- ``packed_<N>``: ``vldft.packing`` rows of up to N tokens (first-fit-decreasing bins, per-sample
  mRoPE positions, no attention mask) with the attention vldft picks on CUDA
  (``vldft.attention``: flash-attn's varlen kernel if installed, else torch's ``varlen_attn``),
  for the language model and the vision tower alike;
  The bins are taken in a shuffled (training) order; ``--fullest-bins`` takes the fullest,
  as the 2026-11-30 runs did. Every timed micro-batch is run once untimed first (its shapes
  warmed up); ``--first-seen`` skips that, as those runs did;
- ``padded_b<B>``: B samples per micro-batch, right-padded (as vldft's collator pads), ``sdpa``;
  ``padded_b<B>_varlen``: the same batches with vldft's varlen function (each row's valid tokens
  from the 2-D mask; the vision tower one call per layer instead of window by window).
If a configuration runs out of memory, it is retried once with gradient checkpointing (the row
says so; recomputation is not counted in the model FLOPs).

One step = ``vldft.step.accumulate_gradients`` for one micro-batch (forward, chunked DFT,
backward), gradient clipping, fused AdamW. Model FLOPs per step, as bench/gpu_train.py counts
them but per sample: ``6 N_text n`` + ``6 layers n^2 d`` (attention within each sample) +
``6 N_vision patches`` + ``6 V H targets``, summed over the real (not padding) tokens. Kernels
per step: CUDA kernel events of one profiled step (torch.profiler).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    Stopwatch,
    fmt_mfu,
    gpu_out,
    kernels_per_call,
    markdown_table,
    mfu,
    oom_guard,
    peak_mem_gib,
    pick_device,
    qwen_flop_terms,
    reset_peak,
    run_header,
    save_result,
    to_device,
    write_json,
)
from gpu_train import build_model, train_step  # noqa: E402
from qwen import log_uniform, random_sample  # noqa: E402

from vldft.attention import kernel_name, use_varlen  # noqa: E402
from vldft.objectives import ObjectiveSpec  # noqa: E402
from vldft.packing import (  # noqa: E402  (torch-only modules: no other vldft dependency)
    IGNORE,
    choose_attention,
    first_fit_decreasing,
    mrope_positions,
    pack,
)

SPEC = ObjectiveSpec(name="dft", implementation="chunked")


class Sample(types.SimpleNamespace):
    """What vldft.collate.Encoded holds: input_ids [T], labels [T], extras (pixel_values,
    image_grid_thw, mm_token_type_ids [1, T])."""


def pad(samples: list, pad_id: int) -> dict:
    """Right-padded micro-batch with an attention mask (as vldft.collate.Collator pads)."""
    T, B = max(len(s.input_ids) for s in samples), len(samples)
    batch = {"input_ids": torch.full((B, T), pad_id), "labels": torch.full((B, T), IGNORE),
             "attention_mask": torch.zeros(B, T, dtype=torch.long),
             "mm_token_type_ids": torch.zeros(B, T, dtype=torch.long)}
    for b, s in enumerate(samples):
        n = len(s.input_ids)
        batch["input_ids"][b, :n], batch["labels"][b, :n] = s.input_ids, s.labels
        batch["attention_mask"][b, :n] = 1
        batch["mm_token_type_ids"][b, :n] = s.extras["mm_token_type_ids"][0]
    imgs = [s for s in samples if "pixel_values" in s.extras]
    if imgs:
        batch["pixel_values"] = torch.cat([s.extras["pixel_values"] for s in imgs])
        batch["image_grid_thw"] = torch.cat([s.extras["image_grid_thw"] for s in imgs])
    return batch

def make_samples(model, n: int, seed: int, sides: tuple[int, int], dry_run: bool
                 ) -> list[Sample]:
    """The length mix of the module docstring (shorter answers and smaller images for the dry
    run): random ids, the image block after 3 prompt tokens (``qwen.random_sample``)."""
    vc = model.config.vision_config
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    unit = vc.patch_size * vc.spatial_merge_size  # 28 px per image token side
    lo_ans, hi_ans = (10, 60) if dry_run else (50, 1500)
    out = []
    for i in range(n):
        prompt = rng.randint(5, 30) if dry_run else rng.randint(30, 200)
        answer = int(log_uniform(rng, lo_ans, hi_ans))
        grid = None
        if rng.random() >= 0.2:  # one image (80 %)
            grid = tuple(rng.randrange(sides[0], sides[1] + 1, unit) // unit
                         * vc.spatial_merge_size for _ in range(2))
            prompt += grid[0] * grid[1] // vc.spatial_merge_size**2 + 2
        s = random_sample(model.config, prompt, answer, grid, g, at=3,
                          id_hi=model.config.text_config.pad_token_id)
        out.append(Sample(sample_id=f"s{i}", input_ids=s.pop("input_ids"),
                          labels=s.pop("labels"), extras=s))
    return out


def flops(model, batch: dict, seq_lens: list[int]) -> float:
    """Model FLOPs of one micro-batch (``common.qwen_flop_terms``, attention per sample)."""
    patches = int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
    targets = int((batch["labels"][:, 1:] != IGNORE).sum())
    return qwen_flop_terms(model, seq_lens, patches, targets)["total"]


def step(model, optimizer, batch: dict) -> None:
    """vldft's step for one micro-batch (bench/gpu_train.py: ObjectiveModule.forward +
    accumulate_gradients without accelerate), fused AdamW."""
    train_step(model, optimizer, batch, SPEC)


def kernels_per_step(model, optimizer, batch, device: str) -> dict:
    return kernels_per_call(lambda: step(model, optimizer, batch), device)


def run_config(name: str, batches: list[dict], lens: list[list[int]], model, optimizer, args,
               device: str) -> dict:
    row: dict = {"config": name, "micro_batches": len(batches),
                 "attn_implementation": model.config._attn_implementation}
    for ckpt in (False, True):
        if ckpt:
            model.gradient_checkpointing_enable({"use_reentrant": False})

        def steps() -> list[tuple[float, int]]:
            times = []
            reset_peak(device)
            if not args.first_seen:  # warm-up: every timed micro-batch's shape once
                for batch in batches[args.warmup: args.warmup + args.steps]:
                    step(model, optimizer, batch)
            for k, batch in enumerate(batches[: args.warmup + args.steps]):
                with Stopwatch(device) as clock:
                    step(model, optimizer, batch)
                if k >= args.warmup:
                    times.append((clock.wall, k))
            return times

        times, oom = oom_guard(steps, limit=160)
        if oom is None:
            break
        optimizer.zero_grad(set_to_none=True)
        row["oom_without_checkpointing"] = oom
        if ckpt:
            row["error"] = "out of memory"
            model.gradient_checkpointing_disable()
            return row
        torch.cuda.empty_cache()
    timed = [k for _, k in times]
    secs = sum(t for t, _ in times)
    tokens = sum(sum(lens[k]) for k in timed)
    slots = sum(batches[k]["input_ids"].numel() for k in timed)
    targets = sum(int((batches[k]["labels"][:, 1:] != IGNORE).sum()) for k in timed)
    f = sum(flops(model, batches[k], lens[k]) for k in timed)
    row.update(gradient_checkpointing=ckpt, timed_steps=len(times),
               median_step_s=round(statistics.median(t for t, _ in times), 4),
               tokens_per_s=round(tokens / secs, 1), useful_tokens_per_s=round(targets / secs, 1),
               padding_fraction=round(1 - tokens / slots, 4),
               samples_per_step=round(sum(len(lens[k]) for k in timed) / len(timed), 2),
               tflops_per_s=round(f / secs / 1e12, 2), mfu=mfu(f, secs, args.peak_tflops))
    if device == "cuda":
        row["peak_mem_gib"] = peak_mem_gib(device)
    row.update(kernels_per_step(model, optimizer, batches[timed[0]], device))
    if ckpt:
        model.gradient_checkpointing_disable()
    return row


def _guarded(fn, name: str, *args) -> dict:
    """``fn(name, *args)``; any other failure than out-of-memory (a kernel that refuses a shape,
    say) is recorded in the row and the next configuration still runs."""
    try:
        return fn(name, *args)
    except Exception as e:  # noqa: BLE001 - reported in the results, not swallowed
        import traceback

        traceback.print_exc()
        return {"config": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--pack-tokens", default="8192,16384,32768")
    ap.add_argument("--padded-batch", default="4", help="samples per padded micro-batch(es)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--padded-attention", default="sdpa,varlen",
                    help="attention of the padded batches: sdpa (transformers' default, the "
                         "vision tower window by window) and / or varlen (vldft.attention)")
    ap.add_argument("--fullest-bins", action="store_true",
                    help="time the fullest packed bins (as the 2026-11-30 runs did) instead of "
                         "bins in a training order")
    ap.add_argument("--first-seen", action="store_true",
                    help="no warm-up pass over the timed micro-batches: each timed step may be "
                         "the first of its shape (as the 2026-11-30 runs did)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", default=gpu_out())
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    device, dtype, args.peak_tflops = pick_device(args.dry_run, args.peak_tflops)
    sides = (56, 112) if args.dry_run else (224, 672)
    if args.dry_run:
        args.pack_tokens, args.samples, args.steps, args.warmup = "512", 24, 1, 0
    model = build_model(args.dry_run, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5,
                                  **({"fused": True} if device == "cuda" else {}))
    enc = make_samples(model, args.samples, 0, sides, args.dry_run)
    image_token_id = model.config.image_token_id
    pad_id = model.config.text_config.pad_token_id

    def to_dev(b: dict) -> dict:
        return to_device(b, device, dtype)

    result = {**run_header("packing_gpu.py", argv, device), "args": vars(args),
              "dry_run": args.dry_run, "params": sum(p.numel() for p in model.parameters()),
              "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    need = args.warmup + args.steps
    attns = args.padded_attention.split(",")
    if set(attns) - {"sdpa", "varlen"}:
        ap.error(f"--padded-attention: sdpa and / or varlen, not {args.padded_attention}")
    for b, attn in [(int(x), a) for x in args.padded_batch.split(",") if x for a in attns]:
        model.config._attn_implementation = "sdpa"
        if attn == "varlen":  # the padded batch's 2-D mask gives each row's valid tokens
            use_varlen(model)
        order = list(range(len(enc)))
        random.Random(1).shuffle(order)
        groups = [order[k:k + b] for k in range(0, need * b, b)]
        batches = [to_dev(pad([enc[i] for i in g], pad_id)) for g in groups]
        lens = [[len(enc[i].input_ids) for i in g] for g in groups]
        name = f"padded_b{b}" + ("_varlen" if attn == "varlen" else "")
        row = _guarded(run_config, name, batches, lens, model, optimizer, args, device)
        result["rows"].append(row)
        print(f"[packing_gpu] {row}", flush=True)
        write_json(out / "packing_gpu.json", result)
        del batches
    for n in [int(x) for x in args.pack_tokens.split(",") if x]:
        model.config._attn_implementation = "sdpa"
        used = choose_attention(model, "sdpa")
        lengths = [len(e.input_ids) for e in enc]  # first-fit-decreasing, as vldft.loader's
        bins = first_fit_decreasing(list(range(len(enc))), lengths, n)  # sampler per window
        if args.fullest_bins:  # the 2026-11-30 runs: the fullest bins (74 % targets)
            bins = sorted(bins, key=lambda b: -sum(lengths[i] for i in b))
        else:  # in a training order (vldft.loader.PackingSampler shuffles its bins)
            random.Random(2).shuffle(bins)
        bins = bins[:need]
        positions = lambda e: mrope_positions(model, e, image_token_id)  # noqa: E731
        batches = [to_dev(pack([enc[i] for i in g], positions)) for g in bins]
        lens = [[len(enc[i].input_ids) for i in g] for g in bins]
        row = _guarded(run_config, f"packed_{n}", batches, lens, model, optimizer, args, device)
        row.update(attention=used, varlen_kernel=kernel_name(device, dtype))
        result["rows"].append(row)
        print(f"[packing_gpu] {row}", flush=True)
        write_json(out / "packing_gpu.json", result)
        del batches
    model.config._attn_implementation = "sdpa"
    save_result(out / "packing_gpu.json", result, t0)
    print(markdown_table(
        ["config", "ckpt", "step (ms)", "tokens/s", "useful tokens/s", "padding", "MFU",
         "peak GiB", "CUDA kernels / step"], result["rows"],
        lambda r: [r["config"], r["error"]] if "error" in r else [
            r["config"], str(r["gradient_checkpointing"]), f"{r['median_step_s'] * 1e3:.0f}",
            f"{r['tokens_per_s']:.0f}", f"{r['useful_tokens_per_s']:.0f}",
            f"{r['padding_fraction']:.0%}", fmt_mfu(r), str(r.get("peak_mem_gib", "-")),
            str(r["cuda_kernels"])]))
    return result


if __name__ == "__main__":
    main()
