"""GPU: TRL's ``SFTTrainer(loss_type="dft")``, plain and with ``use_liger_kernel=True``, against
vldft packed and vldft padded on the same samples, model and device (issue 25, item 4).

    python bench/trl_gpu.py [--pack-tokens 8192] [--micro-batch 2] [--accum 8] [--steps 2]
                            [--rows vldft_padded,vldft_packed,trl,trl_liger] [--out DIR]
    python bench/trl_gpu.py --dry-run        # 2 x 64 model on the CPU (tests/test_bench_gpu.py)

Set-up: the bench set-up of bench/gpu_train.py: Qwen2.5-VL-3B's architecture with random weights
in bf16 (weights, gradients and AdamW states, no autocast), ``sdpa``, fused AdamW, clipping 1.0,
no gradient checkpointing. Samples: bench/packing_gpu.py's Geometry3K-like length mix (prompt
30-200 tokens, answer 50-1,500 log-uniform, 80 % with one image of 224-672 px a side), seeded.

One optimizer step = the same ``--micro-batch`` x ``--accum`` samples (16 by default: the
recipe's ``micro_batch_size: 2`` with packing off) for every row, so every row trains the same
tokens per optimizer step:
- ``vldft_padded``: those samples in ``--accum`` right-padded micro-batches of ``--micro-batch``
  (as vldft's collator pads), ``sdpa``;
- ``vldft_packed``: the same samples packed into rows of up to ``--pack-tokens`` tokens
  (``vldft.packing``: first-fit-decreasing, per-sample mRoPE positions, varlen attention);
  one optimizer step accumulates over its rows.
  Both through vldft's own step: ``vldft.step.accumulate_gradients`` over an ``ObjectiveModule``
  (chunked DFT, global token normalisation; ``bench/vldft_step.optimizer_step``);
- ``trl``: TRL's ``SFTTrainer(loss_type="dft")`` on the very padded micro-batches of
  ``vldft_padded`` (its data collator serves them in order), ``per_device_train_batch_size``
  one pre-built micro-batch, ``gradient_accumulation_steps=--accum``, ``optim=
  adamw_torch_fused``. TRL cannot pack a VLM. TRL 1.16 computes its loss with its own fused,
  chunked LM head (``add_fused_lm_head``: per-token log-probabilities without full logits; DFT
  scales each token's loss by its detached probability);
- ``trl_liger``: the same with ``use_liger_kernel=True``. In TRL 1.16 that applies Liger's layer
  kernels (RMSNorm, SwiGLU, (m)RoPE) through transformers' ``apply_liger_kernel``, and refuses
  Liger's fused linear cross-entropy (``liger_kernel_config={"fused_linear_cross_entropy":
  True}`` raises: it would replace the forward TRL patches with its fused LM head), so the loss
  stays TRL's fused head. Liger's own DFT head (fused linear cross-entropy with
  ``use_token_scaling``) is a row of the loss-head bench, bench/objectives_gpu.py.

Timing: the timed optimizer steps are run once untimed first (every micro-batch shape warmed up),
then timed: CUDA-synchronised wall time per optimizer step (TRL: between its ``on_step_begin``
and ``on_step_end`` callbacks: forward, loss, backward, clipping, optimizer step; batches are
built beforehand for every row). Peak memory: ``torch.cuda.max_memory_allocated`` over the timed
steps; each row holds only its own optimizer state (vldft's is freed before TRL's rows), the
same model object throughout (Liger patches it in place, so ``trl_liger`` runs last). Reported
per row: useful (target) tokens/s, tokens/s (non-padding), MFU (``common.qwen_flop_terms`` per
sample), peak memory. A row that cannot run (out of memory, trl or liger-kernel not importable,
Liger on a CPU) says so in its ``error``. The goal check (issue 25): vldft_packed's useful
tokens/s >= 3x the best TRL row's, at <= 0.7x its peak memory.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    fmt_mfu,
    free,
    gpu_out,
    markdown_table,
    peak_mem_gib,
    pick_device,
    reset_peak,
    run_header,
    save_result,
    sync,
)
from gpu_train import build_model  # noqa: E402
from packing_gpu import SPEC, flops, make_samples, pad  # noqa: E402

from vldft.attention import SEGMENTS  # noqa: E402
from vldft.packing import (  # noqa: E402
    IGNORE,
    choose_attention,
    first_fit_decreasing,
    mrope_positions,
    pack,
    packed_segments,
)

ROWS = ("vldft_padded", "vldft_packed", "trl", "trl_liger")
GOAL_SPEED, GOAL_MEMORY = 3.0, 0.7


# ----------------------------------------------------------------------------- the samples
def plan_steps(enc: list, args) -> list[list[int]]:
    """Sample indices of each timed optimizer step: ``--micro-batch`` x ``--accum`` samples in a
    seeded training order."""
    order = list(range(len(enc)))
    random.Random(1).shuffle(order)
    per = args.micro_batch * args.accum
    if per * args.steps > len(enc):
        raise SystemExit(f"--samples {len(enc)} < {args.steps} steps x {per} samples")
    return [order[k * per:(k + 1) * per] for k in range(args.steps)]


def to_dtype(batch: dict, dtype) -> dict:
    """The micro-batch's tensors, floating-point ones in the model's dtype, on the CPU (each row
    moves them itself), and its precomputed varlen segments if any."""
    return {k: (v.to(dtype) if v.is_floating_point() else v) if isinstance(v, torch.Tensor)
            else v for k, v in batch.items() if isinstance(v, torch.Tensor) or k == SEGMENTS}


def padded_micro(enc: list, idx: list[int], args, pad_id: int, dtype):
    """The step's samples in right-padded micro-batches of ``--micro-batch``, in order:
    (micro-batches, the sample indices of each)."""
    groups = [idx[k:k + args.micro_batch] for k in range(0, len(idx), args.micro_batch)]
    return [to_dtype(pad([enc[i] for i in g], pad_id), dtype) for g in groups], groups


def packed_micro(enc: list, idx: list[int], args, model, dtype):
    """The step's samples packed into rows of up to ``--pack-tokens`` (first-fit-decreasing,
    as vldft.loader's sampler bins), each with its varlen segments computed on the CPU as
    vldft's pack collator does (``model.precompute_segments``, on by default)."""
    lengths = [len(enc[i].input_ids) for i in idx]
    if max(lengths) > args.pack_tokens:
        raise SystemExit(f"a sample of {max(lengths)} tokens > --pack-tokens {args.pack_tokens}")
    groups = [[idx[j] for j in b]
              for b in first_fit_decreasing(list(range(len(idx))), lengths, args.pack_tokens)]
    positions = lambda e: mrope_positions(model, e, model.config.image_token_id)  # noqa: E731
    micro = []
    for g in groups:
        batch = pack([enc[i] for i in g], positions)
        batch[SEGMENTS] = packed_segments(batch)
        micro.append(to_dtype(batch, dtype))
    return micro, groups


def step_stats(model, enc: list, micro: list[dict], groups: list[list[int]]) -> dict:
    """Targets, real tokens, token slots and model FLOPs (attention per sample) of one
    optimizer step's micro-batches."""
    return {"targets": sum(int((m["labels"][:, 1:] != IGNORE).sum()) for m in micro),
            "tokens": sum(len(enc[i].input_ids) for g in groups for i in g),
            "slots": sum(m["input_ids"].numel() for m in micro), "micro_batches": len(micro),
            "flops": sum(flops(model, m, [len(enc[i].input_ids) for i in g])
                         for m, g in zip(micro, groups, strict=True))}


def finish(row: dict, times: list[float], stats: list[dict], args, device: str) -> dict:
    secs = sum(times)
    f = sum(s["flops"] for s in stats)
    row.update(timed_steps=len(times), median_step_s=round(statistics.median(times), 4),
               samples_per_step=args.micro_batch * args.accum,
               targets_per_step=[s["targets"] for s in stats],
               tokens_per_step=[s["tokens"] for s in stats],
               micro_batches_per_step=[s["micro_batches"] for s in stats],
               useful_tokens_per_s=round(sum(s["targets"] for s in stats) / secs, 1),
               tokens_per_s=round(sum(s["tokens"] for s in stats) / secs, 1),
               padding_fraction=round(1 - sum(s["tokens"] for s in stats)
                                      / sum(s["slots"] for s in stats), 4),
               tflops_per_s=round(f / secs / 1e12, 3),
               mfu=round(f / secs / 1e12 / args.peak_tflops, 4) if args.peak_tflops else None,
               peak_mem_gib=peak_mem_gib(device))
    return row


# ----------------------------------------------------------------------------- vldft's rows
def run_vldft(name: str, model, micro_steps: list[list[dict]], stats: list[dict], args,
              device: str) -> dict:
    from accelerate import Accelerator
    from qwen import bare_adapter
    from vldft_step import optimizer_step

    from vldft.step import ObjectiveModule

    row = {"framework": "vldft", "row": name,
           "attention": model.config._attn_implementation}
    accelerator = Accelerator(cpu=device == "cpu")
    module = ObjectiveModule(bare_adapter(model, None, None))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5,
                                  **({"fused": True} if device == "cuda" else {}))
    times = []
    try:
        for micro in micro_steps:  # warm-up: every timed micro-batch's shape once
            optimizer_step(module, optimizer, micro, SPEC, accelerator, 1.0)
        reset_peak(device)
        for micro in micro_steps:
            sync(device)
            t0 = time.perf_counter()
            optimizer_step(module, optimizer, micro, SPEC, accelerator, 1.0)
            sync(device)
            times.append(time.perf_counter() - t0)
        finish(row, times, stats, args, device)
    except torch.OutOfMemoryError as e:
        row.update(error="out of memory", detail=str(e).split("\n")[0][:200])
    optimizer.zero_grad(set_to_none=True)
    del optimizer, module
    free(device)
    return row


# ----------------------------------------------------------------------------- TRL's rows
def run_trl(name: str, model, micro_steps: list[list[dict]], stats: list[dict], args,
            device: str, out_dir: Path) -> dict:
    """TRL's SFTTrainer over the padded micro-batches: the timed steps twice (the first pass
    untimed), in order."""
    row = {"framework": "trl", "row": name, "use_liger_kernel": name == "trl_liger",
           "attention": model.config._attn_implementation}
    try:
        import trl
    except ImportError as e:
        return {**row, "error": f"not run: trl is not importable ({e})"}
    row["trl"] = trl.__version__
    if name == "trl_liger":
        try:
            from importlib.metadata import version

            import liger_kernel  # noqa: F401

            row["liger_kernel"] = version("liger-kernel")
        except ImportError as e:
            return {**row, "error": f"not run: liger_kernel is not importable ({e})"}
        if device != "cuda":
            # Liger's kernels are Triton (CUDA; Triton's CPU interpreter fails on some of its
            # layer kernels): on the CPU only the patching is checked
            return {**row, **liger_patch_check(model),
                    "error": "not run: Liger's Triton kernels need a CUDA device (CPU dry run)"}
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    flat = [m for micro in micro_steps for m in micro] * 2  # untimed pass, then timed pass
    n_steps = 2 * len(micro_steps)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == len(micro_steps):
                reset_peak(device)
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync(device)
            if state.global_step > len(micro_steps):  # global_step counts the finished steps
                times.append(time.perf_counter() - self.t0)

    class InOrder(SFTTrainer):
        def _get_train_sampler(self, *a, **kw):  # the micro-batches in the order built
            return SequentialSampler(self.train_dataset)

    cfg = SFTConfig(
        output_dir=str(out_dir), loss_type="dft", per_device_train_batch_size=1,
        gradient_accumulation_steps=args.accum, max_steps=n_steps, learning_rate=1e-5,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=device == "cpu", bf16=False, fp16=False,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        gradient_checkpointing=False, dataloader_num_workers=0, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, disable_tqdm=True,
        use_liger_kernel=name == "trl_liger", seed=0)
    data = Dataset.from_dict({"idx": list(range(len(flat)))})
    trainer = None
    try:
        trainer = InOrder(model=model, args=cfg, train_dataset=data,
                          data_collator=lambda rows: dict(flat[rows[0]["idx"]]),
                          processing_class=_tokenizer(), callbacks=[Timer()])
        trainer.train()
        if name == "trl_liger":
            row.update(liger_patched(model))
        finish(row, times, stats, args, device)
    except torch.OutOfMemoryError as e:
        row.update(error="out of memory", detail=str(e).split("\n")[0][:200])
    del trainer
    model.__dict__.pop("forward", None)  # TRL's fused-LM-head forward: the next row patches anew
    model.zero_grad(set_to_none=True)
    free(device)
    return row


def liger_patched(model) -> dict:
    """How many modules of ``model`` run a Liger forward (Liger patches instances in place),
    and ``vldft.levers.liger_report``'s line (also: swapped functions nothing calls)."""
    from vldft.levers import liger_modules, liger_report

    kinds = liger_modules(model)
    return {"liger_patched_modules": sum(kinds.values()), "liger_patched_kinds": sorted(kinds),
            "liger_report": liger_report(model)}


def liger_patch_check(model) -> dict:
    """The CPU dry run: apply what ``use_liger_kernel=True`` applies (without running it) and
    count the patched modules: checks that this liger-kernel knows this transformers'
    Qwen2.5-VL."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False)
    return liger_patched(model)


def _tokenizer():
    """A tokenizer for TRL's processing_class (it is only saved / asked for special ids here)."""
    from vldft.adapters.tiny import QWEN2_5_VL_TEMPLATE, QWEN_SPECIALS, byte_tokenizer

    return byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                          template=QWEN2_5_VL_TEMPLATE)


# ----------------------------------------------------------------------------- the goal
def goal_check(rows: list[dict]) -> dict:
    """vldft_packed vs the best TRL row (highest useful tokens/s among those that ran)."""
    packed = next((r for r in rows if r["row"] == "vldft_packed" and "error" not in r), None)
    trls = [r for r in rows if r["framework"] == "trl" and "error" not in r]
    if packed is None or not trls:
        return {"checked": False, "why": "vldft_packed or every TRL row did not run"}
    best = max(trls, key=lambda r: r["useful_tokens_per_s"])
    speed = packed["useful_tokens_per_s"] / best["useful_tokens_per_s"]
    mem = (packed["peak_mem_gib"] / best["peak_mem_gib"]
           if packed.get("peak_mem_gib") and best.get("peak_mem_gib") else None)
    return {"checked": True, "best_trl_row": best["row"],
            "useful_tokens_per_s_ratio": round(speed, 3), "speed_goal": GOAL_SPEED,
            "speed_goal_met": speed >= GOAL_SPEED,
            "peak_mem_ratio": round(mem, 3) if mem is not None else None,
            "memory_goal": GOAL_MEMORY,
            "memory_goal_met": mem <= GOAL_MEMORY if mem is not None else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--pack-tokens", type=int, default=8192)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--accum", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per row")
    ap.add_argument("--samples", type=int, default=64, help="sample stream (seeded)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", default=gpu_out())
    ap.add_argument("--dry-run", action="store_true", help="2 x 64 model on the CPU")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = args.rows.split(",")
    if set(rows) - set(ROWS):
        ap.error(f"--rows: some of {','.join(ROWS)}")
    device, dtype, args.peak_tflops = pick_device(args.dry_run, args.peak_tflops)
    if args.dry_run:
        args.pack_tokens, args.micro_batch, args.accum, args.steps, args.samples = \
            512, 2, 2, 1, 24
    sides = (56, 112) if args.dry_run else (224, 672)
    model = build_model(args.dry_run, device, dtype)
    enc = make_samples(model, args.samples, 0, sides, args.dry_run)
    steps = plan_steps(enc, args)
    pad_id = model.config.text_config.pad_token_id
    built = {"padded": [padded_micro(enc, idx, args, pad_id, dtype) for idx in steps],
             "packed": [packed_micro(enc, idx, args, model, dtype) for idx in steps]}
    stats = {k: [step_stats(model, enc, m, g) for m, g in v] for k, v in built.items()}
    padded, packed = ([m for m, _ in built[k]] for k in ("padded", "packed"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    result = {**run_header("trl_gpu.py", argv, device, cpu_label="cpu (dry run)"),
              "dry_run": args.dry_run, "args": vars(args),
              "transformers": transformers.__version__,
              "same_samples": [sorted(s) for s in steps], "rows": []}
    for name in [r for r in ROWS if r in rows]:  # this order: Liger patches the model last
        model.config._attn_implementation = "sdpa"
        try:
            if name == "vldft_packed":
                result["packed_attention"] = choose_attention(model, "sdpa")
                row = run_vldft(name, model, packed, stats["packed"], args, device)
            elif name == "vldft_padded":
                row = run_vldft(name, model, padded, stats["padded"], args, device)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    row = run_trl(name, model, padded, stats["padded"], args, device, Path(tmp))
        except Exception as e:  # noqa: BLE001 - recorded in the row; the next row still runs
            import traceback

            traceback.print_exc()
            row = {"framework": "trl" if name.startswith("trl") else "vldft", "row": name,
                   "error": f"not run: {type(e).__name__}: {str(e)[:300]}"}
            if "Qwen2_5_VLCausalLMOutputWithPast" in str(e):
                row["hint"] = ("liger-kernel 0.8.5's Qwen2.5-VL patch needs transformers <= "
                               "5.22 (Qwen2_5_VLCausalLMOutputWithPast is gone in 5.23): run "
                               "this under transformers 5.22.2 (bench/gpu.sh phase 2 does)")
            model.zero_grad(set_to_none=True)
            free(device)
        model.config._attn_implementation = "sdpa"
        result["rows"].append(row)
        print(f"[trl_gpu] {json.dumps(row)}", flush=True)
        if "error" in row:
            print(f"[trl_gpu] row {name} did NOT run: {row['error']}", flush=True)
        save_result(out / "trl_gpu.json", result, t0)
    result["goal"] = goal_check(result["rows"])
    save_result(out / "trl_gpu.json", result, t0)
    print(markdown_table(
        ["row", "step (ms)", "useful tokens/s", "tokens/s", "padding", "MFU", "peak GiB"],
        result["rows"],
        lambda r: [r["row"], r["error"]] if "error" in r else [
            r["row"], f"{r['median_step_s'] * 1e3:.0f}", f"{r['useful_tokens_per_s']:.0f}",
            f"{r['tokens_per_s']:.0f}", f"{r['padding_fraction']:.0%}", fmt_mfu(r),
            str(r.get("peak_mem_gib") or "-")]))
    g = result["goal"]
    if g["checked"]:
        print(f"goal: vldft_packed / {g['best_trl_row']} useful tokens/s "
              f"{g['useful_tokens_per_s_ratio']}x (goal >= {GOAL_SPEED}x: "
              f"{g['speed_goal_met']}); peak memory {g['peak_mem_ratio']}x (goal <= "
              f"{GOAL_MEMORY}x: {g['memory_goal_met']})")
    else:
        print(f"goal: not checked ({g['why']})")
    return result


if __name__ == "__main__":
    main()
