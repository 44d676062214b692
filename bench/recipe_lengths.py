"""The samples bench/recipe_gpu.py trains on: a shipped config's data mixture as sample lengths,
encoded as vldft's collator lays a conversation out, with random ids.

Lengths (``recipe_lengths``): NOT measured from the recipe's rows, which no machine of this
project has had (no network). A modelled mix, per ``data.sources`` entry by name, with the
sources' weights as sample shares (the recipe's "image : text = 3 : 1 by samples"): geo170k_qa
(GeoQA+ / Geometry3K problems with worked solutions): question 40-160 tokens, answer 40-400
(log-uniform), one diagram of 120-600 px a side (log-uniform; resized by qwen-vl-utils'
``smart_resize`` within the config's pixel bounds); numinamath_cot (text): problem 30-300,
solution 100-2,000 tokens (log-uniform); plus the chat template's 26 tokens; capped at
``data.max_length`` by cutting the answer (``data.overlong: truncate``). Measured lengths
replace the model with ``--lengths FILE`` (``load_specs``): a JSON list of ``{"prompt": int,
"answer": int, "image": [width, height] or null}`` (prompt: the user turn's text tokens, to
which the template's 26 and the image's tokens are added; answer: without its end-of-turn).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from qwen import image_grid, log_uniform, random_sample

TEMPLATE_TOKENS = 26  # Qwen2.5-VL chat template: system turn, user / assistant headers, ends
# modelled lengths per source name (module docstring): question / answer token ranges
# (log-uniform) and the image side range in px (None: text-only)
LENGTH_MODEL = {
    "geo170k_qa": {"prompt": (40, 160), "answer": (40, 400), "image_side": (120, 600)},
    "numinamath_cot": {"prompt": (30, 300), "answer": (100, 2000), "image_side": None},
}


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
            image = [round(log_uniform(rng, *m["image_side"])) // scale,
                     round(log_uniform(rng, *m["image_side"])) // scale]
        out.append({"source": src.name,
                    "prompt": max(1, round(log_uniform(rng, *m["prompt"])) // scale),
                    "answer": max(1, round(log_uniform(rng, *m["answer"])) // scale),
                    "image": image})
    return out


def load_specs(cfg, lengths_file: str | None, n: int, seed: int, scale: int
               ) -> tuple[list[dict], str]:
    """The sample specs (measured from ``lengths_file``, else ``recipe_lengths``) with each
    image's patch grid after Qwen's resizing (``grid``), and where the lengths come from."""
    if lengths_file:
        specs, source = json.loads(Path(lengths_file).read_text()), f"measured: {lengths_file}"
    else:
        specs = recipe_lengths(cfg, n, seed, scale)
        source = "modelled (bench/recipe_lengths.py LENGTH_MODEL), not measured"
    for s in specs:
        s["grid"] = image_grid(s["image"], cfg.model.min_pixels, cfg.model.max_pixels) \
            if s.get("image") else None
    return specs, source


def sample_length(spec: dict, max_length: int) -> int:
    """The tokens ``encode`` makes of ``spec`` (for the packing sampler, before encoding)."""
    n_img = (spec["grid"][0] * spec["grid"][1] // 4 + 2) if spec.get("grid") else 0
    return min(TEMPLATE_TOKENS + spec["prompt"] + n_img + spec["answer"] + 1, max_length)


def encode(spec: dict, i: int, model, image_token: int, max_length: int, id_hi: int, g):
    """One ``vldft.collate.Encoded`` of ``spec``'s lengths with random ids (``qwen.random_sample``;
    the cost of a step does not depend on them): template + prompt, the image block after the
    user header, the answer and its end-of-turn as targets; the answer is cut to fit
    ``max_length``."""
    from vldft.collate import Encoded

    rows, cols = spec.get("grid") or (0, 0)
    n_img = rows * cols // model.config.vision_config.spatial_merge_size**2
    prompt = TEMPLATE_TOKENS + spec["prompt"] + (n_img + 2 if n_img else 0)
    answer = max(1, min(spec["answer"] + 1, max_length - prompt))  # + <|im_end|>
    # the image block after "<|im_start|>system ... <|im_start|>user\n" (20 tokens)
    s = random_sample(model.config, prompt, answer, (rows, cols) if n_img else None, g, at=20,
                      id_hi=id_hi, image_token=image_token)
    return Encoded(sample_id=f"s{i}", input_ids=s.pop("input_ids"), labels=s.pop("labels"),
                   extras=s, truncated=spec["answer"] + 1 > answer)
