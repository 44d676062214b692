"""Packed vs padded micro-batches on the CPU: useful (target) tokens per second, same model, same
samples, measured side by side in one run.

    python bench/packing_cpu.py [--samples 32] [--rounds 3] [--pack-tokens 4096] [--batch 4]
                                [--threads 1] [--out runs/bench/packing_cpu.json]
    python bench/packing_cpu.py --dry-run        # seconds: tiny shapes, one round

The length mix (no download; built here, seeded): Geometry3K-style conversations: a geometry
problem (``QUESTIONS``, written in Geometry3K's style) and a step-by-step solution of 50 to 1,500
tokens (log-uniform: many short answers, a long tail) made of ``STEPS`` plus a final answer;
every fifth sample is text-only (20 %), the others carry one diagram of a random size (112 to
336 px a side: 16 to 144 image tokens). Every sample is encoded once by the real
collator (labels on the answers only); encoding is not timed.

Model: a Qwen2.5-VL with a 4 x 256 text decoder (GQA 4 / 2 heads, MLP 1024) and a 2 x 128 vision
tower, random weights, fp32, the tiny byte-level tokenizer (one token per byte, 263 rows: the
loss head is negligible, as at 3B where the decoder dominates the step). What is timed, per
configuration, is one pass over all samples: for each micro-batch ``accumulate_gradients`` (the
training loop's forward + chunked DFT + backward) and an AdamW step. Configurations:

- ``padded``: micro-batches of ``--batch`` samples in a seeded random order, right-padded
  (``train.micro_batch_size``, the default loader);
- ``padded_grouped``: the same with ``data.group_by_length`` (modality- and length-grouped);
- ``packed_sdpa``: ``data.packing`` bins of ``--pack-tokens`` tokens, ``sdpa`` with the block-
  causal mask transformers builds (what a CPU run uses);
- ``packed_varlen``: the same rows through ``vldft.attention``'s varlen function (on the CPU:
  one SDPA call per sample, no [L, L] mask; on CUDA this name is the varlen kernel).

Rounds alternate the configurations (A B C D, A B C D, ...) so a change in machine load hits
all of them; the medians are reported. Seconds are the process's CPU time with ``--threads 1``
(the recorded runs: on a shared, overloaded machine wall time measures the neighbours too; one
thread's CPU time is the work done), else wall time; both are kept in the JSON. Useful
tokens/s = target tokens of the pass / seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    Stopwatch,
    command_line,
    default_out,
    machine_info,
    markdown_table,
    write_json,
)
from qwen import log_uniform  # noqa: E402
from vldft_step import optimizer_step  # noqa: E402

from vldft.collate import IGNORE, Collator  # noqa: E402
from vldft.data import Sample  # noqa: E402
from vldft.data.mix import LengthGroupedSampler, RandomBatchSampler  # noqa: E402
from vldft.loader import PackCollator, PackingSampler  # noqa: E402

CONFIGS = ("padded", "padded_grouped", "packed_sdpa", "packed_varlen")


def build_adapter(dry_run: bool):
    """The benchmark model (module docstring) with the tiny processor / tokenizer."""
    from PIL import Image  # noqa: F401  (processor dependency)
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from vldft.adapters import Qwen2_5_VLAdapter
    from vldft.adapters.tiny import tiny_qwen2_5_vl

    tiny, processor = tiny_qwen2_5_vl()
    config = tiny.config
    if not dry_run:  # the tiny config's token ids and template, wider and deeper
        text = {k: v for k, v in config.text_config.to_dict().items() if k != "layer_types"}
        text.update(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2,
                    rope_parameters={**text["rope_parameters"], "mrope_section": [8, 12, 12]})
        vision = config.vision_config.to_dict()
        vision.update(hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256)
        top = {k: v for k, v in config.to_dict().items()
               if k not in ("text_config", "vision_config")}
        config = Qwen2_5_VLConfig(**{**top, "text_config": text, "vision_config": vision})
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.config._attn_implementation = "sdpa"
    model.config.use_cache = False
    return Qwen2_5_VLAdapter(model, processor, min_pixels=112 * 112, max_pixels=336 * 336)


QUESTIONS = [  # Geometry3K-style problems (written for this benchmark)
    "In triangle ABC, angle C is a right angle, AC = 9 and BC = 12. Find AB.",
    "Find x. Round to the nearest tenth if necessary.",
    "In circle O, chord AB = 16 and the radius is 10. Find the distance from O to AB.",
    "Lines l and m are parallel. The angle at A measures 3x + 10 and the angle at B measures "
    "5x - 30. Find x.",
    "Find the area of the shaded region. Round to the nearest hundredth.",
    "Quadrilateral ABCD is a rhombus with AC = 24 and BD = 10. Find the perimeter of ABCD.",
    "Find the measure of angle 2 if angle 1 measures 63 degrees and the lines are parallel.",
    "The triangles are similar. Find the scale factor and the length of side y.",
    "Find the length of the arc AB in circle P if angle APB measures 120 and PA = 9.",
    "Use the diagram to find the value of x in the isosceles trapezoid.",
]
STEPS = [  # solution steps, combined into answers of the wanted length
    "By the Pythagorean theorem, AB^2 = AC^2 + BC^2 = 81 + 144 = 225, so AB = 15.",
    "The perpendicular from the center bisects the chord, so each half is 8.",
    "Alternate interior angles are congruent, so 3x + 10 = 5x - 30 and 2x = 40.",
    "The area of the sector is (120 / 360) * pi * 9^2 = 27 pi, about 84.82.",
    "The diagonals of a rhombus are perpendicular bisectors of each other.",
    "Each side is sqrt(12^2 + 5^2) = 13, so the perimeter is 4 * 13 = 52.",
    "Corresponding sides are proportional: 6 / 9 = y / 15, so y = 10.",
    "The base angles of an isosceles trapezoid are congruent, so the equation is 2x + 20 = 110.",
    "Subtract the area of the triangle from the area of the circle.",
    "Angle 2 and angle 1 form a linear pair, so angle 2 = 180 - 63 = 117.",
    "Substitute x = 20 back to check: 3(20) + 10 = 70 and 5(20) - 30 = 70.",
    "The arc length is (120 / 360) * 2 * pi * 9 = 6 pi, about 18.85.",
]


def make_samples(n: int, seed: int, lo: int, hi: int) -> list[Sample]:
    """The length mix of the module docstring."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for i in range(n):
        target = int(log_uniform(rng, lo, hi))
        steps = []
        while sum(len(s) + 1 for s in steps) < target:
            steps.append(f"Step {len(steps) + 1}: {rng.choice(STEPS)}")
        answer = " ".join(steps)[:target].rstrip() + " Answer: 15"
        question = rng.choice(QUESTIONS)
        image = i % 5 != 4  # every fifth sample text-only: 20 %
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
        images = []
        if image:
            w, h = rng.choice((112, 168, 224, 280, 336)), rng.choice((112, 168, 224, 280, 336))
            im = Image.new("RGB", (w, h), "white")
            d = ImageDraw.Draw(im)
            d.polygon([(rng.randrange(w), rng.randrange(h)) for _ in range(3)], outline="black")
            images = [im]
        out.append(Sample(f"s{i}", [{"role": "user", "content": content},
                                    {"role": "assistant",
                                     "content": [{"type": "text", "text": answer}]}], images))
    return out


def micro_batches(name: str, enc: list, coll: Collator, args) -> list[dict]:
    lengths = [len(e.input_ids) for e in enc]
    if name == "padded":
        sampler = RandomBatchSampler(len(enc), args.batch, seed=0)
    elif name == "padded_grouped":
        sampler = LengthGroupedSampler(lengths, [bool(e.extras.get("pixel_values") is not None)
                                                 for e in enc], args.batch, seed=0)
    else:
        sampler = PackingSampler(lengths, args.pack_tokens, args.pack_tokens, seed=0)
    collate = coll if name.startswith("padded") else PackCollator(coll, args.pack_tokens)
    return [collate([enc[i] for i in idx]) for idx in sampler]


def one_pass(adapter, module, optimizer, batches: list[dict], acc, attn: str
             ) -> tuple[float, float]:
    """Wall and CPU seconds of one optimizer step per micro-batch (no clipping) over
    ``batches``."""
    from vldft.attention import use_varlen

    if attn == "varlen":
        use_varlen(adapter.model)
    else:
        adapter.model.config._attn_implementation = "sdpa"
    with Stopwatch() as clock:
        for b in batches:
            optimizer_step(module, optimizer, [b], "dft", acc)
    return clock.wall, clock.cpu


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="samples per padded micro-batch")
    ap.add_argument("--pack-tokens", type=int, default=4096)
    ap.add_argument("--min-answer", type=int, default=50)
    ap.add_argument("--max-answer", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: timings are CPU seconds; 0: torch's default, wall)")
    ap.add_argument("--out", default=default_out("packing_cpu.json"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.samples, args.rounds, args.pack_tokens = 8, 1, 1024
        args.max_answer = 300
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    from accelerate import Accelerator

    from vldft.step import ObjectiveModule

    t_start = time.perf_counter()
    adapter = build_adapter(args.dry_run)
    coll = Collator(adapter, max_length=args.pack_tokens)
    enc = [coll.encode(s) for s in make_samples(args.samples, 0, args.min_answer,
                                                 args.max_answer)]
    lengths = [len(e.input_ids) for e in enc]
    targets = sum(int((e.labels[1:] != IGNORE).sum()) for e in enc)
    module, acc = ObjectiveModule(adapter), Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(adapter.model.parameters(), lr=1e-5, foreach=True)
    batches = {name: micro_batches(name, enc, coll, args) for name in CONFIGS}
    slots = {name: sum(b["input_ids"].numel() for b in bs) for name, bs in batches.items()}
    assert all(sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in bs) == targets
               for bs in batches.values())
    one_pass(adapter, module, optimizer, batches["padded"][:1], acc, "sdpa")  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpu: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        for name in CONFIGS:
            attn = "varlen" if name == "packed_varlen" else "sdpa"
            w, c = one_pass(adapter, module, optimizer, batches[name], acc, attn)
            wall[name].append(w)
            cpu[name].append(c)
            print(f"[packing_cpu] round {r + 1} {name}: {w:.2f} s wall, {c:.2f} s CPU",
                  flush=True)
    rows = {}
    for name in CONFIGS:
        t = statistics.median(cpu[name] if args.threads == 1 else wall[name])
        rows[name] = {"micro_batches": len(batches[name]), "token_slots": slots[name],
                      "padding_fraction": round(1 - sum(lengths) / slots[name], 4),
                      "pass_wall_s": [round(x, 3) for x in wall[name]],
                      "pass_cpu_s": [round(x, 3) for x in cpu[name]], "median_s": round(t, 3),
                      "useful_tokens_per_s": round(targets / t, 1),
                      "tokens_per_s": round(sum(lengths) / t, 1)}
    base = rows["padded"]["useful_tokens_per_s"]
    for name in CONFIGS:
        rows[name]["vs_padded"] = round(rows[name]["useful_tokens_per_s"] / base, 3)
    n_params = sum(p.numel() for p in adapter.model.parameters())
    result = {"machine": machine_info(), "command": command_line("packing_cpu.py", argv),
              "args": vars(args),
              "params": n_params, "threads": torch.get_num_threads(),
              "samples": {"n": len(enc), "tokens": sum(lengths), "targets": targets,
                          "text_only": sum("pixel_values" not in e.extras for e in enc),
                          "length_quantiles": np.quantile(lengths, [0, .25, .5, .75, 1]).tolist()},
              "rows": rows, "wall_s": round(time.perf_counter() - t_start, 1)}
    write_json(args.out, result)
    q = result["samples"]["length_quantiles"]
    print(f"\nmodel {n_params / 1e6:.2f}M params; {len(enc)} samples, {sum(lengths)} tokens, "
          f"{targets} targets; lengths (min/q1/median/q3/max) {q}")
    print(markdown_table(
        ["configuration", "micro-batches", "padding", "median pass (s)", "useful tokens/s",
         "vs padded"], rows.items(),
        lambda kv: [kv[0], kv[1]["micro_batches"], f"{kv[1]['padding_fraction']:.0%}",
                    kv[1]["median_s"], f"{kv[1]['useful_tokens_per_s']:.0f}",
                    f"{kv[1]['vs_padded']:.2f}x"]))
    return result


if __name__ == "__main__":
    main()
