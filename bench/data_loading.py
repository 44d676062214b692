"""Data-loading throughput and padding, against the tiny model's training step rate.

    python bench/data_loading.py [--config configs/demo.yaml] [--batches 40] [--out FILE]

Measures, on this machine and in one run:
- load + encode + collate throughput (samples/s) of the configured sources, in the main process;
- the tiny model's optimizer-step rate on the same batches (samples/s), so the two can be
  compared: loading is not the bottleneck when its rate is well above the step rate;
- the padding fraction (padding slots / all token slots) of random batches and of
  length-grouped batches (``data.group_by_length``), over a mixture of the image source and a
  text-only copy of it (so both modalities and a spread of lengths are present).
Writes a JSON file and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_out, machine_info, markdown_table, write_json  # noqa: E402
from vldft_step import optimizer_step  # noqa: E402

from vldft.adapters import load_adapter  # noqa: E402
from vldft.collate import Collator  # noqa: E402
from vldft.config import load_config  # noqa: E402
from vldft.data.mix import (  # noqa: E402
    LengthGroupedSampler,
    build_training_set,
    estimate_length,
)
from vldft.step import ObjectiveModule, build_optimizer  # noqa: E402


def _pad_frac(batches, lengths) -> float:
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--out", default=default_out("data_loading.json"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    bs = cfg.train.micro_batch_size
    torch.manual_seed(0)
    adapter = load_adapter(cfg.model)
    data = build_training_set(cfg, adapter)
    coll = Collator.from_config(adapter, cfg)
    samples = data.samples

    # 1. load + encode + collate
    batches, times = [], []
    for k in range(args.batches):
        chunk = samples[(k * bs) % len(samples):][:bs]
        t0 = time.perf_counter()
        batches.append(coll([coll.encode(s) for s in chunk]))
        times.append(time.perf_counter() - t0)
    load_rate = bs / statistics.median(times)

    # 2. optimizer steps of the model on those batches
    module, acc = ObjectiveModule(adapter), Accelerator(cpu=True)
    opt = build_optimizer(adapter, cfg)
    step_times = []
    for batch in batches[: min(20, len(batches))]:
        t0 = time.perf_counter()
        optimizer_step(module, opt, [batch], cfg.loss.spec(), acc)
        step_times.append(time.perf_counter() - t0)
    step_rate = bs / statistics.median(step_times[2:] or step_times)

    # 3. padding: images + a text-only copy of every sample
    text_only = []
    for s in samples:
        s2 = copy.copy(s)
        s2.messages = [{**m, "content": [p for p in m["content"] if p["type"] == "text"]}
                       for m in s.messages]
        s2.images = []
        text_only.append(s2)
    lengths = data.lengths + [estimate_length(s, adapter) for s in text_only]
    has_image = [True] * len(samples) + [False] * len(samples)
    idx = list(range(len(lengths)))
    random.Random(0).shuffle(idx)
    random_batches = [idx[k:k + bs] for k in range(0, len(idx), bs)]
    grouped = list(LengthGroupedSampler(lengths, has_image, bs, seed=0))
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
        "cpus": torch.get_num_threads(), "torch": torch.__version__, "config": args.config,
        "micro_batch_size": bs, "load_collate_samples_per_s": round(load_rate, 1),
        "train_step_samples_per_s": round(step_rate, 1),
        "load_over_step_ratio": round(load_rate / step_rate, 2),
        "pad_frac_random": round(_pad_frac(random_batches, lengths), 4),
        "pad_frac_grouped": round(_pad_frac(grouped, lengths), 4),
    }
    write_json(args.out, result)
    print(markdown_table(["metric", "value"], result.items(), list))
    return result


if __name__ == "__main__":
    main()
