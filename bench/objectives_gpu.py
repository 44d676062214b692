"""GPU variant of bench/objectives.py: chunked DFT vs TRL's and LLaMA-Factory's full-logits DFT
and Liger-Kernel's fused linear cross-entropy with DFT token scaling, bf16 inputs, one CUDA
device, a few minutes on one H100.

    python bench/objectives_gpu.py [--shapes 3b,7b] [--tokens 2048,8192,16384] [--reps 5]
                                   [--methods chunked,chunked_rb128,chunked_c4096,naive,liger,...]
                                   [--out runs/bench/objectives_gpu.json]
    python bench/objectives_gpu.py --dry-run        # tiny shapes on the CPU (what CI runs)

``liger``: ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy`` with
``use_token_scaling=True`` (each target's cross-entropy times its detached probability: DFT) and
``reduction="mean"`` over the targets, on the same hidden states, lm_head weight and shifted
labels as vldft's head: what TRL's strongest DFT set-up would use if it let Liger fuse its head.
Before it is timed, on CUDA only, its loss and gradients are checked against vldft's chunked DFT
(``vldft.objectives``) on the same inputs (``liger_check`` in the JSON: relative difference of
the loss, relative L2 of the hidden and weight gradients, the bf16 tolerances used). Liger's
kernels are Triton GPU kernels: on the CPU (dry run) its rows say so instead of a time, unless
``TRITON_INTERPRET=1`` is set, which runs them (slowly) in Triton's CPU interpreter, check
included (tests/test_bench_gpu.py does).

Per (shape, tokens, method): forward + backward time (median of ``--reps`` after one warm-up,
CUDA-synchronised) and peak extra memory = ``torch.cuda.max_memory_allocated`` during the call
minus the memory held before it (inputs, weight and their gradient buffers, allocated up front
so they count for nobody). Out-of-memory is reported as such (the longest N that fits is the
interesting figure for the full-logits paths). Writes JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
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
def _liger(hidden, weight, labels):
    """Liger's fused linear cross-entropy with DFT token scaling, mean over the targets (vldft's
    loss_sum / n_targets): hidden [1, n + 1, H] predicts labels shifted by one, as vldft's."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden[0, :-1], weight, labels[0, 1:],
                                            use_token_scaling=True, reduction="mean")


GPU_LOSSES = {**{m: _vldft(m) for m in ("chunked", "chunked_rb128", "chunked_c4096", "naive")},
              "trl": LOSSES["trl"], "llamafactory": LOSSES["llamafactory"], "liger": _liger}
LOSS_RTOL, GRAD_RTOL = 1e-2, 3e-2  # bf16 inputs: relative loss difference, relative L2 of grads


def liger_unavailable(device: str) -> str | None:
    """Why the ``liger`` rows cannot run here, or None."""
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except ImportError as e:
        return f"not run: liger_kernel is not importable ({e})"
    if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        return ("not run: Liger's Triton kernels need a CUDA device (on the CPU: TRITON_INTERPRET=1"
                " runs them in Triton's interpreter)")
    return None


def inputs(hidden_size: int, vocab: int, n: int, device: str, dtype: torch.dtype):
    """The seeded hidden states [1, n + 1, H], lm_head weight [V, H] and labels [1, n + 1]."""
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, n + 1, hidden_size, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5)
    weight = weight.to(device, dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, n + 1), generator=g).to(device)
    labels[0, 0] = -100
    return hidden, weight, labels


def liger_check(shape: str, hidden_size: int, vocab: int, n: int, device: str,
                dtype: torch.dtype) -> dict:
    """Liger's DFT head vs vldft's chunked DFT on the same inputs (CUDA only): loss and
    gradients of the hidden states and the weight."""
    why = liger_unavailable(device)
    if why:
        return {"shape": shape, "tokens": n, "checked": False, "why": why}
    res = {}
    for method in ("chunked", "liger"):
        hidden, weight, labels = inputs(hidden_size, vocab, n, device, dtype)
        loss = GPU_LOSSES[method](hidden, weight, labels)
        loss.backward()
        res[method] = (float(loss.detach()), hidden.grad.float(), weight.grad.float())

    def rel_l2(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    (lv, hv, wv), (ll, hl, wl) = res["chunked"], res["liger"]
    out = {"shape": shape, "tokens": n, "checked": True, "dtype": str(dtype),
           "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
           "loss_vldft_chunked": lv, "loss_liger": ll,
           "loss_rel_diff": abs(ll - lv) / max(abs(lv), 1e-30),
           "grad_hidden_rel_l2": rel_l2(hl, hv), "grad_weight_rel_l2": rel_l2(wl, wv),
           "loss_rtol": LOSS_RTOL, "grad_rtol": GRAD_RTOL}
    out["equal_within_tolerance"] = (out["loss_rel_diff"] <= LOSS_RTOL
                                     and out["grad_hidden_rel_l2"] <= GRAD_RTOL
                                     and out["grad_weight_rel_l2"] <= GRAD_RTOL)
    return out


def measure(method: str, hidden_size: int, vocab: int, n: int, reps: int, device: str,
            dtype: torch.dtype) -> dict:
    if method == "liger" and liger_unavailable(device):
        return {"error": liger_unavailable(device)}
    hidden, weight, labels = inputs(hidden_size, vocab, n, device, dtype)
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
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--shapes", default="3b,7b")
    ap.add_argument("--tokens", default="2048,8192,16384")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--methods", default=",".join(m for m in GPU_LOSSES if m != "liger"),
                    help="of: " + ",".join(GPU_LOSSES) + " (default: all but liger, which needs "
                    "liger-kernel and CUDA)")
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
    rows, checks = [], []
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "dtype": str(dtype), "date": time.strftime("%Y-%m-%d")}
    if "liger" in args.methods.split(","):  # checked before it is timed, at the first N
        for shape in shapes:
            checks.append(liger_check(shape, SHAPES[shape], vocab, tokens[0], device, dtype))
            print(f"liger_check: {json.dumps(checks[-1])}", flush=True)
            write_json(args.out, {"meta": meta, "liger_check": checks, "rows": rows})
    for shape in shapes:
        for n in tokens:
            for method in args.methods.split(","):
                row = {"shape": shape, "tokens": n, "method": method,
                       **measure(method, SHAPES[shape], vocab, n, reps, device, dtype)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_json(args.out, {"meta": meta, "liger_check": checks, "rows": rows})
    print(f"\n{meta}\n")
    print("| shape | N | method | time (ms) | peak extra (GiB) |\n|---|---|---|---|---|")
    for r in rows:
        t = f"{r['time_s'] * 1e3:.1f}" if "time_s" in r else r["error"]
        m = f"{r['peak_extra_gib']:.2f}" if "peak_extra_gib" in r else "-"
        print(f"| {r['shape']} | {r['tokens']} | {r['method']} | {t} | {m} |")
    return rows


if __name__ == "__main__":
    main()
