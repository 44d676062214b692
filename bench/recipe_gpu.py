"""The shipped recipe's training step, measured as the recipe runs it: a shipped config's model /
precision / freeze / checkpointing / packing / accumulation on the Qwen2.5-VL-3B architecture
(random weights), side by side with the bf16 set-up the earlier GPU figures used.

    bash bench/gpu.sh                                          # runs this in the GPU set
    python bench/recipe_gpu.py [--config configs/qwen25vl_geo.yaml] [--set KEY=VALUE ...]
                               [--setups recipe,recipe_padded,bf16_bench] [--steps 3]
                               [--rounds 2] [--lengths FILE] [--out DIR]
    python bench/recipe_gpu.py --tiny --steps 1 --rounds 1    # tiny model on the CPU (CI)

The config is read with ``vldft.config.load_config`` (its ``include`` and validation), then each
set-up applies its overrides (``--set`` adds more to all, e.g. a new ``train.*`` switch):

- ``recipe``: the config as shipped. For configs/qwen25vl_geo.yaml: fp32 master weights with
  bf16 autocast (``train.mixed_precision: auto``), ``model.freeze: [vision]``, gradient
  checkpointing, packed rows of 8,192 tokens, ``train.grad_accum: 2``.
- ``recipe_padded``: + ``data.packing=false``: the SAME samples per optimizer step as
  ``recipe``, in right-padded micro-batches of ``train.micro_batch_size`` (random order, as the
  default loader), accumulating over as many micro-batches as they make: same samples, same
  tokens per optimizer step, the model's own attention (``sdpa``).
- ``bf16_bench``: + ``model.dtype=bfloat16 model.freeze=[] model.gradient_checkpointing=false
  train.grad_accum=1 train.mixed_precision=no``: the set-up of the earlier H200 figures
  (bench/RESULTS.md: pure bf16 weights, gradients and AdamW states, the vision tower trained, no
  checkpointing, an optimizer step every micro-batch) on the same packed micro-batches.

A step is vldft's own code: ``load_adapter`` (``--tiny``; else the 3B architecture built from a
config in the config's ``model.dtype``, wrapped in vldft's Qwen2.5-VL adapter), ``prepare_model``
(freeze, unused-parameter freeze, checkpointing), ``build_optimizer`` (per-part groups, fused
AdamW per ``train.optimizer_impl``), ``ObjectiveModule`` + ``accumulate_gradients`` (global
token normalisation, the objective of ``loss``), gradient clipping at ``train.max_grad_norm``,
``optimizer.step()``, ``zero_grad``. Packed rows come from ``vldft.loader.PackingSampler``'s bins
in the order training takes them (not the fullest ones), with the attention ``choose_attention``
picks; micro-batches are made by the collate function ``vldft.loader.build_loader`` would use
(``PackCollator`` / the padding ``Collator``, with the precomputed attention segments where the
config uses them). Nothing else of the real loop runs: the loader's workers (batches are made
before timing), the lr schedule (one scalar per step), logging. bf16 autocast
is applied to the module's forward as accelerate's ``mixed_precision="bf16"`` does (one process
cannot hold two accelerate precisions).

Lengths (``recipe_lengths``): NOT measured from the recipe's rows, which no machine of this
project has had (no network). A modelled mix, per ``data.sources`` entry by name, with the
sources' weights as sample shares (the recipe's "image : text = 3 : 1 by samples"): geo170k_qa
(GeoQA+ / Geometry3K problems with worked solutions): question 40-160 tokens, answer 40-400
(log-uniform), one diagram of 120-600 px a side (log-uniform; resized by qwen-vl-utils'
``smart_resize`` within the config's pixel bounds); numinamath_cot (text): problem 30-300,
solution 100-2,000 tokens (log-uniform); plus the chat template's 26 tokens; capped at
``data.max_length`` by cutting the answer (``data.overlong: truncate``). Measured lengths
replace the model with ``--lengths FILE``: a JSON list of ``{"prompt": int, "answer": int,
"image": [width, height] or null}`` (prompt: the user turn's text tokens, to which the
template's 26 and the image's tokens are added; answer: without its end-of-turn).

Order: every set-up first runs each of its optimizer steps once (warm-up covering every micro-
batch shape), then ``--rounds`` rounds time each set-up's ``--steps`` optimizer steps,
interleaved (A B C, then C B A, ...). On CUDA the set-ups that do not share a model are parked on
the CPU (weights and optimizer state) while another runs, so one GPU holds one of them at a
time; moving is not timed. Reported per set-up: tokens/s, useful (target) tokens/s, MFU (model
FLOPs: ``common.qwen_flop_terms``, frozen vision forward only, recomputation not counted), peak
memory over the timed steps, CUDA kernels per optimizer step (one profiled step), padding.
Out of memory is reported in the set-up's row; the others still run.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    default_out,
    fmt_mfu,
    free,
    kernels_per_call,
    markdown_table,
    mfu,
    peak_tflops,
    qwen25vl_3b_config,
    qwen25vl_config,
    qwen_flop_terms,
    run_header,
    sync,
    write_json,
)

DEFAULT_CONFIG = "configs/qwen25vl_geo.yaml"
SETUPS = {
    "recipe": [],
    "recipe_padded": ["data.packing=false"],
    "bf16_bench": ["model.dtype=bfloat16", "model.freeze=[]",
                   "model.gradient_checkpointing=false", "train.grad_accum=1",
                   "train.mixed_precision=no"],
}
# the evaluation during a run does not touch the training step; off, so that the config loads
# where lmms-eval is not installed (the GPU machine)
ALWAYS = ["train.eval_tasks=[]", "train.eval_every=0"]
TEMPLATE_TOKENS = 26  # Qwen2.5-VL chat template: system turn, user / assistant headers, ends
# modelled lengths per source name (module docstring): question / answer token ranges
# (log-uniform) and the image side range in px (None: text-only)
LENGTH_MODEL = {
    "geo170k_qa": {"prompt": (40, 160), "answer": (40, 400), "image_side": (120, 600)},
    "numinamath_cot": {"prompt": (30, 300), "answer": (100, 2000), "image_side": None},
}


# ----------------------------------------------------------------------------- lengths
def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def recipe_lengths(cfg, n: int, seed: int, scale: int = 1) -> list[dict]:
    """``n`` modelled samples of ``cfg``'s mixture: ``{"source", "prompt", "answer", "image"}``
    (module docstring); ``scale`` divides the token counts and image sides (the tiny dry run).
    Sources without a length model are an error (use ``--lengths``)."""
    sources = cfg.data.sources
    unknown = [s.name for s in sources if s.name not in LENGTH_MODEL]
    if unknown:
        raise SystemExit(f"no length model for data source(s) {unknown}; pass --lengths FILE "
                         f"(modelled: {sorted(LENGTH_MODEL)})")
    rng = random.Random(seed)
    weights = [s.weight for s in sources]
    out = []
    for _ in range(n):
        src = rng.choices(sources, weights)[0]
        m = LENGTH_MODEL[src.name]
        image = None
        if m["image_side"]:
            image = [_log_uniform(rng, *m["image_side"]) // scale,
                     _log_uniform(rng, *m["image_side"]) // scale]
        out.append({"source": src.name, "prompt": max(1, _log_uniform(rng, *m["prompt"]) // scale),
                    "answer": max(1, _log_uniform(rng, *m["answer"]) // scale), "image": image})
    return out


def image_grid(size: list[int], min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """Patch grid (rows, columns) of an image of ``size`` (width, height) after Qwen's resizing
    (qwen-vl-utils ``smart_resize``, 28 px per image token)."""
    from qwen_vl_utils import smart_resize

    h, w = smart_resize(size[1], size[0], factor=28, min_pixels=min_pixels or 3136,
                        max_pixels=max_pixels or 12845056)
    return h // 14, w // 14


def encode(spec: dict, i: int, model, image_token: int, max_length: int, id_hi: int, g):
    """One ``vldft.collate.Encoded`` of ``spec``'s lengths with random ids (the cost of a step
    does not depend on them): template + prompt, the image block after the user header, the
    answer and its end-of-turn as targets; the answer is cut to fit ``max_length``."""
    from vldft.collate import IGNORE, Encoded

    cfg, vc = model.config, model.config.vision_config
    rows, cols = spec.get("grid") or (0, 0)
    n_img = rows * cols // vc.spatial_merge_size**2
    prompt = TEMPLATE_TOKENS + spec["prompt"] + (n_img + 2 if n_img else 0)
    answer = max(1, min(spec["answer"] + 1, max_length - prompt))  # + <|im_end|>
    n = prompt + answer
    ids = torch.randint(0, id_hi, (n,), generator=g)
    mm = torch.zeros(1, n, dtype=torch.long)
    extras: dict = {}
    if n_img:
        a = 20  # after "<|im_start|>system ... <|im_start|>user\n"
        ids[a], ids[a + 1 + n_img] = cfg.vision_start_token_id, cfg.vision_end_token_id
        ids[a + 1:a + 1 + n_img] = image_token
        mm[0, a + 1:a + 1 + n_img] = 1
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        extras = {"pixel_values": torch.randn(rows * cols, patch_dim, generator=g),
                  "image_grid_thw": torch.tensor([[1, rows, cols]])}
    extras["mm_token_type_ids"] = mm
    labels = ids.clone()
    labels[:prompt] = IGNORE
    return Encoded(sample_id=f"s{i}", input_ids=ids, labels=labels, extras=extras,
                   truncated=spec["answer"] + 1 > answer)


# ----------------------------------------------------------------------------- model
def SMALL():  # noqa: N802 - the --arch small config (bench/gpu_train.py's dry-run shape)
    return qwen25vl_config(64, 2, 2, 1, 128, vocab=4096, first_special=4000, max_positions=65536,
                           vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                       window_size=112, fullatt_block_indexes=[1]))


class _Tokenizer:
    """What vldft's Qwen adapter reads from a tokenizer, for the 3B architecture without the
    real tokenizer files (nothing is downloaded): the ids of the special tokens it uses."""

    def __init__(self, config) -> None:
        self.ids = {"<|image_pad|>": config.image_token_id, "<|im_end|>": config.eos_token_id,
                    "<|video_pad|>": config.video_token_id,
                    "<|vision_start|>": config.vision_start_token_id,
                    "<|vision_end|>": config.vision_end_token_id,
                    "<|endoftext|>": config.pad_token_id}
        self.pad_token_id = config.pad_token_id

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.ids[token]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[text]]


def build_adapter(cfg, tiny: bool, device: str, arch: str = "3b"):
    """vldft's adapter of ``cfg.model``: the tiny model through ``load_adapter`` (``--tiny``),
    else Qwen2.5-VL-3B's architecture (``arch`` "small": a 2 x 64 one with the same code path,
    for the CPU test) with random weights in ``cfg.model.dtype`` on ``device``."""
    from vldft.adapters import Qwen2_5_VLAdapter, load_adapter

    if tiny:
        adapter = load_adapter(cfg.model)
        adapter.model.to(device)
        return adapter
    from transformers import Qwen2_5_VLForConditionalGeneration

    if cfg.model.family != "qwen2_5_vl":
        raise SystemExit(f"the 3B architecture is Qwen2.5-VL; {cfg.model.family} needs --tiny")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.model.dtype,
                                                                       torch.bfloat16)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            qwen25vl_3b_config() if arch == "3b" else SMALL(), dtype=dtype,
            attn_implementation="sdpa")
    processor = types.SimpleNamespace(
        tokenizer=_Tokenizer(model.config),
        image_processor=types.SimpleNamespace(size={"shortest_edge": 3136,
                                                    "longest_edge": 12845056},
                                              patch_size=14, merge_size=2))
    adapter = Qwen2_5_VLAdapter(model, processor, cfg.model.min_pixels, cfg.model.max_pixels)
    if cfg.model.attn_implementation == "varlen":
        from vldft.attention import use_varlen

        use_varlen(model)
    return adapter


def move(inst: dict, device: str) -> float:
    """Park / unpark a set-up's model and optimizer state (seconds taken)."""
    t0 = time.perf_counter()
    inst["adapter"].model.to(device)
    for state in inst["optimizer"].state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
    sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- one set-up
def optimizer_step(inst: dict, micro: list[dict], cfg, accelerator) -> float:
    """One optimizer step over ``micro`` exactly as vldft.train's loop takes it (no scheduler)."""
    from vldft.step import accumulate_gradients

    totals = accumulate_gradients(inst["module"], micro, cfg.loss.spec(), accelerator)
    norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
    torch.nn.utils.clip_grad_norm_(inst["module"].parameters(), norm)
    inst["optimizer"].step()
    inst["optimizer"].zero_grad(set_to_none=True)
    return totals["loss_sum"] / max(totals["n_tokens"], 1.0)


def set_attention(inst: dict, cfg) -> str:
    """The attention the set-up's loader would choose: ``choose_attention`` for packed rows,
    the model's own implementation otherwise."""
    from vldft.packing import choose_attention

    model = inst["adapter"].model
    model.config._attn_implementation = inst["attn"]
    return choose_attention(model, cfg.model.attn_implementation) if cfg.data.packing \
        else model.config._attn_implementation


def collate_fn(cfg, collator):
    """The collate function ``vldft.loader.build_loader`` gives ``cfg``'s loader (call after
    ``set_attention``): packed rows (``PackCollator``) or padded micro-batches, with the
    precomputed attention segments where the config and the attention use them."""
    import vldft.loader as loader

    segments = loader.uses_segments(cfg, collator) if hasattr(loader, "uses_segments") else False
    if cfg.data.packing:
        return loader.PackCollator(collator, cfg.data.pack_tokens, segments) if segments \
            else loader.PackCollator(collator, cfg.data.pack_tokens)
    return loader.SegmentCollator(collator) if segments else collator


def micro_stats(batch: dict, seq_lens: list[int], inst: dict, cfg) -> dict:
    from vldft.step import count_targets

    adapter = inst["adapter"]
    frozen = set(cfg.model.freeze)
    patches = int(batch["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in batch else 0
    targets = count_targets(batch)
    f = qwen_flop_terms(adapter.model, seq_lens, patches, targets,
                        vision_factor=2.0 if "vision" in frozen else 6.0,
                        projector_factor=(2.0 if "vision" in frozen else 4.0)
                        if "projector" in frozen else 6.0)["total"]
    return {"tokens": sum(seq_lens), "slots": batch["input_ids"].numel(), "targets": targets,
            "flops": f}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="a shipped config (YAML)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every set-up (repeatable)")
    ap.add_argument("--setups", default=",".join(SETUPS), help="of: " + ",".join(SETUPS))
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps of the recipe")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    ap.add_argument("--samples", type=int, default=512, help="samples drawn (one packing window)")
    ap.add_argument("--lengths", default=None, help="JSON of measured sample lengths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-kernels", action="store_true", help="skip the profiled step")
    ap.add_argument("--peak-tflops", type=float, default=None, help="default: from the device")
    ap.add_argument("--scale", type=int, default=0,
                    help="divide token counts, image sides, data.pack_tokens and data.max_length "
                         "by this (default 1; 8 with --tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="the config's tiny model (model.tiny=true) on the CPU: a dry run")
    ap.add_argument("--arch", choices=("3b", "small"), default="3b",
                    help="without --tiny: Qwen2.5-VL-3B's architecture, or a 2 x 64 one (tests)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (with --arch small)")
    ap.add_argument("--out", default=os.environ.get("OUT", default_out("gpu")),
                    help="directory for recipe_gpu.json (default: $OUT, else runs/bench/gpu/)")
    args = ap.parse_args(argv)
    import json

    from accelerate import Accelerator

    from vldft.collate import Collator
    from vldft.config import config_to_dict, load_config
    from vldft.loader import PackingSampler
    from vldft.step import ObjectiveModule, build_optimizer, mixed_precision, prepare_model

    t_start = time.perf_counter()
    if args.tiny or args.cpu:
        device = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny (or --cpu), or on a GPU machine")
    else:
        device = "cuda"
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if device == "cuda"
                                else 1.0)
    names = [s for s in args.setups.split(",") if s]
    if set(names) - set(SETUPS) or "recipe" not in names:
        ap.error(f"--setups: 'recipe' and any of {','.join(SETUPS)}")
    common_over = ALWAYS + args.set
    scale = args.scale or (8 if args.tiny else 1)
    if args.tiny:  # the tiny model on a CPU; lengths / scale (recorded in the JSON)
        common_over = ALWAYS + ["model.tiny=true"] + args.set
    if scale > 1:
        shipped = load_config(args.config, common_over)
        common_over += [f"data.pack_tokens={shipped.data.pack_tokens // scale}",
                        f"data.max_length={shipped.data.max_length // scale}"]
    cfgs = {n: load_config(args.config, common_over + SETUPS[n]) for n in names}
    base = cfgs["recipe"]
    if not base.data.packing:
        raise SystemExit(f"{args.config}: data.packing is off; this benchmark compares the "
                         "packed recipe with padded batches of the same samples")
    accelerator = Accelerator(mixed_precision="no", cpu=device == "cpu")
    log = print

    # one model (and optimizer) per distinct model section: recipe and recipe_padded share one
    insts: dict[str, dict] = {}
    for n in names:
        cfg = cfgs[n]
        key = json.dumps(config_to_dict(cfg)["model"], sort_keys=True) + str(
            mixed_precision(cfg))
        if key in insts:
            insts[n] = insts[key]
            continue
        for other in insts.values():  # one model on the GPU at a time
            if other["device"] != "cpu" and device == "cuda":
                other["parked_s"] = other.get("parked_s", 0.0) + move(other, "cpu")
                other["device"] = "cpu"
        adapter = build_adapter(cfg, args.tiny, device, args.arch)
        prepare_model(adapter, cfg, log)
        module = ObjectiveModule(adapter).train()
        mp = mixed_precision(cfg)  # auto: bf16 on a bf16 GPU, else no
        if mp == "bf16":  # what accelerate's prepare does for mixed_precision="bf16"
            module.forward = torch.autocast(device_type=device, dtype=torch.bfloat16)(
                module.forward)
        inst = {"adapter": adapter, "module": module, "optimizer": build_optimizer(adapter, cfg),
                "attn": adapter.model.config._attn_implementation, "mixed_precision": mp,
                "device": device, "key": key}
        insts[key] = insts[n] = inst

    # samples and micro-batches: the recipe's packing bins in training order
    adapter0 = insts["recipe"]["adapter"]
    model0 = adapter0.model
    if args.lengths:
        specs = json.loads(Path(args.lengths).read_text())
        length_source = f"measured: {args.lengths}"
    else:
        specs = recipe_lengths(base, args.samples, args.seed, scale)
        length_source = "modelled (bench/recipe_gpu.py LENGTH_MODEL), not measured"
    for s in specs:
        s["grid"] = image_grid(s["image"], base.model.min_pixels, base.model.max_pixels) \
            if s.get("image") else None
    g = torch.Generator().manual_seed(args.seed)
    id_hi = min(model0.config.vision_start_token_id, model0.config.image_token_id,
                model0.config.text_config.pad_token_id, model0.config.eos_token_id)
    lazily: dict[int, object] = {}

    def sample(i: int):
        if i not in lazily:
            lazily[i] = encode(specs[i], i, model0, adapter0.image_token_id,
                               base.data.max_length, id_hi, g)
        return lazily[i]

    def est_len(s: dict) -> int:
        n_img = (s["grid"][0] * s["grid"][1] // 4 + 2) if s.get("grid") else 0
        return min(TEMPLATE_TOKENS + s["prompt"] + n_img + s["answer"] + 1, base.data.max_length)

    lengths = [est_len(s) for s in specs]
    accum = base.train.grad_accum
    bins = PackingSampler(lengths, base.data.pack_tokens, base.data.max_length, args.seed,
                          multiple_of=accum).batches()
    need = args.steps * accum
    if len(bins) < need:
        raise SystemExit(f"{len(specs)} samples make {len(bins)} bins < {need}; raise --samples")
    step_bins = [bins[k * accum:(k + 1) * accum] for k in range(args.steps)]
    plans: dict[str, list[list[tuple[dict, list[int]]]]] = {}  # set-up -> steps -> micro-batches
    for n in names:
        cfg = cfgs[n]
        set_attention(insts[n], cfg)
        collate = collate_fn(cfg, Collator.from_config(insts[n]["adapter"], cfg))
        steps = []
        for k, group in enumerate(step_bins):
            if not cfg.data.packing:  # the same samples, padded micro-batches in random order
                idx = [i for b in group for i in b]
                random.Random(args.seed + k).shuffle(idx)
                mb = cfg.train.micro_batch_size
                steps.append([(collate([sample(i) for i in idx[j:j + mb]]),
                               [len(sample(i).input_ids) for i in idx[j:j + mb]])
                              for j in range(0, len(idx), mb)])
            else:
                rows = [(collate([sample(i) for i in b]), [len(sample(i).input_ids) for i in b])
                        for b in group]
                ga = cfg.train.grad_accum  # bf16_bench: an optimizer step every micro-batch
                steps += [rows[j:j + ga] for j in range(0, len(rows), ga)]
        plans[n] = steps

    header = run_header("recipe_gpu.py", argv, device, cpu_label="cpu (dry run)")
    result = {**header, "tiny": args.tiny, "args": vars(args), "config": args.config,
              "peak_tflops": peak, "length_source": length_source,
              "lengths": {"samples": len(specs), "used": len(lazily),
                          "image_share": round(sum(1 for s in specs if s.get("grid"))
                                               / len(specs), 3),
                          "median_tokens": statistics.median(lengths),
                          "quartiles": statistics.quantiles(lengths, n=4),
                          "max_tokens": max(lengths), "truncated": sum(
                              1 for i in lazily if lazily[i].truncated)},
              "setups": {}, "rows": [], "rounds": []}
    for n in names:
        cfg = cfgs[n]
        result["setups"][n] = {
            "overrides": SETUPS[n], "common_overrides": common_over,
            "model_dtype": cfg.model.dtype, "mixed_precision": insts[n]["mixed_precision"],
            "freeze": cfg.model.freeze, "gradient_checkpointing": cfg.model.gradient_checkpointing,
            "packing": cfg.data.packing, "pack_tokens": cfg.data.pack_tokens,
            "micro_batch_size": None if cfg.data.packing else cfg.train.micro_batch_size,
            "micro_batches_per_optimizer_step": statistics.mean(len(s) for s in plans[n]),
            "optimizer_steps": len(plans[n]),
            "trainable_params": sum(p.numel() for p in insts[n]["adapter"].model.parameters()
                                    if p.requires_grad),
            "params": sum(p.numel() for p in insts[n]["adapter"].model.parameters())}
    out = Path(args.out)
    stats = {n: [[micro_stats(b, lens, insts[n], cfgs[n]) for b, lens in st] for st in plans[n]]
             for n in names}
    runs: dict[str, dict] = {n: {"seconds": [], "step_s": [], "peak": 0.0, "losses": []}
                             for n in names}
    errors: dict[str, str] = {}

    def save() -> None:
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        write_json(out / "recipe_gpu.json", result)

    def activate(n: str) -> None:
        inst = insts[n]
        if device == "cuda" and inst["device"] == "cpu":
            for other in {id(v): v for v in insts.values()}.values():
                if other is not inst and other["device"] != "cpu":
                    other["parked_s"] = other.get("parked_s", 0.0) + move(other, "cpu")
                    other["device"] = "cpu"
            inst["unparked_s"] = inst.get("unparked_s", 0.0) + move(inst, device)
            inst["device"] = device
        set_attention(inst, cfgs[n])

    def run(n: str, timed_round: int | None) -> None:
        if n in errors:
            return
        activate(n)
        cfg, inst = cfgs[n], insts[n]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        total = 0.0
        try:
            for micro in plans[n]:
                sync(device)
                t0 = time.perf_counter()
                loss = optimizer_step(inst, [b for b, _ in micro], cfg, accelerator)
                sync(device)
                dt = time.perf_counter() - t0
                total += dt
                if timed_round is not None:
                    runs[n]["step_s"].append(dt)
                    runs[n]["losses"].append(round(loss, 6))
        except torch.OutOfMemoryError as e:
            inst["optimizer"].zero_grad(set_to_none=True)
            errors[n] = "out of memory: " + str(e).split("\n")[0][:160]
            free(device)
            return
        if timed_round is not None:
            runs[n]["seconds"].append(round(total, 4))
            result["rounds"].append({"round": timed_round, "setup": n, "seconds": round(total, 4)})
            if device == "cuda":
                runs[n]["peak"] = max(runs[n]["peak"], torch.cuda.max_memory_allocated() / 2**30)

    for n in names:  # warm-up: every optimizer step (every micro-batch shape) once
        run(n, None)
        print(f"[recipe_gpu] warm-up {n}: {'ok' if n not in errors else errors[n]}", flush=True)
    for r in range(args.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            run(n, r)
        save()
    for n in names:
        row: dict = {"setup": n, **{k: result["setups"][n][k] for k in (
            "model_dtype", "mixed_precision", "freeze", "gradient_checkpointing", "packing",
            "optimizer_steps", "micro_batches_per_optimizer_step")}}
        if n in errors:
            result["rows"].append({**row, "error": errors[n]})
            continue
        micro = [m for st in stats[n] for m in st]
        secs = sum(runs[n]["seconds"]) / len(runs[n]["seconds"])  # one pass over the steps
        tokens, targets = sum(m["tokens"] for m in micro), sum(m["targets"] for m in micro)
        flops = sum(m["flops"] for m in micro)
        row.update(
            timed_passes=len(runs[n]["seconds"]), pass_s=runs[n]["seconds"],
            median_optimizer_step_s=round(statistics.median(runs[n]["step_s"]), 4),
            tokens_per_optimizer_step=round(tokens / len(stats[n]), 1),
            targets_per_optimizer_step=round(targets / len(stats[n]), 1),
            padding_fraction=round(1 - tokens / sum(m["slots"] for m in micro), 4),
            tokens_per_s=round(tokens / secs, 1), useful_tokens_per_s=round(targets / secs, 1),
            tflops_per_s=round(flops / secs / 1e12, 3), mfu=mfu(flops, secs, peak),
            losses=runs[n]["losses"][:4])
        if device == "cuda":
            row["peak_mem_gib"] = round(runs[n]["peak"], 2)
        result["rows"].append(row)
    save()  # the timings are kept even if the profiled steps below run out of time
    for row in result["rows"]:
        if args.no_kernels or "error" in row:
            continue
        n = row["setup"]
        activate(n)
        micro0 = [b for b, _ in plans[n][0]]
        try:  # one profiled optimizer step: its CUDA kernels
            row.update(kernels_per_call(lambda n=n, micro0=micro0: optimizer_step(
                insts[n], micro0, cfgs[n], accelerator), device))
        except torch.OutOfMemoryError:
            row["cuda_kernels"] = None
        save()
    shared = {id(v): v for v in insts.values()}.values()
    result["moves_s"] = {k: round(sum(i.get(k, 0.0) for i in shared), 1)
                         for k in ("parked_s", "unparked_s")}  # not in the timings
    save()
    print(markdown_table(
        ["set-up", "precision", "freeze", "ckpt", "micro-batches / step", "tokens / step",
         "padding", "tokens/s", "useful tokens/s", "MFU", "peak GiB", "kernels / step"],
        result["rows"],
        lambda r: [r["setup"], r["error"]] if "error" in r else [
            r["setup"], f"{r['model_dtype']} / {r['mixed_precision']}",
            ",".join(r["freeze"]) or "-", str(r["gradient_checkpointing"]),
            f"{r['micro_batches_per_optimizer_step']:g}", f"{r['tokens_per_optimizer_step']:.0f}",
            f"{r['padding_fraction']:.0%}", f"{r['tokens_per_s']:.0f}",
            f"{r['useful_tokens_per_s']:.0f}", fmt_mfu(r), str(r.get("peak_mem_gib", "-")),
            str(r.get("cuda_kernels", "-"))]), flush=True)
    return result


if __name__ == "__main__":
    main()
