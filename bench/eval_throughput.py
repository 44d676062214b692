"""Evaluation throughput: samples/s of ``python -m vldft.eval`` on 1 process and on N processes
(``torchrun``), side by side in one run, on the same checkpoint and documents; checks that both
write the same per-sample outputs. Prints a table and writes ``--out`` (JSON).

    python bench/eval_throughput.py --model runs/demo/final --limit 160 --procs 2

samples/s counts the evaluation itself (lmms-eval's ``simple_evaluate``: building requests,
generation, scoring, gathering; from ``results.json``), and separately the whole command
(start-up, imports and model loading included). On the CPU each process runs one intra-op
thread (``OMP_NUM_THREADS=1``), so N processes use N cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import default_out, machine_info, write_json


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model: str, task: str, limit: int, batch: int, procs: int, out: Path,
        max_new_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "vldft.eval", "--model", model, "--tasks", task, "--limit",
           str(limit), "--batch-size", str(batch), "--out", str(out), "--max-new-tokens",
           str(max_new_tokens)]
    if procs > 1:
        cmd[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                    "--master_port", str(_port()), "-m", "vldft.eval"]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--task", default="vldft_geo_heldout")
    p.add_argument("--limit", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--out", default=default_out("eval_throughput.json"))
    args = p.parse_args()
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
    out = write_json(args.out, {"args": vars(args), "machine": machine_info(), "runs": rows,
                                "speedup": speedup, "identical_outputs": same})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
