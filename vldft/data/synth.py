"""Deterministic synthetic geometry VQA data: diagram + question + short worked answer.

Regenerate the bundled demo set (from the repository root) with::

    python -m vldft.data.synth --out data/geo_demo --n-train 800 --n-heldout 160 --n-study 200 \
        --seed 0 --size 112

Kinds are drawn uniformly from ``--kinds`` (a kind listed twice is drawn twice as often). The
default, and the bundled set, are the two kinds whose answer is in the picture only (the
question text is the same for every sample):
``shape`` (one filled triangle, square or circle) and ``count`` (1-4 filled dots). The
geometry-story kinds ``triangle_angle``, ``right_triangle``, ``parallel_lines`` and ``circle``
(``--kinds triangle_angle,right_triangle,...``) state every number in the question, so they
test arithmetic, not sight. Every answer ends with ``Answer: X``. All randomness comes from a
``random.Random``, so equal seeds and arguments give byte-identical JSONL and pixel-identical
PNGs. Train uses seed ``2*seed``, the held-out split (``heldout.jsonl``) ``2*seed + 1``.
Labels use PIL's built-in bitmap font.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

IMAGE_KINDS = ("shape", "count")  # the answer is in the picture only: the bundled demo set
TEXT_KINDS = ("triangle_angle", "right_triangle", "parallel_lines", "circle")  # the question
# text carries every number; the arithmetic is out of reach of the tiny demo model
# pre-training of the shipped prior (configs/prior.yaml)
PRIOR_KINDS = ("name_shape", "describe_shape", "count_dots", "describe_dots", "colour")
# the study's held-out split: the demo's kinds plus out-of-distribution ones (docs/study_geo.md)
OOD_KINDS = ("count_more", "shape_rephrased", "count_rephrased")
STUDY_KINDS = IMAGE_KINDS + OOD_KINDS
KINDS = IMAGE_KINDS + TEXT_KINDS + PRIOR_KINDS + OOD_KINDS
WHITE, LABEL_COLOR = (255, 255, 255), (0, 0, 0)
INKS = ((0, 0, 0), (40, 40, 40), (20, 30, 110), (100, 20, 20), (10, 80, 30))
SHAPE_SIDES = {"triangle": 3, "square": 4, "circle": 0}
SHAPES = tuple(SHAPE_SIDES)
MAX_DOTS = 4
PRIOR_MAX_DOTS = 6
COLOURS = {"red": (210, 30, 30), "green": (20, 150, 40), "blue": (30, 60, 210),
           "black": (0, 0, 0)}
_BASE_TRIPLES = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), (20, 21, 29), (9, 40, 41))
TRIPLES = tuple((a * k, b * k, c * k) for a, b, c in _BASE_TRIPLES for k in range(1, 11)
                if c * k <= 50)
PARALLEL_RULES = {
    "corresponding": "Corresponding angles are equal when lines are parallel.",
    "alternate interior": "Alternate interior angles are equal when lines are parallel.",
    "co-interior": "Co-interior angles sum to 180, so 180 - {x} = {y}.",
}

Point = tuple[float, float]
Problem = tuple[str, str, str | None]  # (question, answer_text, final_answer or None)
Builder = Callable[[random.Random, "_Canvas"], Problem]


class GeoSample(NamedTuple):
    """One generated problem; unpacks as (image, kind, question, answer_text, final_answer)."""

    image: Image.Image
    kind: str
    question: str
    answer_text: str
    final_answer: str | None  # None: nothing to score (describe_shape)


def _add(p: Point, q: Point, k: float = 1.0) -> Point:
    return (p[0] + k * q[0], p[1] + k * q[1])


def _unit(p: Point) -> Point:
    norm = math.hypot(p[0], p[1]) or 1.0
    return (p[0] / norm, p[1] / norm)


def _rotate(p: Point, degrees: float) -> Point:
    a = math.radians(degrees)
    return (p[0] * math.cos(a) - p[1] * math.sin(a), p[0] * math.sin(a) + p[1] * math.cos(a))


def _centroid(pts: list[Point]) -> Point:
    return (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))


def _box(centre: Point, radius: float) -> list[float]:
    return [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]


def _fit(pts: list[Point], size: int, margin: float) -> list[Point]:
    """Scale and translate `pts` so their bounding box is centred inside the margins."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    s = (size - 2 * margin) / max(w, h)
    ox, oy = (size - w * s) / 2 - min(xs) * s, (size - h * s) / 2 - min(ys) * s
    return [(x * s + ox, y * s + oy) for x, y in pts]


def _normal_away(p: Point, q: Point, centre: Point) -> Point:
    """Unit normal of segment pq pointing away from `centre`."""
    n = _unit((q[1] - p[1], p[0] - q[0]))
    mid = ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)
    return n if n[0] * (mid[0] - centre[0]) + n[1] * (mid[1] - centre[1]) >= 0 else (-n[0], -n[1])


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    # Pillow >= 10.1 makes load_default() return a FreeType font when it can; the classic
    # bitmap font (load_default_imagefont) renders identically on every install.
    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()


def _support(text: str, direction: Point) -> float:
    """Half-extent of the label box of `text` (1 px padding) along unit `direction`."""
    left, top, right, bottom = _font().getbbox(text)
    hw, hh = (right - left) / 2 + 1, (bottom - top) / 2 + 1
    return hw * abs(direction[0]) + hh * abs(direction[1])


class _Canvas:
    """A white RGB image plus a dark ink colour and a line width (3 px at size 112)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = size
        self.image = Image.new("RGB", (size, size), WHITE)
        self.draw = ImageDraw.Draw(self.image)
        self.ink = rng.choice(INKS)
        self.width = max(3, round(size / 40))  # PIL draws width=2 lines 1 px thick

    def lines(self, pts: list[Point], closed: bool = False) -> None:
        seq = pts + pts[:1] if closed else pts
        self.draw.line(seq, fill=self.ink, width=self.width, joint="curve")

    def arc(self, centre: Point, r1: Point, r2: Point, radius: float) -> None:
        """Arc marking the (< 180 deg) angle between unit rays r1 and r2 at `centre`."""
        a1, a2 = (math.degrees(math.atan2(r[1], r[0])) for r in (r1, r2))
        if (a2 - a1) % 360 > 180:
            a1, a2 = a2, a1
        self.draw.arc(_box(centre, radius), a1, a1 + (a2 - a1) % 360, self.ink, self.width - 1)

    def label(self, centre: Point, text: str) -> None:
        """Text centred on `centre` over a white box, clamped inside the canvas."""
        left, top, right, bottom = _font().getbbox(text)
        w, h = right - left, bottom - top
        x = min(max(round(centre[0] - w / 2), 1), self.size - w - 1)
        y = min(max(round(centre[1] - h / 2), 1), self.size - h - 1)
        self.draw.rectangle([x - 1, y - 1, x + w, y + h], fill=WHITE)
        self.draw.text((x - left, y - top), text, fill=LABEL_COLOR, font=_font())

    def label_beside(self, anchor: Point, direction: Point, text: str, gap: float = 3) -> None:
        """Label along unit `direction` from `anchor`, its box `gap` px clear of the anchor."""
        self.label(_add(anchor, direction, _support(text, direction) + gap), text)


def _filled_shape(rng: random.Random, c: _Canvas, name: str) -> None:
    """One filled triangle, square or circle of a random size, place and turn."""
    radius = rng.uniform(0.22, 0.4) * c.size
    centre = (rng.uniform(radius + 4, c.size - radius - 4),
              rng.uniform(radius + 4, c.size - radius - 4))
    if name == "circle":
        c.draw.ellipse(_box(centre, radius), fill=c.ink)
    else:
        n, phase = SHAPE_SIDES[name], rng.uniform(0, 360)
        c.draw.polygon([_add(centre, _rotate((radius, 0), phase + 360 * k / n))
                        for k in range(n)], fill=c.ink)


def _dots(rng: random.Random, c: _Canvas, n: int) -> None:
    """``n`` filled dots of one size, apart from each other and from the border."""
    radius, centres = 0.08 * c.size, []
    while len(centres) < n:  # rejection sampling; up to 6 dots of this size always fit
        lo, hi = radius + 3, c.size - radius - 3
        p = (rng.uniform(lo, hi), rng.uniform(lo, hi))
        if all(math.dist(p, q) > 2 * radius + 4 for q in centres):
            centres.append(p)
    for p in centres:
        c.draw.ellipse(_box(p, radius), fill=c.ink)


def _shape_sentence(name: str) -> str:
    reason = "is round, with no corners" if name == "circle" else f"has {SHAPE_SIDES[name]} corners"
    return f"The figure {reason}."


def _dots_sentence(n: int) -> str:
    return f"I count {n} {'dot' if n == 1 else 'dots'}."


def _shape_kind(question: str, answer: Callable[[str], tuple[str, str | None]]) -> Builder:
    """A kind drawing one filled shape: ``answer(name)`` gives (answer text, final answer)."""
    def build(rng: random.Random, c: _Canvas) -> Problem:
        name = rng.choice(SHAPES)
        _filled_shape(rng, c, name)
        return (question, *answer(name))
    return build


def _dots_kind(question: str, lo: int, hi: int,
               answer: Callable[[int], tuple[str, str | None]]) -> Builder:
    """A kind drawing ``lo``-``hi`` dots: ``answer(n)`` gives (answer text, final answer)."""
    def build(rng: random.Random, c: _Canvas) -> Problem:
        n = rng.randint(lo, hi)
        _dots(rng, c, n)
        return (question, *answer(n))
    return build


def _worked_shape(name: str) -> tuple[str, str]:
    return f"{_shape_sentence(name)} Answer: {name}", name


def _worked_count(n: int) -> tuple[str, str]:
    return f"{_dots_sentence(n)} Answer: {n}", str(n)


# The demo's kinds. Shapes are filled, not outlined: a 3 px outline leaves the tiny demo model's
# 14 px patches almost all background, and it never learns to see it.
_shape = _shape_kind("What shape is shown in the diagram?", _worked_shape)
_count = _dots_kind("How many dots are in the diagram?", 1, MAX_DOTS, _worked_count)
# Out-of-distribution kinds of the study's held-out split (study.jsonl): the demo's answer
# format, with counts beyond its training range, or question phrasings it never trains on.
_count_more = _dots_kind("How many dots are in the diagram?", MAX_DOTS + 1, PRIOR_MAX_DOTS,
                         _worked_count)
_shape_rephrased = _shape_kind("Which shape is drawn here?", _worked_shape)
_count_rephrased = _dots_kind("How many dots do you see?", 1, MAX_DOTS, _worked_count)
# Pre-training kinds (the shipped prior's recipe, configs/prior.yaml). Each teaches a piece of
# what the demo's answers combine - "Answer: <shape>" / "Answer: <count>" (counts to
# PRIOR_MAX_DOTS, beyond the demo's 4), the describing sentences, and the "sentence + Answer: X"
# format for colours only - under question phrasings the demo does not use. describe_shape has
# no final answer to score (its sentence names no shape): held-out CE only.
_name_shape = _shape_kind("Name the shape.", lambda name: (f"Answer: {name}", name))
_describe_shape = _shape_kind("Describe the figure.", lambda name: (_shape_sentence(name), None))
_count_dots = _dots_kind("Count the dots.", 1, PRIOR_MAX_DOTS, lambda n: (f"Answer: {n}", str(n)))
_describe_dots = _dots_kind("Describe the dots.", 1, PRIOR_MAX_DOTS,
                            lambda n: (_dots_sentence(n), str(n)))


def _colour(rng: random.Random, c: _Canvas) -> Problem:
    name = rng.choice(tuple(COLOURS))
    c.ink = COLOURS[name]
    _filled_shape(rng, c, rng.choice(SHAPES))
    return "What colour is the figure?", f"The figure is {name}. Answer: {name}", name


def _triangle_angle(rng: random.Random, c: _Canvas) -> Problem:
    a = rng.randint(20, 140)
    b = rng.randint(20, 160 - a)
    third = 180 - a - b
    side = math.sin(math.radians(b)) / math.sin(math.radians(third))  # law of sines, base 1
    apex = (side * math.cos(math.radians(a)), -side * math.sin(math.radians(a)))
    turn = rng.uniform(0, 360)
    pts = _fit([_rotate(p, turn) for p in ((0.0, 0.0), (1.0, 0.0), apex)], c.size, 0.17 * c.size)
    c.lines(pts, closed=True)
    centre = _centroid(pts)
    for p, text in zip(pts, (str(a), str(b), "?"), strict=True):
        c.label_beside(p, _unit((p[0] - centre[0], p[1] - centre[1])), text)
    question = f"In the triangle, two angles are {a} deg and {b} deg. Find the third angle."
    answer = f"Angles in a triangle sum to 180. 180 - {a} - {b} = {third}. Answer: {third}"
    return question, answer, str(third)


def _right_triangle(rng: random.Random, c: _Canvas) -> Problem:
    a, b, hyp = rng.choice(TRIPLES)
    if rng.random() < 0.5:
        a, b = b, a
    sx, sy, turn = rng.choice((-1, 1)), rng.choice((-1, 1)), rng.uniform(-20, 20)
    raw = [(0.0, 0.0), (float(sx * a), 0.0), (0.0, float(sy * b))]
    right, px, py = _fit([_rotate(p, turn) for p in raw], c.size, 0.17 * c.size)
    c.lines([right, px, py], closed=True)
    k = 0.08 * c.size
    ux, uy = (_unit((v[0] - right[0], v[1] - right[1])) for v in (px, py))
    c.lines([_add(right, ux, k), _add(_add(right, ux, k), uy, k), _add(right, uy, k)])
    centre = _centroid([right, px, py])
    for p, q, text in ((right, px, str(a)), (right, py, str(b)), (px, py, "?")):
        c.label_beside(_centroid([p, q]), _normal_away(p, q, centre), text)
    question = f"In the right triangle, the legs are {a} and {b}. Find the hypotenuse."
    answer = f"c^2 = {a}^2 + {b}^2 = {hyp * hyp}, so c = {hyp}. Answer: {hyp}"
    return question, answer, str(hyp)


def _mark_angle(c: _Canvas, at: Point, r1: Point, r2: Point, text: str) -> None:
    """Arc between unit rays r1, r2 at `at`, labelled on the bisector clear of both rays."""
    radius = 0.1 * c.size
    c.arc(at, r1, r2, radius)
    bisector = _unit(_add(r1, r2))
    sin_half = abs(r1[0] * bisector[1] - r1[1] * bisector[0])
    clear = max(_support(text, (-r[1], r[0])) for r in (r1, r2))
    dist = max(radius + _support(text, bisector) + 2, (clear + 2) / sin_half)
    c.label(_add(at, bisector, min(dist, 0.35 * c.size)), text)


def _parallel_lines(rng: random.Random, c: _Canvas) -> Problem:
    x = rng.choice([v for v in range(40, 141) if not 85 <= v <= 95])
    relation = rng.choice(list(PARALLEL_RULES))
    tilt = rng.uniform(-15, 15)
    u, n = _rotate((1.0, 0.0), tilt), _rotate((0.0, 1.0), tilt)
    r1 = _rotate(u, 180) if rng.random() < 0.5 else u  # P's ray along its parallel line
    toward = n if rng.random() < 0.5 else _rotate(n, 180)  # from P's line to Q's line
    w = _rotate(r1, x)  # transversal direction from P to Q; angle(r1, w) == x
    if w[0] * toward[0] + w[1] * toward[1] < 0:
        w = _rotate(r1, -x)
    half = 0.2 * c.size / math.sin(math.radians(x))  # half of |PQ| for a 0.4*size gap
    mid = (c.size / 2 + rng.uniform(-6, 6), c.size / 2 + rng.uniform(-6, 6))
    p, q = _add(mid, w, -half), _add(mid, w, half)
    for point, direction in ((p, u), (q, u), (p, w)):
        c.lines([_add(point, direction, -2 * c.size), _add(point, direction, 2 * c.size)])
    back, opposite = _rotate(w, 180), _rotate(r1, 180)
    rays = {"corresponding": (r1, w), "alternate interior": (opposite, back),
            "co-interior": (r1, back)}
    y = 180 - x if relation == "co-interior" else x
    _mark_angle(c, p, r1, w, str(x))
    _mark_angle(c, q, *rays[relation], "?")
    question = (f"Two parallel lines are cut by a transversal. One angle is {x} deg. "
                f"Find its {relation} angle, marked ?.")
    return question, PARALLEL_RULES[relation].format(x=x, y=y) + f" Answer: {y}", str(y)


def _radius_label_spot(centre: Point, radius: float, direction: Point, text: str,
                       turn: int) -> Point:
    """Spot beside the drawn radius whose label box lies inside the circle (best effort)."""
    hw, hh = _support(text, (1.0, 0.0)), _support(text, (0.0, 1.0))
    for t in (0.5, 0.4, 0.3, 0.2):
        for side in (_rotate(direction, turn), _rotate(direction, -turn)):
            spot = _add(_add(centre, direction, t * radius), side, _support(text, side) + 2)
            corners = [(spot[0] + i * hw, spot[1] + j * hh) for i in (-1, 1) for j in (-1, 1)]
            if all(math.dist(corner, centre) < radius - 3 for corner in corners):
                return spot
    return spot


def _circle(rng: random.Random, c: _Canvas) -> Problem:
    r = rng.randint(2, 40)
    radius = rng.uniform(0.32, 0.44) * c.size
    centre = (rng.uniform(radius + 4, c.size - radius - 4),
              rng.uniform(radius + 4, c.size - radius - 4))
    c.draw.ellipse(_box(centre, radius), outline=c.ink, width=c.width)
    c.draw.ellipse(_box(centre, c.width), fill=c.ink)
    direction = _rotate((1.0, 0.0), rng.uniform(0, 360))
    c.lines([centre, _add(centre, direction, radius)])
    text = f"r={r}"
    c.label(_radius_label_spot(centre, radius, direction, text, rng.choice((90, -90))), text)
    question = f"The circle has radius r = {r}. Find the diameter."
    return question, f"d = 2r = 2 * {r} = {2 * r}. Answer: {2 * r}", str(2 * r)


BUILDERS: dict[str, Builder] = {
    "shape": _shape, "count": _count, "triangle_angle": _triangle_angle,
    "right_triangle": _right_triangle, "parallel_lines": _parallel_lines, "circle": _circle,
    "name_shape": _name_shape, "describe_shape": _describe_shape, "count_dots": _count_dots,
    "describe_dots": _describe_dots, "colour": _colour, "count_more": _count_more,
    "shape_rephrased": _shape_rephrased, "count_rephrased": _count_rephrased,
}


# ----------------------------------------------------------------------------- public API


def generate_sample(rng: random.Random, size: int = 112,
                    kinds: tuple[str, ...] = IMAGE_KINDS) -> GeoSample:
    """Draw one problem of a kind chosen uniformly from `kinds`, using only `rng`; returns a
    `GeoSample` (unpackable as a 5-tuple)."""
    unknown = [k for k in kinds if k not in BUILDERS]
    if unknown or not kinds:
        raise ValueError(f"unknown synthetic kinds {unknown}; choose from {list(BUILDERS)}")
    kind = rng.choice(kinds)
    canvas = _Canvas(size, rng)
    question, answer_text, final = BUILDERS[kind](rng, canvas)
    return GeoSample(canvas.image, kind, question, answer_text, final)


def make_row(split: str, index: int, sample: GeoSample, image_path: str) -> dict:
    """The kit's normalised JSONL row for one sample (key order is part of the format)."""
    user = [{"type": "image"}, {"type": "text", "text": sample.question}]
    bot = [{"type": "text", "text": sample.answer_text}]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
    return {"id": f"geo-{split}-{index:06d}", "kind": sample.kind, "messages": messages,
            "images": [image_path], "answer": sample.final_answer}


def _progress(items: Iterable[int], total: int, desc: str) -> Iterable[int]:
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, leave=False)


def write_split(out_dir: Path, split: str, n: int, seed: int, size: int = 112,
                kinds: tuple[str, ...] = IMAGE_KINDS) -> Path:
    """Write `n` samples drawn from `random.Random(seed)` as OUT/images/*.png + OUT/{split}.jsonl.

    `seed` is used as given (the CLI passes 2*seed for train and 2*seed+1 for heldout).
    Stale OUT/images/{split}_*.png files are removed first. Returns the JSONL path.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for old in sorted((out_dir / "images").glob(f"{split}_*.png")):
        old.unlink()
    rng = random.Random(seed)
    jsonl_path = out_dir / f"{split}.jsonl"
    with jsonl_path.open("w", encoding="ascii", newline="\n") as fh:
        for i in _progress(range(n), n, split):
            sample = generate_sample(rng, size, kinds)
            rel = f"images/{split}_{i:06d}.png"
            sample.image.save(out_dir / rel, format="PNG", optimize=True)
            fh.write(json.dumps(make_row(split, i, sample, rel), ensure_ascii=True) + "\n")
    return jsonl_path


def main(argv: list[str] | None = None) -> None:
    """CLI: write OUT/train.jsonl, OUT/heldout.jsonl and OUT/images/ (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m vldft.data.synth",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="output directory (the bundled set is data/geo_demo: data/README.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a set already in --out (its JSONL files and images)")
    parser.add_argument("--n-train", type=int, default=800, help="training samples (default 800)")
    parser.add_argument("--n-heldout", type=int, default=160,
                        help="held-out samples (default 160)")
    parser.add_argument("--n-study", type=int, default=0,
                        help="also write study.jsonl: the demo's kinds plus out-of-distribution "
                             f"ones ({', '.join(OOD_KINDS)}), seed 2*seed+2")
    parser.add_argument("--seed", type=int, default=0,
                        help="train uses 2*seed, heldout 2*seed+1, study 2*seed+2")
    parser.add_argument("--size", type=int, default=112, help="image side in pixels (>= 64)")
    parser.add_argument("--kinds", default=",".join(IMAGE_KINDS),
                        help=f"comma-separated kinds, drawn uniformly; list a kind twice to draw "
                             f"it twice as often (of {', '.join(KINDS)})")
    args = parser.parse_args(argv)
    if args.size < 64:
        parser.error("--size must be at least 64")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds {args.kinds!r}: choose from {', '.join(KINDS)}")
    held = [f for f in ("train.jsonl", "heldout.jsonl", "study.jsonl") if (args.out / f).exists()]
    if held and not args.overwrite:
        parser.error(f"--out {args.out} already holds a set ({', '.join(held)}): pass "
                     "--overwrite to replace it, or another --out")
    if not args.n_study and (args.out / "study.jsonl").exists():  # no stale split of another set
        (args.out / "study.jsonl").unlink()
        for old in (args.out / "images").glob("study_*.png"):
            old.unlink()
    for offset, (split, n) in enumerate((("train", args.n_train), ("heldout", args.n_heldout))):
        path = write_split(args.out, split, n, 2 * args.seed + offset, args.size, kinds)
        print(f"wrote {n} {split} samples to {path}")
    if args.n_study:
        path = write_split(args.out, "study", args.n_study, 2 * args.seed + 2, args.size,
                           STUDY_KINDS)
        print(f"wrote {args.n_study} study samples to {path}")


if __name__ == "__main__":
    main()
