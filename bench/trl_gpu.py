"""GPU reference row: TRL's ``SFTTrainer(loss_type="dft")`` on the same model, batches and
device as ``bench/gpu_train.py``, side by side with vldft's step in one process.

    python bench/trl_gpu.py [--seq-lens 2048,4096,8192] [--steps 3] [--warmup 1] [--out DIR]
    python bench/trl_gpu.py --dry-run        # tiny model on the CPU (tests/test_bench_gpu.py)

Needs ``trl`` and ``datasets`` (the ``bench`` extra; on the lent GPU machine: carried wheels). The
model is gpu_train's Qwen2.5-VL-3B architecture with random weights in bf16 (weights, gradients and
AdamW states, no autocast), batch 1, one 448 x 448 image and a response filling the rest of L
tokens (``gpu_train.make_batch``). Per L: first vldft (``gpu_train.measure``: chunked DFT, fused
AdamW, clipping 1.0), then a TRL ``SFTTrainer`` on the same model object (each side has its own
optimizer; that the weights moved does not change a step's cost), serving that very batch each step
through its data collator, ``bf16=False`` (the weights are bf16 already), fused AdamW, clipping
1.0, no gradient checkpointing. Step time: CUDA-synchronised wall time between ``on_step_begin``
and ``on_step_end`` of TRL's callbacks (the forward, TRL's DFT loss over full logits, backward,
clipping, optimizer step), median of ``--steps`` after ``--warmup``; peak memory:
``torch.cuda.max_memory_allocated`` over the timed steps. Out-of-memory is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    default_out,
    fmt_mfu,
    machine_info,
    markdown_table,
    peak_tflops,
    sync,
    write_json,
)
from gpu_train import build_model, make_batch, model_flops  # noqa: E402
from gpu_train import measure as measure_vldft  # noqa: E402


def run_trl(model, batch: dict, args, device: str, out_dir: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup and device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync(device)
            if state.global_step > args.warmup:  # global_step counts the finished steps
                times.append(time.perf_counter() - self.t0)

    cfg = SFTConfig(
        output_dir=str(out_dir), loss_type="dft", per_device_train_batch_size=1,
        max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=device == "cpu", bf16=False, fp16=False,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",
        gradient_checkpointing=False, dataloader_num_workers=0, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, disable_tqdm=True,
        seed=0)
    data = Dataset.from_dict({"idx": list(range(args.warmup + args.steps))})
    # TRL wants a mask (or position ids) to count its tokens; all ones: one unpadded sequence
    batch = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data,
                         data_collator=lambda rows: dict(batch), processing_class=_tokenizer(),
                         callbacks=[Timer()])
    trainer.train()
    del trainer
    return {"step_s": statistics.median(times)}


def _tokenizer():
    """A tokenizer for TRL's processing_class (it is only saved / asked for special ids here)."""
    from vldft.adapters.tiny import QWEN2_5_VL_TEMPLATE, QWEN_SPECIALS, byte_tokenizer

    return byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                          template=QWEN2_5_VL_TEMPLATE)


def measure_trl(model, length: int, args, device: str, dtype, out_dir: Path) -> dict:
    """TRL's row at ``length`` (the vldft row is gpu_train's ``measure``)."""
    batch = make_batch(model, length, args.image_side, device, dtype)
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    patches = int(batch["image_grid_thw"].prod())
    row = {"framework": "trl", "seq_len": length, "targets": n_targets}
    try:
        row.update(run_trl(model, batch, args, device, out_dir))
    except torch.OutOfMemoryError as e:
        row.update(error="out of memory", detail=str(e).split("\n")[0][:200])
    model.zero_grad(set_to_none=True)
    if "step_s" in row:
        flops = model_flops(model, length, n_targets, patches)
        row.update(tokens_per_s=round(length / row["step_s"], 1),
                   mfu=flops / row["step_s"] / 1e12 / args.peak_tflops if args.peak_tflops
                   else None)
        if device == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", default="2048,4096,8192")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--out", default=os.environ.get("OUT", default_out("gpu")))
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU")
    args = ap.parse_args(argv)
    if args.dry_run:
        device, dtype, args.image_side = "cpu", torch.float32, 56
        seqs, args.steps, args.warmup = [160], 1, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run, or on a GPU machine")
        device, dtype = "cuda", torch.bfloat16
        seqs = [int(s) for s in args.seq_lens.split(",")]
        args.peak_tflops = args.peak_tflops or peak_tflops(torch.cuda.get_device_name())
    model = build_model(args.dry_run, device, dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import trl

    result = {"machine": machine_info(), "trl": trl.__version__, "dry_run": args.dry_run,
              "command": "python bench/trl_gpu.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv), "rows": []}
    args.fake_oom_above = 0  # (gpu_train's dry-run switch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5,
                                  **({"fused": True} if device == "cuda" else {}))
    with tempfile.TemporaryDirectory() as tmp:
        for length in seqs:
            vldft_row = measure_vldft(model, optimizer, "chunked", length, args, device, dtype)
            for row in ({"framework": "vldft", **vldft_row},
                        measure_trl(model, length, args, device, dtype, Path(tmp))):
                result["rows"].append(row)
                print(f"[trl_gpu] {json.dumps(row)}", flush=True)
                write_json(out / "trl_gpu.json", result)
    print(markdown_table(
        ["framework", "L", "step (ms)", "tokens/s", "MFU", "peak GiB"], result["rows"],
        lambda r: [r["framework"], str(r["seq_len"]), r["error"]] if "error" in r else [
            r["framework"], str(r["seq_len"]), f"{r['step_s'] * 1e3:.0f}",
            f"{r['tokens_per_s']:.0f}", fmt_mfu(r), str(r.get("peak_mem_gib", "-"))]))
    return result


if __name__ == "__main__":
    main()
