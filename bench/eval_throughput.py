"""Evaluation speed, two modes.

1. ``--model CKPT``: samples/s of ``python -m vldft.eval`` on 1 process and on N processes
   (``torchrun``), side by side in one run, on the same checkpoint and documents; checks that
   both write the same per-sample outputs::

       python bench/eval_throughput.py --model runs/demo/final --limit 160 --procs 2

   samples/s counts the evaluation itself (lmms-eval's ``simple_evaluate``: building requests,
   generation, scoring, gathering; from ``results.json``), and separately the whole command
   (start-up, imports and model loading included). On the CPU each process runs one intra-op
   thread (``OMP_NUM_THREADS=1``), so N processes use N cores.

2. ``--gpu``: the cost of evaluation at the shipped recipe's settings on one GPU, nothing
   downloaded (``bash bench/gpu.sh`` with ``PHASE=2``; ``--dry-run``: the same code on the CPU
   with a 2 x 64 model, seconds)::

       python bench/eval_throughput.py --gpu [--batch-size 8] [--max-new-tokens 1024]
                                       [--batches 2] [--limit 8] [--out DIR]

   The model is Qwen2.5-VL-3B's architecture with random weights in bf16 (``sdpa``), wrapped as
   vldft's adapter with a local byte-level tokenizer (``vldft.adapters.tiny``; its special ids
   written into the config, the 151,936-row vocabulary kept, so every decoding step pays the full
   lm_head) and Qwen's image processor at the recipe's ``min_pixels`` / ``max_pixels``.
   a. **The model class** (``vldft.eval.model.VldftLMM``, what ``python -m vldft.eval`` and
      ``train.eval_tasks`` use): its ``generate_until`` on ``--batches`` batches of
      ``--batch-size`` benchmark-like requests (one image of 300-1,000 px a side, up to 1,024
      image tokens at ``max_pixels``; 150-600 prompt tokens), greedy, batched HF ``generate``,
      budget ``--max-new-tokens`` (the recipe's ``train.eval_tasks_max_new_tokens``: 1,024).
      Random weights almost never emit the end-of-turn token, so every sample runs to the full
      budget: **this is the worst case** (a trained model that stops early is faster); the
      generated tokens per batch are recorded to show it. One untimed batch at 8 new tokens
      first. Reported: samples/s, generated tokens/s, seconds per batch, peak memory.
   b. **One in-training evaluation** (``vldft.eval.in_training.run_benchmarks``, what
      ``train.eval_tasks`` runs every ``train.eval_every`` steps): lmms-eval's evaluator on the
      in-memory model with ``vldft_geo_heldout`` (the only task whose data is on the machine:
      bundled, tiny diagrams, its own 96-token budget), ``--limit`` samples. Its wall time, the
      part of it spent in ``generate`` and the rest (task building, scoring, writing).
   c. **The recipe's in-training evaluation, estimated** from a and b (not measured whole: its
      benchmarks' data cannot be on the machine): ``train.eval_tasks`` of
      ``configs/qwen25vl_geo.yaml`` (3 tasks x ``eval_tasks_limit`` 50 samples, batch
      ``eval_batch_size`` 8, 1,024 tokens) = batches x a's seconds per batch + b's non-generation
      seconds, worst case (every sample to the budget).
   b runs first (short), then a (saved after each batch: a cap keeps the batches done).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # vldft from this working tree (not installed on the GPU machine)

from common import (  # noqa: E402
    default_out,
    free_port,
    gpu_out,
    machine_info,
    peak_mem_gib,
    pick_device,
    reset_peak,
    run_header,
    save_result,
    sync,
    write_json,
)

RECIPE = ROOT / "configs" / "qwen25vl_geo.yaml"
LOCAL_TASK = "vldft_geo_heldout"


# ----------------------------------------------------------------------------- mode 1: the CLI
def run(model: str, task: str, limit: int, batch: int, procs: int, out: Path,
        max_new_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "vldft.eval", "--model", model, "--tasks", task, "--limit",
           str(limit), "--batch-size", str(batch), "--out", str(out), "--max-new-tokens",
           str(max_new_tokens)]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                    "--master_port", str(free_port()), "-m", "vldft.eval"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed ({procs} process(es)):\n{(proc.stdout + proc.stderr)[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    n = res["vldft"]["n_samples"][task]
    return {"procs": procs, "n": n, "eval_s": res["vldft"]["wall_s"], "command_s": wall,
            "samples_per_s": n / res["vldft"]["wall_s"], "samples_per_s_command": n / wall,
            "metrics": res["metrics"]}


def cli_mode(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="vldft_eval_bench_"))
    rows = [run(args.model, args.task, args.limit, args.batch_size, k, tmp / f"p{k}",
                args.max_new_tokens) for k in (1, args.procs)]
    samples = [(tmp / f"p{k}" / f"samples_{args.task}.jsonl").read_text()
               for k in (1, args.procs)]
    same = samples[0] == samples[1]
    print(f"{'processes':>9} {'samples':>7} {'eval s':>7} {'samples/s':>9} "
          f"{'command s':>9} {'samples/s (command)':>19}")
    for r in rows:
        print(f"{r['procs']:>9} {r['n']:>7} {r['eval_s']:>7.1f} {r['samples_per_s']:>9.2f} "
              f"{r['command_s']:>9.1f} {r['samples_per_s_command']:>19.2f}")
    speedup = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    print(f"speed-up {speedup:.2f}x with {args.procs} processes; per-sample outputs "
          f"{'identical' if same else 'DIFFER'}")
    out = write_json(args.out or default_out("eval_throughput.json"),
                     {"args": vars(args), "machine": machine_info(), "runs": rows,
                      "speedup": speedup, "identical_outputs": same})
    print(f"wrote {out}")


# ----------------------------------------------------------------------------- mode 2: --gpu
def build_adapter(dry_run: bool, device: str, dtype, min_pixels: int, max_pixels: int):
    """vldft's Qwen2.5-VL adapter: the 3B architecture (``dry_run``: the 2 x 64 one) with random
    weights, a byte-level tokenizer with Qwen's special tokens and chat template, Qwen's image
    processor at ``min_pixels`` / ``max_pixels``."""
    from qwen import build_qwen25vl, qwen25vl_3b_config, qwen25vl_small_config
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from vldft.adapters import Qwen2_5_VLAdapter
    from vldft.adapters.tiny import QWEN2_5_VL_TEMPLATE, QWEN_SPECIALS, byte_tokenizer

    tok = byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                         template=QWEN2_5_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = qwen25vl_small_config() if dry_run else qwen25vl_3b_config()
    # the tokenizer's special ids in the config (the vocabulary keeps its rows: same cost)
    for c in (config, config.text_config):
        c.eos_token_id, c.pad_token_id, c.bos_token_id = (ids["<|im_end|>"],
                                                          ids["<|endoftext|>"], None)
    config.image_token_id, config.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    config.vision_start_token_id = ids["<|vision_start|>"]
    config.vision_end_token_id = ids["<|vision_end|>"]
    model = build_qwen25vl(config, device, dtype).eval()
    model.config.use_cache = True
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = ids["<|im_end|>"], ids["<|endoftext|>"]
    gen.bos_token_id = None
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN2_5_VL_TEMPLATE)
    return Qwen2_5_VLAdapter(model, processor, min_pixels, max_pixels)


def bench_docs(n: int, sides: tuple[int, int], prompt: tuple[int, int], seed: int = 0
               ) -> list[dict]:
    """``n`` benchmark-like documents: one noise image of ``sides`` px a side (each side drawn
    on its own) and a question of ``prompt`` characters (the byte tokenizer: one token each)."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    words = ["angle", "triangle", "radius", "find", "the", "length", "of", "segment", "if",
             "circle", "area", "degrees", "parallel", "choose", "answer", "option"]
    docs = []
    for _ in range(n):
        w, h = rng.randint(*sides), rng.randint(*sides)
        img = Image.fromarray(nrng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        k = rng.randint(*prompt)
        text = ""
        while len(text) < k:
            text += rng.choice(words) + " "
        docs.append({"image": img, "question": text[:k]})
    return docs


def requests_for(docs: list[dict], budget: int, task: str = "bench", split: str = "test"):
    """lmms-eval ``generate_until`` requests over ``docs`` (as its evaluator builds them)."""
    from lmms_eval.api.instance import Instance

    def doc_to_messages(doc: dict) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image", "url": doc["image"]},
                                             {"type": "text", "text": doc["question"]}]}]

    kw = {"max_new_tokens": budget, "until": [], "temperature": 0}
    return [Instance(request_type="generate_until",
                     arguments=("", doc_to_messages, kw, i, task, split), idx=0,
                     metadata={"task": task, "doc_id": i, "repeats": 1})
            for i in range(len(docs))]


class GenerateLog:
    """Wraps ``model.generate``: seconds (device-synchronised) and new tokens of each call."""

    def __init__(self, model) -> None:
        self.model, self.inner, self.calls = model, model.generate, []

    def __call__(self, *a, **kw):
        sync(self.model.device)
        t0 = time.perf_counter()
        out = self.inner(*a, **kw)
        sync(self.model.device)
        n_in = kw["input_ids"].shape[1] if "input_ids" in kw else a[0].shape[1]
        self.calls.append({"s": time.perf_counter() - t0, "batch": out.shape[0],
                           "new_tokens": out.shape[1] - n_in,
                           "prompt_tokens": n_in, "budget": kw.get("max_new_tokens")})
        return out

    def __enter__(self):
        self.model.generate = self
        return self

    def __exit__(self, *exc):
        del self.model.generate  # the class's own method again


def model_class_rate(adapter, args, device: str, save=None) -> dict:
    """a: ``VldftLMM.generate_until`` samples/s at the budget (worst case: no early stop), one
    call per batch (as its own loop batches them), ``save(partial)`` after each."""
    from vldft.eval.model import VldftLMM

    n, bs = args.batch_size * args.batches, args.batch_size
    docs = bench_docs(n + bs, args.sides, args.prompt_chars)
    lm = VldftLMM.from_adapter(adapter, batch_size=bs, max_new_tokens=args.max_new_tokens)
    lm.task_dict = {"warm": {"test": docs[n:]}, "bench": {"test": docs[:n]}}
    reqs = requests_for(docs[:n], args.max_new_tokens)
    row = {"batch_size": bs, "max_new_tokens": args.max_new_tokens}
    with GenerateLog(adapter.model) as log:
        lm.generate_until(requests_for(docs[n:], 8, task="warm"))  # shapes, kernels, autotune
        log.calls.clear()
        reset_peak(device)
        wall, texts = 0.0, []
        for k in range(args.batches):
            sync(device)
            t0 = time.perf_counter()
            texts += lm.generate_until(reqs[k * bs:(k + 1) * bs])
            sync(device)
            wall += time.perf_counter() - t0
            new = sum(c["new_tokens"] * c["batch"] for c in log.calls)
            per_batch = [round(c["s"], 3) for c in log.calls]
            row.update(samples=len(texts), wall_s=round(wall, 3),
                       samples_per_s=round(len(texts) / wall, 3),
                       generated_tokens_per_s=round(new / wall, 1), batch_s=per_batch,
                       median_batch_s=round(statistics.median(per_batch), 3),
                       new_tokens_per_batch=[c["new_tokens"] for c in log.calls],
                       prompt_tokens_per_batch=[c["prompt_tokens"] for c in log.calls],
                       every_sample_ran_to_budget=all(c["new_tokens"] == args.max_new_tokens
                                                      for c in log.calls),
                       peak_mem_gib=peak_mem_gib(device))
            if save:
                save(row)
    return row


def in_training_eval(adapter, args, device: str, out: Path) -> dict:
    """b: one ``train.eval_tasks`` evaluation (``run_benchmarks``) of ``vldft_geo_heldout``."""
    from accelerate import Accelerator

    from vldft.config import load_config
    from vldft.eval.in_training import check_eval_tasks, run_benchmarks

    cfg = load_config(RECIPE, [f"train.eval_tasks=[{LOCAL_TASK}]",
                               f"train.eval_tasks_limit={args.limit}",
                               f"train.eval_batch_size={args.batch_size}",
                               f"train.eval_tasks_max_new_tokens={args.max_new_tokens}"])
    check_eval_tasks(cfg)
    accelerator = Accelerator(cpu=device == "cpu")
    with GenerateLog(adapter.model) as log:
        t0 = time.perf_counter()
        rec = run_benchmarks(adapter, accelerator, cfg, 0, out)
        wall = time.perf_counter() - t0
    gen = sum(c["s"] for c in log.calls)
    return {"task": LOCAL_TASK, "limit": args.limit, "batch_size": args.batch_size,
            "metrics_line": rec, "wall_s": round(wall, 3), "generate_s": round(gen, 3),
            "other_s": round(wall - gen, 3),
            "new_tokens_per_batch": [c["new_tokens"] for c in log.calls]}


def recipe_estimate(rate: dict, harness: dict) -> dict:
    """c: the shipped recipe's in-training evaluation from a and b (worst case)."""
    from vldft.config import load_config

    t = load_config(RECIPE).train
    per_task = math.ceil(t.eval_tasks_limit / t.eval_batch_size)
    batches = per_task * len(t.eval_tasks)
    est = batches * rate["median_batch_s"] + harness["other_s"]
    return {"config": str(RECIPE.relative_to(ROOT)), "eval_tasks": t.eval_tasks,
            "eval_tasks_limit": t.eval_tasks_limit, "eval_batch_size": t.eval_batch_size,
            "eval_tasks_max_new_tokens": t.eval_tasks_max_new_tokens, "eval_every": t.eval_every,
            "batches": batches, "same_budget_as_measured": (
                t.eval_tasks_max_new_tokens == rate["max_new_tokens"]
                and t.eval_batch_size == rate["batch_size"]),
            "estimate_s": round(est, 1),
            "formula": "batches x a.median_batch_s + b.other_s (every sample to the budget)"}


def gpu_mode(args, argv) -> dict:
    t0 = time.perf_counter()
    device, dtype, _ = pick_device(args.dry_run, None, "run with --gpu --dry-run")
    if args.dry_run:  # the same code on the CPU: 2 x 64 model, small images, a short budget
        args.batch_size, args.batches, args.max_new_tokens, args.limit = 2, 2, 6, 2
        args.sides, args.prompt_chars, pixels = (56, 112), (20, 60), (3136, 12544)
    else:
        args.sides, args.prompt_chars = (300, 1000), (150, 600)
        from vldft.config import load_config

        m = load_config(RECIPE).model
        pixels = (m.min_pixels, m.max_pixels)
    out = Path(args.out or gpu_out())
    path = out / "eval_gpu.json"
    result = {**run_header("eval_throughput.py", argv, device, cpu_label="cpu (dry run)"),
              "dry_run": args.dry_run, "args": {k: v for k, v in vars(args).items()},
              "min_max_pixels": list(pixels),
              "note": "random weights: no sample stops before the budget (worst case)"}
    adapter = build_adapter(args.dry_run, device, dtype, *pixels)
    result["params"] = sum(p.numel() for p in adapter.model.parameters())
    def partial(row: dict) -> None:  # after each batch of a: a cap keeps what was measured
        result["model_class"] = {**row, "partial": True}
        save_result(path, result, t0)

    # b first: it is short, and a saves after each of its (long) batches
    steps = (("in_training", lambda: in_training_eval(adapter, args, device,
                                                      Path(tempfile.mkdtemp()))),
             ("model_class", lambda: model_class_rate(adapter, args, device, partial)))
    for name, fn in steps:
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - recorded, and the next part still runs
            import traceback

            traceback.print_exc()
            result[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"[eval_gpu] {name}: {json.dumps(result[name])}", flush=True)
        save_result(path, result, t0)
    if "error" not in result["model_class"] and "error" not in result["in_training"]:
        result["recipe_estimate"] = recipe_estimate(result["model_class"], result["in_training"])
        print(f"[eval_gpu] recipe_estimate: {json.dumps(result['recipe_estimate'])}")
    save_result(path, result, t0)
    a = result["model_class"]
    if "error" not in a:
        print(f"model class: {a['samples_per_s']} samples/s, {a['generated_tokens_per_s']} "
              f"generated tokens/s at batch {a['batch_size']}, {a['max_new_tokens']} new tokens "
              f"(worst case: every sample to the budget: {a['every_sample_ran_to_budget']}); "
              f"peak {a['peak_mem_gib']} GiB")
    print(f"wrote {path}")
    return result


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (mode 1: the CLI, 1 vs N processes)")
    p.add_argument("--gpu", action="store_true", help="mode 2: the 3B architecture on the GPU")
    p.add_argument("--dry-run", action="store_true", help="--gpu's code on the CPU, tiny")
    p.add_argument("--task", default=LOCAL_TASK)
    p.add_argument("--limit", type=int, default=None,
                   help="mode 1: samples (default 160); --gpu: b's samples (default 8)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16; --gpu: 8")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 64; --gpu: 1024")
    p.add_argument("--batches", type=int, default=2, help="--gpu: a's timed batches")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.gpu or args.dry_run:
        args.limit = args.limit or 8
        args.batch_size = args.batch_size or 8
        args.max_new_tokens = args.max_new_tokens or 1024
        return gpu_mode(args, argv)
    if not args.model:
        p.error("--model CKPT (mode 1), or --gpu / --dry-run (mode 2)")
    args.limit, args.batch_size = args.limit or 160, args.batch_size or 16
    args.max_new_tokens = args.max_new_tokens or 64
    cli_mode(args)
    return None


if __name__ == "__main__":
    main()
