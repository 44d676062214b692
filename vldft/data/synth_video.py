"""Synthetic clips whose answer needs time: does the water rise or fall, which way does the
dot move?

Each clip is a folder of ``--frames`` small PNG frames that change by ``--step`` px per frame.
``--kind level`` (default): black "water" filling the frame from the bottom, its level rising or
falling (``rises`` / ``falls``). ``--kind motion``: a black dot on white moving ``left`` /
``right`` (``--answers`` adds ``up`` / ``down``).

One frame says little about the answer: the middle frame (index ``frames // 2``, the frame the
``frozen_frame`` control repeats) is drawn from one uniform range (water level, or dot centre)
for every answer, and the change over the clip is small next to that range. With the defaults
(level: 3 px a frame, middle level 6..50 px of 56) the best guess from the first frame alone is
right 63% of the time, from the second or last 57%, from the middle one 50%. The answer is in
the order of the frames: a model that uses time scores far above that on real clips and falls
to chance under both held-out controls (``python -m vldft.heldout CKPT heldout.jsonl
--controls frozen_frame,shuffled_frames``):

- ``frozen_frame``: the middle frame shown for the whole clip (nothing changes);
- ``shuffled_frames``: the same frames in a random order; a clip played backwards is a clip of
  the opposite answer, so shuffled clips of opposite answers look alike. With four directions
  the axis survives a shuffle (the dot stays on one row or column): shuffled clips then score
  ~50%, not 25%. Two opposite answers (the default) keep both controls at chance.

What the tests' tiny random-init Qwen2.5-VL (a 1-layer, 32-wide vision tower) learns on a CPU
(``tests/test_video_learning.py``): ``level`` in 150-200 steps, a change of the dark area being
one sum over each patch; ``motion`` stayed at chance after 400 steps (it must compare positions
across frames), so it is there for real checkpoints. Clips whose frames say less learned slower
or not at all: a whole frame getting 8 grey levels brighter a frame (levels 16..239) was at
chance after 200 steps, 12 levels (24..231) reached 65-100% in 300, unstable across seeds.

Generate (train uses seed ``2*seed``, held-out ``2*seed + 1``; equal arguments give identical
files)::

    python -m vldft.data.synth_video runs/video_data --train 640 --heldout 80 --seed 0

Writes ``OUT/clips/{split}_NNNNNN/{t}.png`` and ``OUT/{split}.jsonl`` in the normalised format
(a ``{"type": "video"}`` part, ``"videos": ["clips/train_000000"]``, ``"answer": "rises"``,
``"kind": "level"``). Answers are balanced: each block of ``len(answers)`` clips holds each once.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

# kind -> (question, {answer: change per frame, in steps: (water level,) or (x, y)})
KINDS = {
    "level": ("Does the water rise or fall?", {"rises": (1,), "falls": (-1,)}),
    "motion": ("Which way does the dot move?",
               {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}),
}
DEFAULT_ANSWERS = {"level": ("rises", "falls"), "motion": ("left", "right")}
DEFAULT_STEP = {"level": 3, "motion": 4}  # px per frame


def clip_states(rng: random.Random, kind: str, answer: str, size: int = 56, frames: int = 4,
                step: int | None = None, radius: int = 7) -> list[tuple[int, ...]]:
    """Each frame's state, ``(water level,)`` or dot centre ``(x, y)``: the middle frame's is
    uniform in a range shared by all answers, the others ``step`` per frame away from it in
    the answer's direction."""
    step = DEFAULT_STEP[kind] if step is None else step
    mid = frames // 2
    reach = step * max(mid, frames - 1 - mid)  # the furthest frame from the middle one
    lo, hi = (reach, size - reach) if kind == "level" else (radius + reach,
                                                            size - 1 - radius - reach)
    if hi < lo:
        raise ValueError(f"a {size} px canvas has no room for {frames} frames changing by "
                         f"{step} px" + ("" if kind == "level" else f" with a {radius} px dot"))
    way = KINDS[kind][1][answer]
    start = [rng.randint(lo, hi) for _ in way]  # drawn the same way for every answer
    return [tuple(v + w * step * (t - mid) for v, w in zip(start, way, strict=True))
            for t in range(frames)]


def draw_frame(kind: str, state: tuple[int, ...], size: int = 56, radius: int = 7
               ) -> Image.Image:
    """One grey-scale frame: black water ``state[0]`` px high (level) or a black dot (motion)
    on white."""
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    if kind == "level":
        if state[0] > 0:
            draw.rectangle((0, size - state[0], size - 1, size - 1), fill=0)
    else:
        x, y = state
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=0)
    return im


def make_row(split: str, index: int, kind: str, answer: str, clip: str) -> dict:
    """The normalised JSONL row of one clip."""
    user = [{"type": "video"}, {"type": "text", "text": KINDS[kind][0]}]
    bot = [{"type": "text", "text": f"Answer: {answer}"}]
    return {"id": f"{kind}-{split}-{index:06d}", "kind": kind,
            "messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": bot}],
            "videos": [clip], "answer": answer}


def write_split(out_dir: Path, split: str, n: int, seed: int, kind: str = "level",
                answers: tuple[str, ...] | None = None, size: int = 56, frames: int = 4,
                step: int | None = None, radius: int = 7) -> Path:
    """Write ``n`` clips drawn from ``random.Random(seed)`` as ``OUT/clips/{split}_*/`` +
    ``OUT/{split}.jsonl`` (stale clip folders of the split are removed first). Returns the
    JSONL path."""
    from tqdm import tqdm

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose from {', '.join(KINDS)}")
    answers = answers or DEFAULT_ANSWERS[kind]
    if any(a not in KINDS[kind][1] for a in answers) or len(set(answers)) < 2:
        raise ValueError(f"answers {list(answers)}: give at least two of "
                         f"{', '.join(KINDS[kind][1])} for kind {kind}")
    clip_states(random.Random(0), kind, answers[0], size, frames, step, radius)  # fits?
    out_dir = Path(out_dir)
    clips = out_dir / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for old in clips.glob(f"{split}_*"):
        shutil.rmtree(old)
    rng = random.Random(seed)
    block: list[str] = []
    path = out_dir / f"{split}.jsonl"
    with path.open("w", encoding="ascii", newline="\n") as fh:
        for i in tqdm(range(n), desc=split, leave=False, disable=None):
            if not block:  # balanced classes: each block holds every answer once
                block = list(answers)
                rng.shuffle(block)
            answer = block.pop()
            rel = f"clips/{split}_{i:06d}"
            (out_dir / rel).mkdir()
            states = clip_states(rng, kind, answer, size, frames, step, radius)
            for t, state in enumerate(states):
                draw_frame(kind, state, size, radius).save(out_dir / rel / f"{t}.png",
                                                           optimize=True)
            fh.write(json.dumps(make_row(split, i, kind, answer, rel)) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: write OUT_DIR/train.jsonl, OUT_DIR/heldout.jsonl and OUT_DIR/clips/."""
    p = argparse.ArgumentParser(prog="python -m vldft.data.synth_video",
                                description=__doc__.split("\n\n")[0],
                                epilog="Score a trained checkpoint with the time controls: "
                                       "python -m vldft.heldout runs/video_demo/final "
                                       "OUT_DIR/heldout.jsonl --controls "
                                       "frozen_frame,shuffled_frames")
    p.add_argument("out_dir", type=Path, help="output folder")
    p.add_argument("--train", type=int, default=640, help="training clips (default 640)")
    p.add_argument("--heldout", type=int, default=80, help="held-out clips (default 80)")
    p.add_argument("--seed", type=int, default=0, help="train uses 2*seed, held-out 2*seed+1")
    p.add_argument("--kind", choices=tuple(KINDS), default="level",
                   help="level: the water rises / falls (default); motion: a dot moves")
    p.add_argument("--answers", default=None,
                   help="comma-separated answers to draw from (default rises,falls / "
                        "left,right; motion also takes up,down, but then shuffled frames keep "
                        "the axis and score ~50%%)")
    p.add_argument("--size", type=int, default=56, help="frame side in px (default 56)")
    p.add_argument("--frames", type=int, default=4,
                   help="frames per clip (default 4: Qwen joins 2 frames per temporal patch)")
    p.add_argument("--step", type=int, default=None,
                   help="change per frame in px (default 3 for level, 4 for motion)")
    p.add_argument("--radius", type=int, default=7, help="dot radius of --kind motion (px)")
    args = p.parse_args(argv)
    answers = tuple(a.strip() for a in (args.answers or "").split(",") if a.strip()) or None
    if args.frames < 2 or (args.step is not None and args.step < 1) or args.radius < 1:
        p.error("--frames must be >= 2, --step and --radius >= 1")
    for offset, (split, n) in enumerate((("train", args.train), ("heldout", args.heldout))):
        try:
            path = write_split(args.out_dir, split, n, 2 * args.seed + offset, args.kind,
                               answers, args.size, args.frames, args.step, args.radius)
        except ValueError as e:
            p.error(str(e))
        print(f"wrote {n} {split} clips to {path}")


if __name__ == "__main__":
    main()
