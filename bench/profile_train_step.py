"""Where the time of one training step goes: vldft vs TRL (torch.profiler, CPU, fp32).

    python bench/profile_train_step.py [--seq-len 2048] [--hidden 256] [--layers 4]

Same model, data and settings as ``bench/train_vs_trl.py`` (``bench/pair_setup.py``). For each
framework: one warm-up optimizer step, then one profiled step (for TRL, a real
``SFTTrainer.train()`` step, the profiler started and stopped by a callback). Prints the step's
CPU time split into the loss head (vldft: ``_ChunkedObjective`` forward + backward; TRL:
``ChunkedLogProbFunction`` forward + backward), the optimizer step and the rest (backbone
forward / backward, clipping), and the top operators. Writes JSON next to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    default_out,
    machine_info,
    markdown_table,
    require_module,
    write_json,
)
from pair_setup import (  # noqa: E402
    build_batches,
    build_model_dir,
    load_saved,
    trl_trainer,
    vldft_setup,
)
from vldft_step import optimizer_step  # noqa: E402

HEAD = {"vldft": ("_ChunkedObjective", "_ChunkedObjectiveBackward"),
        "trl": ("ChunkedLogProbFunction", "ChunkedLogProbFunctionBackward")}


def split(prof, framework: str, wall: float) -> dict:
    events = prof.key_averages()
    by_key = {e.key: e for e in events}
    head = sum(by_key[k].cpu_time_total for k in HEAD[framework] if k in by_key) / 1e6
    opt = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step")) / 1e6
    top = sorted((e for e in events if not e.key.startswith(("Optimizer", "autograd::",
                                                               "ProfilerStep"))),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"step_s": round(wall, 2), "loss_head_s": round(head, 2),
            "optimizer_s": round(opt, 2), "rest_s": round(wall - head - opt, 2),
            "top_self_ops": [{"op": e.key, "calls": e.count,
                              "self_s": round(e.self_cpu_time_total / 1e6, 2)} for e in top]}


def profile_vldft(a: dict, batches: list[dict]) -> dict:
    _adapter, module, optimizer, accelerator, cfg = vldft_setup(a["model_dir"], a)
    spec = cfg.loss.spec("dft")

    def step(micro):
        optimizer_step(module, optimizer, micro, spec, accelerator, 1.0)

    step(batches[:1])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step(batches[1:2])
        wall = time.perf_counter() - t0
    return split(prof, "vldft", wall)


def profile_trl(a: dict, batches: list[dict]) -> dict:
    from transformers import TrainerCallback

    prof = profile(activities=[ProfilerActivity.CPU])
    state = {}

    class Profiled(TrainerCallback):
        def on_step_begin(self, args, st, control, **kwargs):
            if st.global_step == 1:
                prof.start()
                state["t0"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kwargs):
            if "t0" in state and "wall" not in state:
                state["wall"] = time.perf_counter() - state["t0"]
                prof.stop()

    model, processor = load_saved(a["model_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        trl_trainer(model, processor, batches[:2], a, Path(tmp), 2, [Profiled()]).train()
    return split(prof, "trl", state["wall"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=0)
    ap.add_argument("--logit-scale", type=float, default=8.0)
    ap.add_argument("--out", default=default_out("profile_train_step.json"))
    args = ap.parse_args(argv)
    require_module("trl", 'pip install -e ".[bench]"')
    a = {"micro_bs": 1, "grad_accum": 1, "lr": 1e-5}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_model_dir(work / "model", args)
        info = build_batches(work / "model", args.seq_len, 2, 1, work / "b.pt")
        a["model_dir"] = str(work / "model")
        batches = torch.load(work / "b.pt", weights_only=False)["batches"]
        res = {"data": info, "vldft": profile_vldft(a, batches), "trl": profile_trl(a, batches)}
    res["machine"] = machine_info()
    write_json(args.out, res)
    print(markdown_table(
        ["framework", "step (s)", "loss head (s)", "optimizer (s)",
         "rest: backbone fwd/bwd, clipping (s)"], ("vldft", "trl"),
        lambda fw: [fw, res[fw]["step_s"], res[fw]["loss_head_s"], res[fw]["optimizer_s"],
                    res[fw]["rest_s"]]))
    for fw in ("vldft", "trl"):
        print(f"\n{fw} top operators (self CPU s): " + ", ".join(
            f"{o['op']} {o['self_s']} ({o['calls']})" for o in res[fw]["top_self_ops"]))
    return res


if __name__ == "__main__":
    main()
