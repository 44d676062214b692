"""GPU variant of bench/objectives.py: chunked DFT vs TRL's and LLaMA-Factory's full-logits DFT,
bf16 inputs, one CUDA device, a few minutes on one H100.

    python bench/objectives_gpu.py [--shapes 3b,7b] [--tokens 2048,8192,16384] [--reps 5]
                                   [--methods chunked,chunked_rb128,chunked_c4096,naive,trl,...]
                                   [--out runs/bench/objectives_gpu.json]
    python bench/objectives_gpu.py --dry-run        # tiny shapes on the CPU (what CI runs)

Per (shape, tokens, method): forward + backward time (median of ``--reps`` after one warm-up,
CUDA-synchronised) and peak extra memory = ``torch.cuda.max_memory_allocated`` during the call
minus the memory held before it (inputs, weight and their gradient buffers, allocated up front
so they count for nobody). Out-of-memory is reported as such (the longest N that fits is the
interesting figure for the full-logits paths). Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_out, write_json  # noqa: E402
from gpu_train import spec_of  # noqa: E402
from objectives import LOSSES, SHAPES, VOCAB  # noqa: E402

import vldft.objectives as vobj  # noqa: E402


def _vldft(method: str):
    """vldft's compute_objective for one of gpu_train's methods (``spec_of``: the spec, and the
    CUDA row block set for it), the row block put back to the default afterwards."""
    def loss(hidden, weight, labels):
        try:
            out = vobj.compute_objective(hidden, weight, labels, spec_of(method))
        finally:
            vobj.CUDA_ROW_BLOCK = 0
        return out.loss_sum / max(out.n_tokens, 1)
    return loss


# chunked: the default (whole-chunk blocks on CUDA); chunked_rb128: 128-row blocks (the CPU
# setting, and the CUDA one before 2026-11-30); chunked_c4096: 4,096-row chunks; naive: vldft's
# full-logits reference; trl / llamafactory: their full-logits DFT (bench/objectives.py)
GPU_LOSSES = {**{m: _vldft(m) for m in ("chunked", "chunked_rb128", "chunked_c4096", "naive")},
              "trl": LOSSES["trl"], "llamafactory": LOSSES["llamafactory"]}


def measure(method: str, hidden_size: int, vocab: int, n: int, reps: int, device: str,
            dtype: torch.dtype) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, n + 1, hidden_size, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5)
    weight = weight.to(device, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, n + 1), generator=g).to(device)
    labels[0, 0] = -100
    hidden.grad, weight.grad = torch.zeros_like(hidden), torch.zeros_like(weight)
    cuda = device.startswith("cuda")
    times, peak, loss = [], 0, None
    try:
        for k in range(reps + 1):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() if cuda else 0
            t0 = time.perf_counter()
            out = GPU_LOSSES[method](hidden, weight, labels)
            out.backward()
            if cuda:
                torch.cuda.synchronize()
                peak = max(peak, torch.cuda.max_memory_allocated() - before)
            if k:  # the first call is a warm-up
                times.append(time.perf_counter() - t0)
            loss = float(out.detach())
            del out
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    return {"time_s": statistics.median(times), "peak_extra_gib": peak / 2**30, "loss": loss}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="3b,7b")
    ap.add_argument("--tokens", default="2048,8192,16384")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--methods", default=",".join(GPU_LOSSES), help="of: " + ",".join(GPU_LOSSES))
    ap.add_argument("--out", default=default_out("objectives_gpu.json"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(GPU_LOSSES))
    if unknown:
        ap.error(f"unknown --methods {unknown}; choose from {','.join(GPU_LOSSES)}")
    if args.dry_run:
        device, dtype, vocab, shapes, tokens, reps = "cpu", torch.float32, 512, ["tiny"], [64], 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run, or on a GPU machine")
        device, dtype, vocab, reps = "cuda", torch.bfloat16, VOCAB, args.reps
        shapes, tokens = args.shapes.split(","), [int(x) for x in args.tokens.split(",")]
    rows = []
    for shape in shapes:
        for n in tokens:
            for method in args.methods.split(","):
                row = {"shape": shape, "tokens": n, "method": method,
                       **measure(method, SHAPES[shape], vocab, n, reps, device, dtype)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "dtype": str(dtype), "date": time.strftime("%Y-%m-%d")}
    write_json(args.out, {"meta": meta, "rows": rows})
    print(f"\n{meta}\n")
    print("| shape | N | method | time (ms) | peak extra (GiB) |\n|---|---|---|---|---|")
    for r in rows:
        t = f"{r['time_s'] * 1e3:.1f}" if "time_s" in r else r["error"]
        m = f"{r['peak_extra_gib']:.2f}" if "peak_extra_gib" in r else "-"
        print(f"| {r['shape']} | {r['tokens']} | {r['method']} | {t} | {m} |")
    return rows


if __name__ == "__main__":
    main()
