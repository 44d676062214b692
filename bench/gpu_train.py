"""GPU training-step benchmark: Qwen2.5-VL-3B architecture, chunked DFT vs naive full-logits DFT.

    bash bench/gpu.sh                                   # on the GPU machine (results under $OUT)
    python bench/gpu_train.py [--seq-lens 2048,4096,8192] [--methods chunked,chunked_rb128,naive]
                              [--steps 3] [--warmup 1] [--search-max 131072] [--no-search]
                              [--out DIR]
    python bench/gpu_train.py --dry-run                 # tiny config on the CPU, seconds (CI)

Nothing is downloaded: the model is Qwen2.5-VL-3B-Instruct's architecture (36 x 2048 text
decoder, GQA 16 / 2 heads, MLP 11008, tied 151,936-row embedding, 32-layer ViT with 1280 width)
built from a config with random weights, in bf16 (weights, gradients and AdamW states), ``sdpa``
attention, on one CUDA device. Only torch, transformers and ``vldft.objectives`` are imported.

A sample is one sequence of exactly L tokens: 8 prompt tokens, one 448 x 448 image (32 x 32
patches of 14 px -> 1,024 patches -> 256 ``<|image_pad|>`` tokens after the 2 x 2 merger, between
``<|vision_start|>`` / ``<|vision_end|>``), 56 more prompt tokens, then a response that fills the
rest; the response tokens (L - 322) are the targets. Token ids and pixel values are random (the
cost of a step does not depend on them). Batch size 1, no padding.

One optimizer step = what ``vldft.step.ObjectiveModule.forward`` + ``accumulate_gradients`` do
for one micro-batch on one process: backbone forward to the final hidden states, then
``vldft.objectives.compute_objective`` (DFT; ``implementation`` = ``chunked``: fused lm_head +
loss in chunks of 1,024 target rows, or ``naive``: full [targets, vocab] logits + log_softmax),
backward of loss_sum / n_targets, gradient clipping at 1.0, AdamW step.

Reported per (method, L): median step time of ``--steps`` after ``--warmup``, tokens/s, model
FLOPs utilisation, peak GPU memory (``torch.cuda.max_memory_allocated`` over the timed steps:
weights, gradients, optimizer states and activations). Then, with gradient checkpointing on
(so that the loss, not the activations, decides), the longest L that trains for each method:
doubling from the largest ``--seq-lens`` up to ``--search-max``, then bisection to
``--search-step`` tokens; out-of-memory is caught.

MFU = model FLOPs per step / step time / peak, both from ``common`` (``qwen_flop_terms``,
``PEAK_TFLOPS``): ``6 * N_text * L`` (N_text: decoder parameters without the embedding)
``+ 6 * L_layers * L^2 * d`` (causal attention scores and values, d = heads x head_dim = 2048:
half of PaLM's 12 L T^2 d) ``+ 6 * N_vision * patches`` (patch embedding and blocks; their
attention, < 0.1 %, is left out) ``+ 6 * N_merger * patches / 4`` (the merger, on merged
tokens) ``+ 6 * V * H * n_targets`` (lm_head over the target rows, all the objective needs).
Gradient-checkpointing recomputation is not counted. Peak: 989 TFLOP/s dense bf16 for an H100
SXM / H200 (756 for an H100 PCIe), chosen from the device name. (Runs before 2026-12-07 counted
the merger per patch, 4x its share: under 1 % of a step's FLOPs.)
"""

from __future__ import annotations

import argparse
import inspect
import json
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
    markdown_table,
    mfu,
    oom_guard,
    peak_mem_gib,
    pick_device,
    profiled,
    qwen_flop_terms,
    reset_peak,
    run_header,
    save_result,
    sync,
    to_device,
)
from qwen import (  # noqa: E402
    build_qwen25vl,
    qwen25vl_3b_config,
    qwen25vl_small_config,
    random_sample,
)

import vldft.objectives as vobj  # noqa: E402
from vldft.objectives import ObjectiveSpec, compute_objective  # noqa: E402

METHODS = ("chunked", "chunked_rb128", "chunked_c2048", "chunked_c4096", "naive")


def spec_of(method: str) -> ObjectiveSpec:
    """The DFT spec of ``method``: ``chunked`` (the default chunk, one block per chunk on CUDA),
    ``chunked_rb128`` (128-row blocks on CUDA: the setting before 2026-11-30),
    ``chunked_c2048`` / ``chunked_c4096`` (chunks of 2,048 / 4,096 target rows) or ``naive``.
    Sets the module's CUDA row block, so call it before each measurement."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {','.join(METHODS)}")
    vobj.CUDA_ROW_BLOCK = 128 if method == "chunked_rb128" else 0
    if method == "naive":
        return ObjectiveSpec(name="dft", implementation="naive")
    chunk = int(method[len("chunked_c"):]) if method.startswith("chunked_c") else 1024
    return ObjectiveSpec(name="dft", implementation="chunked", chunk_size=chunk)

PROMPT_BEFORE, PROMPT_AFTER = 8, 56  # text tokens before / after the image block


class FakeOOM(torch.OutOfMemoryError):
    """Raised by ``--fake-oom-above`` (CPU dry run: exercises the out-of-memory search)."""


# ----------------------------------------------------------------------------- model and data
def build_model(dry_run: bool, device: str, dtype: torch.dtype):
    """The 3B architecture (the dry run: ``qwen.qwen25vl_small_config``) in training mode."""
    config = qwen25vl_small_config() if dry_run else qwen25vl_3b_config()
    model = build_qwen25vl(config, device, dtype)
    model.config.use_cache = False
    return model.train()


def make_batch(model, length: int, image_side: int, device: str, dtype: torch.dtype) -> dict:
    """One sample of exactly ``length`` tokens with one image; labels on the response."""
    vc = model.config.vision_config
    grid = image_side // vc.patch_size  # patches per side
    n_image = grid * grid // vc.spatial_merge_size**2
    prompt = PROMPT_BEFORE + 1 + n_image + 1 + PROMPT_AFTER
    if length <= prompt + 1:
        raise ValueError(f"length {length} leaves no response tokens (prompt {prompt})")
    g = torch.Generator().manual_seed(length)
    s = random_sample(model.config, prompt, length - prompt, (grid, grid), g, at=PROMPT_BEFORE,
                      id_hi=model.config.text_config.pad_token_id)
    # no attention_mask (one unpadded sequence): sdpa then runs causal without a [T, T] mask
    batch = {"input_ids": s["input_ids"][None], "labels": s["labels"][None],
             "pixel_values": s["pixel_values"], "image_grid_thw": s["image_grid_thw"]}
    if "mm_token_type_ids" in inspect.signature(model.model.forward).parameters:
        batch["mm_token_type_ids"] = s["mm_token_type_ids"]  # transformers >= 5.2x: mRoPE
    return to_device(batch, device, dtype)


def flop_terms(model, length: int, n_targets: int, patches: int) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward), by term: ``common.qwen_flop_terms``
    for one sample of ``length`` tokens, everything trained."""
    return qwen_flop_terms(model, [length], patches, n_targets)


def model_flops(model, length: int, n_targets: int, patches: int) -> float:
    return flop_terms(model, length, n_targets, patches)["total"]


# ----------------------------------------------------------------------------- one step
def train_step(model, optimizer, batch: dict, spec: ObjectiveSpec, fake_oom: int = 0,
               phases: dict | None = None) -> float:
    """ObjectiveModule.forward + accumulate_gradients for one micro-batch, then the update.

    With ``phases`` (a dict), the device is synchronised after each phase and its seconds are
    stored under "forward" (vision + decoder to the final hidden states), "loss", "backward",
    "clip" and "optimizer" (step + zero_grad): the profile mode, not the timed runs.
    """
    if fake_oom and batch["input_ids"].shape[1] > fake_oom:
        raise FakeOOM(f"simulated out of memory above {fake_oom} tokens")
    dev = batch["input_ids"].device.type
    last = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal last
        if phases is not None:
            sync(dev)
            now = time.perf_counter()
            phases[name], last = now - last, now

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    mark("forward")
    head = model.get_output_embeddings()
    out = compute_objective(hidden, head.weight, batch["labels"], spec, bias=head.bias)
    mark("loss")
    (out.loss_sum / max(out.n_tokens, 1)).backward()
    mark("backward")
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    mark("clip")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark("optimizer")
    return float(out.loss_sum.detach()) / max(out.n_tokens, 1)


def profile(model, optimizer, method: str, length: int, args, device: str, dtype,
            out: Path) -> dict:
    """Seconds per phase (median of --steps, device synchronised between phases) and the
    top operators of one step (torch.profiler; by device time on a GPU, by self CPU time on the
    CPU, where inclusive time ranks wrappers first and the matrix products can fall out of the
    top 30) -> profile_<method>_<L>.txt."""
    spec = spec_of(method)
    batch = make_batch(model, length, args.image_side, device, dtype)
    for _ in range(args.warmup):
        train_step(model, optimizer, batch, spec)
    runs = []
    for _ in range(args.steps):
        ph: dict = {}
        train_step(model, optimizer, batch, spec, phases=ph)
        runs.append(ph)
    phases = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
    prof = profiled(lambda b=batch: train_step(model, optimizer, b, spec), device)
    sort = "cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)
    (out / f"profile_{method}_{length}.txt").write_text(table)
    print(table, flush=True)
    del batch
    free(device)
    return {"method": method, "seq_len": length, "phases_s": phases,
            "step_s": round(sum(phases.values()), 4)}


def measure(model, optimizer, method: str, length: int, args, device: str, dtype) -> dict:
    """Median step time and peak memory of ``method`` at ``length``; OOM reported as such."""
    spec = spec_of(method)
    batch = make_batch(model, length, args.image_side, device, dtype)
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    patches = int(batch["image_grid_thw"].prod())
    row = {"method": method, "seq_len": length, "targets": n_targets}

    def steps() -> list[float]:
        times = []
        for k in range(args.warmup + args.steps):
            if k == args.warmup:
                reset_peak(device)
            with Stopwatch(device) as clock:
                row["loss"] = train_step(model, optimizer, batch, spec, args.fake_oom_above)
            if k >= args.warmup:
                times.append(clock.wall)
        return times

    times, oom = oom_guard(steps)
    if oom is not None:
        optimizer.zero_grad(set_to_none=True)
        batch = None  # (the closure above holds it too)
        free(device)
        return {**row, "error": "out of memory", "detail": oom}
    step = statistics.median(times)
    flops = model_flops(model, length, n_targets, patches)
    row.update(step_s=round(step, 4), tokens_per_s=round(length / step, 1),
               tflops_per_s=round(flops / step / 1e12, 1),
               mfu=mfu(flops, step, args.peak_tflops, digits=None),
               model_flop_per_step=flops, flop_terms=flop_terms(model, length, n_targets, patches))
    if device.startswith("cuda"):
        row["peak_mem_gib"] = peak_mem_gib(device)
    batch = None  # (the closure above holds it too)
    free(device)
    return row


def longest_fit(model, optimizer, method: str, args, device: str, dtype, start: int) -> dict:
    """Largest L (multiple of --search-step) that trains one step, and the probes made."""
    probe_args = argparse.Namespace(**{**vars(args), "warmup": 0, "steps": 1})
    probes, fits, fails = [], start, None

    def ok(length: int) -> bool:
        r = measure(model, optimizer, method, length, probe_args, device, dtype)
        probes.append({"seq_len": length, "fits": "error" not in r,
                       **({"peak_mem_gib": r["peak_mem_gib"]} if "peak_mem_gib" in r else {})})
        print(f"[gpu] search {method} L={length}: {'fits' if 'error' not in r else 'OOM'}",
              flush=True)
        return "error" not in r

    if not ok(start):
        fits, fails = 0, start
    length = start
    while fails is None and length * 2 <= args.search_max:
        length *= 2
        if ok(length):
            fits = length
        else:
            fails = length
    if fails is not None and fits:
        while fails - fits > args.search_step:
            mid = (fits + fails) // 2 // args.search_step * args.search_step
            if mid in (fits, fails):
                break
            if ok(mid):
                fits = mid
            else:
                fails = mid
    return {"method": method, "longest_fit": fits, "first_oom": fails,
            "capped": fails is None, "probes": probes}


# ----------------------------------------------------------------------------- main
def markdown(result: dict) -> str:
    m = result["machine"]
    a = result["args"]
    opts = [o for o, on in (("fused AdamW", a.get("fused_adamw")),
                            ("gradient checkpointing", a.get("gradient_checkpointing"))) if on]
    lines = [f"- {m['date']}; {m['device']}; torch {m['torch']}, transformers "
             f"{m.get('transformers')}; peak "
             f"{result['peak_tflops'] or 'n/a (no MFU)'} TFLOP/s bf16 dense; "
             f"{', '.join(opts) or 'default AdamW (foreach), no checkpointing'}",
             f"- command: `{result['command']}` ({result['wall_s']:.0f} s)",
             "", markdown_table(
                 ["method", "L", "targets", "step (ms)", "tokens/s", "TFLOP/s", "MFU",
                  "peak mem (GiB)"], result["rows"],
                 lambda r: [r["method"], str(r["seq_len"]), str(r["targets"]),
                            *(["out of memory", "-", "-", "-", "-"] if "error" in r else [
                                f"{r['step_s'] * 1e3:.0f}", f"{r['tokens_per_s']:.0f}",
                                f"{r['tflops_per_s']:.1f}", fmt_mfu(r),
                                str(r.get("peak_mem_gib", "-"))])])]
    if result.get("profile"):
        names = list(result["profile"][0]["phases_s"])
        lines += ["", markdown_table(
            ["phase times (ms, synchronised)", "L", *names, "sum"], result["profile"],
            lambda p: [p["method"], p["seq_len"], *(f"{p['phases_s'][n] * 1e3:.0f}"
                                                    for n in names),
                       f"{p['step_s'] * 1e3:.0f}"])]
    if result["search"]:
        lines += ["", markdown_table(
            ["method (gradient checkpointing)", "longest L that trains", "first OOM"],
            result["search"], lambda s: [
                s["method"], f"{s['longest_fit']}{' (search cap)' if s['capped'] else ''}",
                s["first_oom"] or "-"])]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--seq-lens", default="2048,4096,8192")
    ap.add_argument("--methods", default="chunked,naive", help="of: " + ",".join(METHODS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--search-max", type=int, default=131072)
    ap.add_argument("--search-step", type=int, default=4096)
    ap.add_argument("--no-search", action="store_true", help="skip the longest-length search")
    ap.add_argument("--peak-tflops", type=float, default=None, help="default: from the device")
    ap.add_argument("--out", default=gpu_out(),
                    help="directory for gpu_train.json (default: $OUT, else runs/bench/gpu/)")
    ap.add_argument("--profile", default="",
                    help="comma-separated lengths: phase timings + operator table per method")
    ap.add_argument("--fused-adamw", action="store_true",
                    help="torch.optim.AdamW(fused=True) instead of the default (foreach)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="timed runs with activation checkpointing (recomputation not counted "
                         "in the model FLOPs, so MFU stays comparable)")
    ap.add_argument("--dry-run", action="store_true", help="tiny config on the CPU")
    ap.add_argument("--fake-oom-above", type=int, default=0,
                    help="dry run: pretend sequences longer than this run out of memory")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    device, dtype, args.peak_tflops = pick_device(args.dry_run, args.peak_tflops)
    if args.dry_run:
        args.seq_lens, args.steps, args.warmup, args.image_side = "160", 1, 0, 56
        args.search_max, args.search_step = 1280, 160
        args.fake_oom_above = args.fake_oom_above or 500
    seqs = [int(s) for s in args.seq_lens.split(",")]
    methods = args.methods.split(",")
    for m in methods:
        spec_of(m)  # unknown names fail before the model is built
    vobj.CUDA_ROW_BLOCK = 0
    model = build_model(args.dry_run, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[gpu] model {n_params / 1e9:.3f} B parameters, built in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    # bf16 parameters -> bf16 AdamW states (fp32 would need 45 GB more for 3B)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5,
                                  **({"fused": True} if args.fused_adamw else {}))
    result = {**run_header("gpu_train.py", argv, device, cpu_label="cpu (dry run)"),
              "dry_run": args.dry_run, "args": vars(args),
              "params": n_params, "peak_tflops": args.peak_tflops,
              "attn_implementation": model.config._attn_implementation, "rows": [], "search": [],
              "profile": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every measurement: a timeout keeps what was measured
        save_result(out / "gpu_train.json", result, t0)

    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    for length in [int(x) for x in args.profile.split(",") if x]:
        for method in methods:
            p = profile(model, optimizer, method, length, args, device, dtype, out)
            result["profile"].append(p)
            print(f"[gpu] {json.dumps(p)}", flush=True)
            save()
    for length in seqs:
        for method in methods:
            r = measure(model, optimizer, method, length, args, device, dtype)
            result["rows"].append(r)
            print(f"[gpu] {json.dumps(r)}", flush=True)
            save()
    if not args.no_search:
        if not args.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        for method in methods:
            s = longest_fit(model, optimizer, method, args, device, dtype, max(seqs))
            result["search"].append(s)
            print(f"[gpu] {json.dumps({k: v for k, v in s.items() if k != 'probes'})}",
                  flush=True)
            save()
    save()
    print("\n" + markdown(result), flush=True)
    return result


if __name__ == "__main__":
    main()
