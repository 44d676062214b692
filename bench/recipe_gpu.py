"""The shipped recipe's training step, measured as the recipe runs it: a shipped config's model /
precision / freeze / checkpointing / packing / accumulation on the Qwen2.5-VL-3B architecture
(random weights), side by side with the bf16 set-up the earlier GPU figures used.

    bash bench/gpu.sh                                          # runs this in the GPU set
    python bench/recipe_gpu.py [--config configs/qwen25vl_geo.yaml] [--set KEY=VALUE ...]
                               [--setups recipe,recipe_padded,bf16_bench] [--steps 3]
                               [--rounds 2] [--lengths FILE] [--out DIR]
    python bench/recipe_gpu.py --tiny --steps 1 --rounds 1    # tiny model on the CPU (CI)

The config is read with ``vldft.config.load_config`` (its ``include`` and validation), then each
set-up applies its overrides (``--set`` adds more to all, e.g. a new ``train.*`` switch):

- ``recipe``: the config as shipped. For configs/qwen25vl_geo.yaml: fp32 master weights with
  bf16 autocast (``train.mixed_precision: auto``), ``model.freeze: [vision]``, gradient
  checkpointing, packed rows of 8,192 tokens, ``train.grad_accum: 2``.
- ``recipe_padded``: + ``data.packing=false``: the SAME samples per optimizer step as
  ``recipe``, in right-padded micro-batches of ``train.micro_batch_size`` (random order, as the
  default loader), accumulating over as many micro-batches as they make: same samples, same
  tokens per optimizer step, the model's own attention (``sdpa``).
- ``bf16_bench``: + ``model.dtype=bfloat16 model.freeze=[] model.gradient_checkpointing=false
  train.grad_accum=1 train.mixed_precision=no``: the set-up of the earlier H200 figures
  (bench/RESULTS.md: pure bf16 weights, gradients and AdamW states, the vision tower trained, no
  checkpointing, an optimizer step every micro-batch) on the same packed micro-batches.

A step is vldft's own code (bench/vldft_step.py): ``load_adapter`` (``--tiny``; else the 3B
architecture built from a config in the config's ``model.dtype``, wrapped in vldft's Qwen2.5-VL
adapter), ``prepare_model`` (freeze, unused-parameter freeze, checkpointing), ``build_optimizer``
(per-part groups, fused AdamW per ``train.optimizer_impl``), ``ObjectiveModule`` +
``accumulate_gradients`` (global token normalisation, the objective of ``loss``), gradient clipping
at ``train.max_grad_norm``, ``optimizer.step()``, ``zero_grad``. Packed rows come from
``vldft.loader.PackingSampler``'s bins in the order training takes them (not the fullest ones),
with the attention ``choose_attention`` picks; micro-batches are made by the collate function
``vldft.loader.build_loader`` would use (``PackCollator`` / the padding ``Collator``, with the
precomputed attention segments where the config uses them). Nothing else of the real loop runs: the
loader's workers (batches are made before timing), the lr schedule (one scalar per step), logging.
bf16 autocast is applied to the module's forward as accelerate's ``mixed_precision="bf16"`` does
(one process cannot hold two accelerate precisions).

Lengths: bench/recipe_lengths.py (modelled from the config's ``data.sources``, NOT
measured; ``--lengths FILE`` for measured ones).

Order: every set-up first runs each of its optimizer steps once (warm-up covering every micro-
batch shape), then ``--rounds`` rounds time each set-up's ``--steps`` optimizer steps,
interleaved (A B C, then C B A, ...). On CUDA the set-ups that do not share a model are parked on
the CPU (weights and optimizer state) while another runs, so one GPU holds one of them at a
time; moving is not timed. Reported per set-up: tokens/s, useful (target) tokens/s, MFU (model
FLOPs: ``common.qwen_flop_terms`` with ``vldft_step.flop_factors``: frozen vision forward only,
the merger after it 4x, a frozen or LoRA language model 4x; recomputation not counted), peak
memory over the timed steps, CUDA kernels per optimizer step (one profiled step), padding.
Out of memory is reported in the set-up's row; the others still run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    Stopwatch,
    fmt_mfu,
    free,
    gpu_out,
    kernels_per_call,
    markdown_table,
    mfu,
    oom_guard,
    peak_mem_gib,
    pick_device,
    reset_peak,
    run_header,
    save_result,
)
from recipe_lengths import encode, load_specs, sample_length  # noqa: E402
from vldft_step import (  # noqa: E402
    build_setup,
    collate_fn,
    config_step,
    micro_stats,
    move_setup,
    set_attention,
)

DEFAULT_CONFIG = "configs/qwen25vl_geo.yaml"
SETUPS = {
    "recipe": [],
    "recipe_padded": ["data.packing=false"],
    "bf16_bench": ["model.dtype=bfloat16", "model.freeze=[]",
                   "model.gradient_checkpointing=false", "train.grad_accum=1",
                   "train.mixed_precision=no"],
}
# the evaluation during a run does not touch the training step; off, so that the config loads
# where lmms-eval is not installed (the GPU machine)
ALWAYS = ["train.eval_tasks=[]", "train.eval_every=0"]


# ----------------------------------------------------------------------------- set-ups
def plan_steps(cfg, collate, step_bins: list[list[list[int]]], sample, seed: int) -> list:
    """A set-up's optimizer steps, each a list of (micro-batch, sample lengths): the packed rows
    of ``step_bins`` (``train.grad_accum`` rows a step: bf16_bench steps every row), or, without
    packing, the same samples in padded micro-batches in random order."""
    steps = []
    for k, group in enumerate(step_bins):
        if not cfg.data.packing:
            idx = [i for b in group for i in b]
            random.Random(seed + k).shuffle(idx)
            mb = cfg.train.micro_batch_size
            steps.append([(collate([sample(i) for i in idx[j:j + mb]]),
                           [len(sample(i).input_ids) for i in idx[j:j + mb]])
                          for j in range(0, len(idx), mb)])
        else:
            rows = [(collate([sample(i) for i in b]), [len(sample(i).input_ids) for i in b])
                    for b in group]
            ga = cfg.train.grad_accum
            steps += [rows[j:j + ga] for j in range(0, len(rows), ga)]
    return steps


def summary_row(n: str, setup: dict, run: dict, stats: list[list[dict]], peak, device) -> dict:
    """A set-up's result row: its settings, and the rates of one pass over its steps (the mean
    of the timed passes)."""
    row: dict = {"setup": n, **{k: setup[k] for k in (
        "model_dtype", "mixed_precision", "freeze", "gradient_checkpointing", "packing",
        "optimizer_steps", "micro_batches_per_optimizer_step")}}
    if "error" in run:
        return {**row, "error": run["error"]}
    micro = [m for st in stats for m in st]
    secs = sum(run["seconds"]) / len(run["seconds"])  # one pass over the steps
    tokens, targets = sum(m["tokens"] for m in micro), sum(m["targets"] for m in micro)
    flops = sum(m["flops"] for m in micro)
    row.update(
        timed_passes=len(run["seconds"]), pass_s=run["seconds"],
        median_optimizer_step_s=round(statistics.median(run["step_s"]), 4),
        tokens_per_optimizer_step=round(tokens / len(stats), 1),
        targets_per_optimizer_step=round(targets / len(stats), 1),
        padding_fraction=round(1 - tokens / sum(m["slots"] for m in micro), 4),
        tokens_per_s=round(tokens / secs, 1), useful_tokens_per_s=round(targets / secs, 1),
        tflops_per_s=round(flops / secs / 1e12, 3), mfu=mfu(flops, secs, peak),
        losses=run["losses"][:4])
    if device == "cuda":
        row["peak_mem_gib"] = round(run["peak"], 2)
    return row


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["set-up", "precision", "freeze", "ckpt", "micro-batches / step", "tokens / step",
         "padding", "tokens/s", "useful tokens/s", "MFU", "peak GiB", "kernels / step"], rows,
        lambda r: [r["setup"], r["error"]] if "error" in r else [
            r["setup"], f"{r['model_dtype']} / {r['mixed_precision']}",
            ",".join(r["freeze"]) or "-", r["gradient_checkpointing"],
            f"{r['micro_batches_per_optimizer_step']:g}", f"{r['tokens_per_optimizer_step']:.0f}",
            f"{r['padding_fraction']:.0%}", f"{r['tokens_per_s']:.0f}",
            f"{r['useful_tokens_per_s']:.0f}", fmt_mfu(r), r.get("peak_mem_gib", "-"),
            r.get("cuda_kernels", "-")])


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="a shipped config (YAML)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every set-up (repeatable)")
    ap.add_argument("--setups", default=",".join(SETUPS), help="of: " + ",".join(SETUPS))
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps of the recipe")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    ap.add_argument("--samples", type=int, default=512, help="samples drawn (one packing window)")
    ap.add_argument("--lengths", default=None, help="JSON of measured sample lengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-kernels", action="store_true", help="skip the profiled step")
    ap.add_argument("--peak-tflops", type=float, default=None, help="default: from the device")
    ap.add_argument("--scale", type=int, default=0,
                    help="divide token counts, image sides, data.pack_tokens and data.max_length "
                         "by this (default 1; 8 with --tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="the config's tiny model (model.tiny=true) on the CPU: a dry run")
    ap.add_argument("--arch", choices=("3b", "small"), default="3b",
                    help="without --tiny: Qwen2.5-VL-3B's architecture, or a 2 x 64 one (tests)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (with --arch small)")
    ap.add_argument("--out", default=gpu_out(),
                    help="directory for recipe_gpu.json (default: $OUT, else runs/bench/gpu/)")
    args = ap.parse_args(argv)
    names = [s for s in args.setups.split(",") if s]
    if set(names) - set(SETUPS) or "recipe" not in names:
        ap.error(f"--setups: 'recipe' and any of {','.join(SETUPS)}")
    return args, names


def main(argv=None) -> dict:
    args, names = parse_args(argv)
    from accelerate import Accelerator

    from vldft.collate import Collator
    from vldft.config import config_to_dict, load_config
    from vldft.loader import PackingSampler
    from vldft.step import mixed_precision

    t_start = time.perf_counter()
    device, _, peak = pick_device(args.tiny or args.cpu, args.peak_tflops,
                                  "run with --tiny (or --cpu)")
    common_over = ALWAYS + args.set
    scale = args.scale or (8 if args.tiny else 1)
    if args.tiny:  # the tiny model on a CPU; lengths / scale (recorded in the JSON)
        common_over = ALWAYS + ["model.tiny=true"] + args.set
    if scale > 1:
        shipped = load_config(args.config, common_over)
        common_over += [f"data.pack_tokens={shipped.data.pack_tokens // scale}",
                        f"data.max_length={shipped.data.max_length // scale}"]
    cfgs = {n: load_config(args.config, common_over + SETUPS[n]) for n in names}
    base = cfgs["recipe"]
    if not base.data.packing:
        raise SystemExit(f"{args.config}: data.packing is off; this benchmark compares the "
                         "packed recipe with padded batches of the same samples")
    accelerator = Accelerator(mixed_precision="no", cpu=device == "cpu")

    # one model (and optimizer) per distinct model section: recipe and recipe_padded share one
    insts: dict[str, dict] = {}
    for n in names:
        key = json.dumps(config_to_dict(cfgs[n])["model"], sort_keys=True) + str(
            mixed_precision(cfgs[n]))
        if key not in insts:
            for other in insts.values():  # one model on the GPU at a time
                if other["device"] != "cpu" and device == "cuda":
                    move_setup(other, "cpu")
            insts[key] = build_setup(cfgs[n], args.tiny, args.arch, device)
        insts[n] = insts[key]
    unique = list({id(v): v for v in insts.values()}.values())

    # samples and micro-batches: the recipe's packing bins in training order
    adapter0 = insts["recipe"]["adapter"]
    model0 = adapter0.model
    specs, length_source = load_specs(base, args.lengths, args.samples, args.seed, scale)
    g = torch.Generator().manual_seed(args.seed)
    id_hi = min(model0.config.vision_start_token_id, model0.config.image_token_id,
                model0.config.text_config.pad_token_id, model0.config.eos_token_id)
    lazily: dict[int, object] = {}

    def sample(i: int):
        if i not in lazily:
            lazily[i] = encode(specs[i], i, model0, adapter0.image_token_id,
                               base.data.max_length, id_hi, g)
        return lazily[i]

    lengths = [sample_length(s, base.data.max_length) for s in specs]
    accum = base.train.grad_accum
    bins = PackingSampler(lengths, base.data.pack_tokens, base.data.max_length, args.seed,
                          multiple_of=accum).batches()
    need = args.steps * accum
    if len(bins) < need:
        raise SystemExit(f"{len(specs)} samples make {len(bins)} bins < {need}; raise --samples")
    step_bins = [bins[k * accum:(k + 1) * accum] for k in range(args.steps)]
    plans: dict[str, list[list[tuple[dict, list[int]]]]] = {}  # set-up -> steps -> micro-batches
    for n in names:
        set_attention(insts[n], cfgs[n])
        collate = collate_fn(cfgs[n], Collator.from_config(insts[n]["adapter"], cfgs[n]))
        plans[n] = plan_steps(cfgs[n], collate, step_bins, sample, args.seed)

    header = run_header("recipe_gpu.py", argv, device, cpu_label="cpu (dry run)")
    result = {**header, "tiny": args.tiny, "args": vars(args), "config": args.config,
              "peak_tflops": peak, "length_source": length_source,
              "lengths": {"samples": len(specs), "used": len(lazily),
                          "image_share": round(sum(1 for s in specs if s.get("grid"))
                                               / len(specs), 3),
                          "median_tokens": statistics.median(lengths),
                          "quartiles": statistics.quantiles(lengths, n=4),
                          "max_tokens": max(lengths), "truncated": sum(
                              1 for i in lazily if lazily[i].truncated)},
              "setups": {}, "rows": [], "rounds": []}
    for n in names:
        cfg, params = cfgs[n], list(insts[n]["adapter"].model.parameters())
        result["setups"][n] = {
            "overrides": SETUPS[n], "common_overrides": common_over,
            "model_dtype": cfg.model.dtype, "mixed_precision": insts[n]["mixed_precision"],
            "freeze": cfg.model.freeze, "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "packing": cfg.data.packing, "pack_tokens": cfg.data.pack_tokens,
            "micro_batch_size": None if cfg.data.packing else cfg.train.micro_batch_size,
            "micro_batches_per_optimizer_step": statistics.mean(len(s) for s in plans[n]),
            "optimizer_steps": len(plans[n]),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "params": sum(p.numel() for p in params)}
    out = Path(args.out) / "recipe_gpu.json"
    lora = {n: cfgs[n].model.lora.parts if cfgs[n].model.lora else None for n in names}
    stats = {n: [[micro_stats(b, lens, insts[n]["adapter"].model, cfgs[n].model.freeze,
                              lora[n]) for b, lens in st] for st in plans[n]] for n in names}
    runs: dict[str, dict] = {n: {"seconds": [], "step_s": [], "peak": 0.0, "losses": []}
                             for n in names}

    def activate(n: str) -> None:
        inst = insts[n]
        if device == "cuda" and inst["device"] == "cpu":
            for other in unique:
                if other is not inst and other["device"] != "cpu":
                    move_setup(other, "cpu")
            move_setup(inst, device)
        set_attention(inst, cfgs[n])

    def run(n: str, timed_round: int | None) -> None:
        """One pass over the set-up's optimizer steps (timed unless ``timed_round`` is None)."""
        if "error" in runs[n]:
            return
        activate(n)
        reset_peak(device)
        clocks = []

        def steps() -> None:
            for micro in plans[n]:
                with Stopwatch(device) as clock:
                    loss = config_step(insts[n], [b for b, _ in micro], cfgs[n], accelerator)
                clocks.append((clock.wall, loss))

        _, oom = oom_guard(steps, limit=160)
        if oom is not None:
            insts[n]["optimizer"].zero_grad(set_to_none=True)
            runs[n]["error"] = "out of memory: " + oom
            free(device)
            return
        if timed_round is not None:
            total = sum(dt for dt, _ in clocks)
            runs[n]["step_s"] += [dt for dt, _ in clocks]
            runs[n]["losses"] += [round(loss, 6) for _, loss in clocks]
            runs[n]["seconds"].append(round(total, 4))
            result["rounds"].append({"round": timed_round, "setup": n, "seconds": round(total, 4)})
            if device == "cuda":
                runs[n]["peak"] = max(runs[n]["peak"], peak_mem_gib(device))

    for n in names:  # warm-up: every optimizer step (every micro-batch shape) once
        run(n, None)
        print(f"[recipe_gpu] warm-up {n}: {runs[n].get('error', 'ok')}", flush=True)
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):  # interleaved: A B C, C B A, ...
            run(n, r)
        save_result(out, result, t_start)
    result["rows"] = [summary_row(n, result["setups"][n], runs[n], stats[n], peak, device)
                      for n in names]
    save_result(out, result, t_start)  # the timings are kept if the profiled steps run too long
    for row in result["rows"]:
        if args.no_kernels or "error" in row:
            continue
        n = row["setup"]
        activate(n)
        micro0 = [b for b, _ in plans[n][0]]
        kernels, oom = oom_guard(lambda n=n, micro0=micro0: kernels_per_call(  # one step
            lambda: config_step(insts[n], micro0, cfgs[n], accelerator), device))
        row.update(kernels if oom is None else {"cuda_kernels": None})
        save_result(out, result, t_start)
    result["moves_s"] = {k: round(sum(i.get(k, 0.0) for i in unique), 1)
                         for k in ("parked_s", "unparked_s")}  # not in the timings
    save_result(out, result, t_start)
    print(table(result["rows"]), flush=True)
    return result


if __name__ == "__main__":
    main()
