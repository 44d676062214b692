"""CPU benchmark: chunked DFT (vldft) vs the full-logits DFT of TRL and LLaMA-Factory.

    python bench/objectives.py [--shapes 3b,7b] [--tokens 2048,8192,16384] [--reps 3]
                               [--out runs/bench/objectives.json] [--md FILE]
                               [--methods chunked,trl,llamafactory] [--max-gb 18]
                               [--dry-run] [--append]

For each shape (hidden 2048 = Qwen2.5-VL-3B, 3584 = 7B; vocab 151,936) and N target tokens it
measures forward + backward of the lm_head projection plus the DFT loss, fp32 on the CPU:

- ``chunked``: ``vldft.objectives.compute_objective`` (default ``chunk_size``).
- ``trl``: TRL's ``SFTTrainer`` with ``loss_type="dft"`` (``trl.trainer.sft_trainer.dft_loss``:
  full logits, ``selective_log_softmax``, ``-exp(logp).detach() * logp``, sum / count).
- ``llamafactory``: LLaMA-Factory's ``dft_loss_func`` / ``_dft_cross_entropy`` (``logits.float()``,
  per-token ``F.cross_entropy(reduction="none")`` times detached ``exp(-ce)``, sum / count).

Both references are re-written here from their published formulas (no trl / llamafactory import).
Every measurement runs in a fresh subprocess: wall time is the median over ``--reps``; peak extra
memory is the child's peak RSS (``ru_maxrss``) minus that of a baseline child that only allocates
the inputs, the weight and gradients of their size. A configuration whose full-logits path is
estimated above ``--max-gb`` is skipped and reported as such. ``--dry-run`` runs a tiny shape in
about a second (used by tests/test_bench_objectives.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import (
    ChildFailed,
    child_result,
    command_line,
    default_out,
    machine_info,
    markdown_table,
    peak_rss_kib,
    run_child,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936
SHAPES = {"3b": 2048, "7b": 3584, "tiny": 64}  # hidden size per model
METHODS = ("chunked", "trl", "llamafactory")
# peak extra memory of the full-logits paths ~= FACTOR x one fp32 [N+1, V] tensor (measured at
# N = 4096, hidden 256: trl 3.95, llamafactory 2.94); used to skip runs that would not fit
NAIVE_FACTOR = {"trl": 4.0, "llamafactory": 3.0}


# ----------------------------------------------------------------------------- the three losses
def loss_chunked(hidden, weight, labels):
    from vldft.objectives import compute_objective

    out = compute_objective(hidden, weight, labels, "dft")
    return out.loss_sum / max(out.n_tokens, 1)


def loss_trl(hidden, weight, labels):
    """TRL ``dft_loss`` (trl/trainer/sft_trainer.py, loss_type="dft"), same formula."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight)  # the model's lm_head: [B, T, V] for every position
    labels = F.pad(labels, (0, 1), value=-100)
    shift_labels = labels[..., 1:].clone()
    loss_mask = shift_labels != -100
    shift_labels[~loss_mask] = 0
    # selective_log_softmax, fp32 branch: gather, then a per-sequence logsumexp loop
    selected = torch.gather(logits, -1, shift_labels.unsqueeze(-1)).squeeze(-1)
    lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    logprobs = selected - lse
    per_token_loss = -logprobs.exp().detach() * logprobs
    return (per_token_loss * loss_mask).sum() / loss_mask.sum()


def loss_llamafactory(hidden, weight, labels):
    """LLaMA-Factory ``dft_loss_func`` + ``_dft_cross_entropy``, same formula."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight)
    logits = logits.float()  # LF upcasts: an extra fp32 copy for bf16 models (a no-op in fp32)
    vocab = logits.size(-1)
    labels = F.pad(labels, (0, 1), value=-100)
    shift_labels = labels[..., 1:].contiguous().view(-1)
    logits = logits.view(-1, vocab)
    per_token = F.cross_entropy(logits, shift_labels, ignore_index=-100, reduction="none")
    valid = shift_labels != -100
    valid_losses = per_token[valid]
    with torch.no_grad():
        target_probs = torch.exp(-valid_losses)
    return (valid_losses * target_probs).sum() / valid.sum()


LOSSES = {"chunked": loss_chunked, "trl": loss_trl, "llamafactory": loss_llamafactory}


# ----------------------------------------------------------------------------- child process
def child(method: str, hidden_size: int, vocab: int, n: int) -> dict:
    """Runs in a fresh process: one forward + backward; returns its time and peak RSS (kB)."""
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, n + 1, hidden_size, generator=g).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5).requires_grad_()
    labels = torch.randint(0, vocab, (1, n + 1), generator=g)
    labels[0, 0] = -100  # N = n target tokens after the shift
    out = {"time_s": None, "loss": None}
    if method == "baseline":  # the inputs plus gradients of their size, nothing else
        grads = [torch.randn_like(hidden), torch.randn_like(weight)]
        del grads
    else:
        t0 = time.perf_counter()
        loss = LOSSES[method](hidden, weight, labels)
        loss.backward()
        out = {"time_s": time.perf_counter() - t0, "loss": loss.item()}
    return {**out, "maxrss_kb": peak_rss_kib()}


def measure(method: str, hidden_size: int, vocab: int, n: int) -> dict:
    """``child`` in a fresh process (``common.run_child``); a failure as ``{"error": ...}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, str(hidden_size),
           str(vocab), str(n)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        out = run_child(cmd, env, tail=500)
    except ChildFailed as e:
        return {"error": str(e)}
    out.pop("wall_s")
    return out


# ----------------------------------------------------------------------------- driver
def benchmark(shapes: list[str], tokens: list[int], reps: int, vocab: int, max_gb: float,
              methods: tuple[str, ...] = METHODS) -> list[dict]:
    """Reps are interleaved across methods (one fresh child per method and rep), so a change of
    background load hits all methods alike; peak memory is the max over a method's children."""
    rows = []
    for shape in shapes:
        hsz = SHAPES[shape]
        for n in tokens:
            base = measure("baseline", hsz, vocab, n)
            res: dict[str, list[dict]] = {}
            skip = {m: est for m in methods
                    if (est := NAIVE_FACTOR.get(m, 0) * (n + 1) * vocab * 4 / 2**30) > max_gb}
            for _ in range(reps):
                for method in methods:
                    if method not in skip:
                        res.setdefault(method, []).append(measure(method, hsz, vocab, n))
            for method in methods:
                row = {"shape": shape, "hidden": hsz, "vocab": vocab, "tokens": n,
                       "method": method, "reps": reps}
                errors = [r["error"] for r in [base, *res.get(method, [])] if "error" in r]
                if method in skip:
                    row["skipped"] = f"would need ~{skip[method]:.0f} GiB"
                elif errors:
                    row["error"] = errors[0]
                else:
                    times = [r["time_s"] for r in res[method]]
                    peak = max(r["maxrss_kb"] for r in res[method])
                    row.update(time_s=statistics.median(times), times_s=times,
                               loss=res[method][0]["loss"],
                               peak_extra_gib=(peak - base["maxrss_kb"]) / 2**20)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """chunked / naive time and memory ratios per (shape, tokens, naive method)."""
    out = []
    for r in rows:
        if r["method"] == "chunked" or "time_s" not in r:
            continue
        c = next((x for x in rows if x["method"] == "chunked" and x["shape"] == r["shape"]
                  and x["tokens"] == r["tokens"] and "time_s" in x), None)
        if c:
            out.append({"shape": r["shape"], "tokens": r["tokens"], "vs": r["method"],
                        "time_ratio": c["time_s"] / r["time_s"],
                        "mem_ratio": c["peak_extra_gib"] / max(r["peak_extra_gib"], 1e-9)})
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Objective benchmark: chunked DFT vs full-logits DFT (CPU, fp32)", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; torch "
             f"{m['torch']} ({m['torch_threads']} threads); Python {m['python']}"]
    for run in result["runs"]:
        lines.append(f"- `{run['command']}`, finished {run['date']} (load average before "
                     f"{run['load_before']}, after {run['load_after']})")
    order = {m: i for i, m in enumerate(METHODS)}
    rows = sorted(result["rows"], key=lambda r: (r["shape"], r["tokens"], order[r["method"]]))
    lines += ["", markdown_table(
        ["shape", "hidden", "N tokens", "method", "time (s, median)", "reps", "peak extra (GiB)"],
        rows, lambda r: [r["shape"], r["hidden"], r["tokens"], r["method"], *(
            [f"{r['time_s']:.3g}", r["reps"], f"{r['peak_extra_gib']:.2f}"] if "time_s" in r
            else [r.get("skipped") or r.get("error", "?"), r["reps"], "-"])]),
        "", markdown_table(
            ["shape", "N tokens", "chunked /", "time ratio", "memory ratio"], result["ratios"],
            lambda q: [q["shape"], q["tokens"], q["vs"], f"{q['time_ratio']:.2f}",
                       f"{q['mem_ratio']:.3f}"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--shapes", default="3b,7b")
    ap.add_argument("--tokens", default="2048,8192,16384")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=default_out("objectives.json"))
    ap.add_argument("--md", default=None, help="also write the markdown tables to this file "
                    "(they are always printed; bench/RESULTS.md is curated by hand)")
    ap.add_argument("--max-gb", type=float, default=18.0,
                    help="skip a full-logits run estimated above this many GiB")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--append", action="store_true",
                    help="merge into --out (rows of other shape/tokens/method are kept)")
    args = ap.parse_args(argv)
    shapes, tokens = args.shapes.split(","), [int(t) for t in args.tokens.split(",")]
    vocab = VOCAB
    if args.dry_run:
        shapes, tokens, vocab, args.reps = ["tiny"], [48], 1000, 1
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    methods = tuple(m for m in METHODS if m in args.methods.split(","))
    rows = benchmark(shapes, tokens, args.reps, vocab, args.max_gb, methods)
    run = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": command_line("objectives.py", argv),
           "load_before": load_before,
           "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    runs = []
    if args.append and Path(args.out).exists():  # keep earlier rows of other configurations
        old = json.loads(Path(args.out).read_text())
        done = {(r["shape"], r["tokens"], r["method"]) for r in rows}
        rows = [r for r in old["rows"] if (r["shape"], r["tokens"], r["method"]) not in done] + rows
        runs = old["runs"]
    result = {"machine": machine_info(), "dry_run": args.dry_run, "runs": [*runs, run],
              "rows": rows, "ratios": ratios(rows)}
    write_json(args.out, result)
    report = markdown(result)
    print(report)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(report)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, hsz, vocab, n = sys.argv[2], *map(int, sys.argv[3:6])
        child_result(child(method, hsz, vocab, n))
    else:
        main()
