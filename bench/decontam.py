"""Benchmark decontamination (``vldft.data.decontam``): index build time, rows/s, peak RSS,
recall on planted duplicates and false drops, on generated line diagrams.

    python bench/decontam.py [--rows 100000] [--test-rows 5000] [--planted 1400] [--out FILE]
    python bench/decontam.py --rows 5000 --test-rows 1000 --planted 280   # quick, ~1 min

Generates, in a temporary folder (files on disk, as a JSONL source's images are; generation
uses every core and is not timed):
- a benchmark copy in two upstream layouts read by ``BenchmarkIndex.from_local``: half the test
  rows as GeoQA (``geoqa/test.jsonl`` + ``images/``), half as Geometry3K (InterGPS
  ``geometry3k/test/<id>/data.json`` + ``img_diagram.png``), 20 % of the latter with stock
  questions ("Find x.");
- ``--rows`` training samples, each with its own diagram (200-600 px a side, black lines, one
  coloured line or fill in 30 %, 14-24 px labels; 80 % PNG, 20 % JPEG q90) and a templated
  question (the test questions' templates, other numbers and letters);
- ``--planted`` of them are duplicates of test rows, in 7 equal kinds: the test image's bytes,
  re-encoded as JPEG q75, resized 0.5x, resized 1.7x, greyscale; the test question reworded
  (case, spaces, punctuation), the test question inside a longer question. Near misses that must
  be kept are among the rest: a test question with one number changed, stock questions.

Then times ``from_local`` and ``decontaminate`` (one process, as training runs it) and a
text-only pass (question matching alone), and reports recall on the planted rows (right
benchmark, test id and reason), false drops among the others, and peak RSS (getrusage).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    Stopwatch,
    command_line,
    default_out,
    machine_info,
    markdown_table,
    peak_rss_kib,
    rss_kib,
    write_json,
)

from vldft.data import Sample  # noqa: E402
from vldft.data import decontam as dc  # noqa: E402

KINDS = {"bytes": "image_exact", "jpeg75": "image_similar", "resize0.5": "image_similar",
         "resize1.7": "image_similar", "grey": "image_similar", "reworded": "question",
         "contained": "question"}
TEMPLATES = [
    "As shown in the figure, in triangle {P}{Q}{R}, angle {P} = {a} degrees and angle {Q} = {b} "
    "degrees, so the measure of angle {R} is ()",
    "In circle O, the chord {P}{Q} has length {a} and the distance from O to {P}{Q} is {b}, then "
    "the radius of circle O is ()",
    "As shown in the figure, {P}{Q} is parallel to {R}{S} and the line {P}{R} crosses them, if "
    "angle 1 = {a} degrees, then angle 2 is ()",
    "In rectangle {P}{Q}{R}{S}, {P}{Q} = {a} and {Q}{R} = {b}. Find the length of the diagonal "
    "{P}{R}.",
    "The sector {P}O{Q} has radius {a} cm and a central angle of {b} degrees. What is its area, "
    "rounded to {c} decimal places?",
]
STOCK = ["Find x.", "Find y.", "Find the area of the figure. Round to the nearest tenth.",
         "Find m \\angle 1."]
COLOURS = ["red", "blue", "green", "orange", "purple"]


def question(r: random.Random) -> str:
    letters = r.sample("ABCDEFGHKLMNPQRSTUVWXYZ", 4)
    num = lambda: str(r.randint(2, 999)) if r.random() < 0.6 else f"{r.uniform(1, 99):.1f}"  # noqa: E731
    return r.choice(TEMPLATES).format(P=letters[0], Q=letters[1], R=letters[2], S=letters[3],
                                      a=num(), b=num(), c=r.randint(1, 3))


@cache
def _font(size: int):
    return ImageFont.load_default(size=size)


def diagram(seed: int) -> Image.Image:
    """A line diagram, 200-600 px a side: a polygon, maybe circles, labelled points."""
    r = random.Random(seed)
    w, h = r.randint(200, 600), r.randint(200, 600)
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    pts = [(r.randint(15, w - 30), r.randint(15, h - 30)) for _ in range(r.randint(3, 7))]
    font = _font(r.randint(14, 24))
    for i, p in enumerate(pts):
        d.line([p, pts[(i + 1) % len(pts)]], fill="black", width=r.choice([1, 2, 2, 3]))
        d.text((p[0] + 4, p[1] + 2), r.choice("ABCDEFGHMNOP"), fill="black", font=font)
    for _ in range(r.randint(0, 2)):
        x, y, rad = r.randint(40, w - 40), r.randint(40, h - 40), r.randint(15, 80)
        d.ellipse([x - rad, y - rad, x + rad, y + rad], outline="black", width=2)
    if r.random() < 0.3:
        a, b = r.sample(pts, 2)
        d.line([a, b], fill=r.choice(COLOURS), width=2)
    return im


def _save(job: tuple[int, str, str]) -> int:
    """Draw diagram ``seed`` (or transform test image ``seed``) and write it; returns bytes."""
    seed, path, how = job
    im = diagram(seed)
    if how == "resize0.5":
        im = im.resize((im.width // 2, im.height // 2), Image.LANCZOS)
    elif how == "resize1.7":
        im = im.resize((round(im.width * 1.7), round(im.height * 1.7)), Image.BICUBIC)
    elif how == "grey":
        im = im.convert("L")
    buf = io.BytesIO()
    if how in ("jpeg75", "jpeg90"):
        im.save(buf, format="JPEG", quality=75 if how == "jpeg75" else 90)
    else:
        im.save(buf, format="PNG")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def reword(q: str) -> str:
    """Same words, other case, spacing and punctuation."""
    return "  " + re.sub(r",\s*", " ; ", q.upper()).replace("()", "?").replace(". ", ".   ")


def change_number(q: str, r: random.Random) -> str:
    """``q`` with its first number replaced by another one."""
    m = re.search(r"\d+(?:\.\d+)?", q)
    return q[:m.start()] + str(int(float(m.group())) + r.randint(1, 9)) + q[m.end():]


def build_data(tmp: Path, n_train: int, n_test: int, n_planted: int, seed: int, workers: int):
    """Write the benchmark copy and the training images; the training samples and, for each,
    the expected match ((benchmark, test id, reason) or None) and its kind."""
    r = random.Random(seed)
    bench_root, jobs = tmp / "bench", []
    tests = []  # (benchmark, test id, question, image seed)
    g3k = n_test // 2
    geoqa_rows = []
    for i in range(n_test - g3k):
        q = question(r)
        path = bench_root / "geoqa" / "images" / f"{i}.png"
        jobs.append((10_000_000 + i, str(path), "png"))
        geoqa_rows.append(json.dumps({"subject": q, "choices": ["1", "2", "3", "4"], "label": 0,
                                      "image": f"images/{i}.png"}))
        tests.append(("geoqa", str(i), q, 10_000_000 + i))
    (bench_root / "geoqa").mkdir(parents=True)
    (bench_root / "geoqa" / "test.jsonl").write_text("\n".join(geoqa_rows) + "\n")
    for i in range(g3k):
        pid, q = str(2401 + i), r.choice(STOCK) if r.random() < 0.2 else question(r)
        d = bench_root / "geometry3k" / "test" / pid
        d.mkdir(parents=True)
        (d / "data.json").write_text(json.dumps({"id": int(pid), "problem_text": q,
                                                 "choices": ["1", "2", "3", "4"],
                                                 "answer": "A"}))
        jobs.append((20_000_000 + i, str(d / "img_diagram.png"), "png"))
        tests.append(("geometry3k", pid, q, 20_000_000 + i))

    specific = [t for t in tests if t[2] not in STOCK]
    kinds = list(KINDS)
    samples, expected = [], []
    planted_tests = r.sample(specific, n_planted)
    for i in range(n_train):
        path = tmp / "train" / f"{i // 1000:03d}" / f"{i:06d}"
        q, img_seed, how, kind, want = question(r), i, "png", "fresh", None
        if r.random() < 0.2:
            how = "jpeg90"
        if i < n_planted:
            kind = kinds[i % len(kinds)]
            bench, tid, tq, tseed = planted_tests[i]
            want = (bench, tid, KINDS[kind])
            if kind == "bytes":
                img_seed, how = tseed, "png"  # PNG of the same drawing: the same bytes
            elif KINDS[kind] == "image_similar":
                img_seed, how = tseed, kind
            elif kind == "reworded":
                q = reword(tq)
            else:
                q = f"Look at the figure carefully. {tq} Choices: A. 12 B. 24 C. 36 D. 48"
        elif i < 2 * n_planted:
            kind, q = "near_number", change_number(r.choice(specific)[2], r)
        elif i < 3 * n_planted:
            kind, q = "near_stock", r.choice(STOCK)
        suffix = ".jpg" if how in ("jpeg75", "jpeg90") else ".png"
        jobs.append((img_seed, str(path) + suffix, how))
        samples.append(Sample(id=f"train-{i:06d}", messages=[
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Answer: A"}]}],
            images=[Path(str(path) + suffix)], source="synthetic", origin=f"row {i}"))
        expected.append((kind, want))
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_save, jobs, chunksize=256))
    order = list(range(n_train))
    r.shuffle(order)  # planted rows anywhere in the source
    return bench_root, [samples[k] for k in order], [expected[k] for k in order], sizes


def rss_mib() -> dict:
    """Peak (getrusage) and current (/proc) resident set size of this process, MiB."""
    cur = rss_kib() / 1024
    return {"peak": round(peak_rss_kib() / 1024, 1), "current": round(cur, 1) if cur else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--rows", type=int, default=100_000, help="training samples")
    ap.add_argument("--test-rows", type=int, default=5000, help="benchmark test rows")
    ap.add_argument("--planted", type=int, default=1400, help="planted duplicates (7 kinds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes that generate the images (not timed)")
    ap.add_argument("--tmp", default=None, help="folder for the generated data (default: a "
                    "temporary folder, removed at the end)")
    ap.add_argument("--out", default=default_out("decontam.json"))
    args = ap.parse_args(argv)
    if not 3 * args.planted <= args.rows or args.planted > args.test_rows // 2:
        ap.error("--planted must be <= --rows / 3 and <= --test-rows / 2")
    rss_start = rss_mib()  # python + numpy + PIL + datasets + torch (bench/common)
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="vldft_decontam_"))
    try:
        t0 = time.perf_counter()
        bench_root, samples, expected, sizes = build_data(
            tmp, args.rows, args.test_rows, args.planted, args.seed, args.workers)
        gen_s = time.perf_counter() - t0
        train_sizes = [Image.open(s.images[0]).size for s in samples[:2000]]
        rss_data = rss_mib()

        with Stopwatch() as clock:
            index = dc.BenchmarkIndex.from_local(["geoqa", "geometry3k"], bench_root,
                                                 progress=False)
        index_s, index_cpu = clock.wall, clock.cpu
        rss_index = rss_mib()

        with Stopwatch() as clock:
            kept, dropped = dc.decontaminate(samples, index, progress=False)
        dec_s, dec_cpu = clock.wall, clock.cpu
        rss_dec = rss_mib()

        text_only = [Sample(id=s.id, messages=s.messages, images=[]) for s in samples]
        with Stopwatch() as clock:
            dc.decontaminate(text_only, index, progress=False)
        text_s, text_cpu = clock.wall, clock.cpu
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)

    got = {d["id"]: (d["benchmark"], d["test_id"], d["reason"]) for d in dropped}
    per_kind: dict[str, Counter] = {}
    for s, (kind, want) in zip(samples, expected, strict=True):
        c = per_kind.setdefault(kind, Counter())
        c["rows"] += 1
        if want is None:
            c["false_drops"] += s.id in got
        else:
            c["found"] += s.id in got
            c["right"] += got.get(s.id) == want
    planted = sum(c["rows"] for k, c in per_kind.items() if k in KINDS)
    right = sum(c["right"] for k, c in per_kind.items() if k in KINDS)
    false = sum(c["false_drops"] for k, c in per_kind.items() if k not in KINDS)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
        "command": command_line("decontam.py", argv),
        "rows": args.rows, "test_rows": len(index), "planted": planted,
        "images": {"storage": "files in a temporary folder (80% PNG, 20% JPEG q90; planted "
                              "ones as their kind)",
                   "side_px": "200-600 (random per image)",
                   "train_mean_px": [round(sum(w for w, _ in train_sizes) / len(train_sizes)),
                                     round(sum(h for _, h in train_sizes) / len(train_sizes))],
                   "mean_file_kib": round(sum(sizes) / len(sizes) / 1024, 1)},
        "thresholds": {"hash_distance": dc.HASH_DISTANCE, "min_correlation": dc.MIN_CORRELATION,
                       "min_question_words": dc.MIN_QUESTION_WORDS, "stock_rows": dc.STOCK_ROWS},
        "index_stats": index.stats,
        "generate_s": round(gen_s, 1),
        # wall and CPU seconds of this process (CPU: what a shared machine does not inflate)
        "index_build_s": round(index_s, 2), "index_build_cpu_s": round(index_cpu, 2),
        "decontaminate_s": round(dec_s, 2), "decontaminate_cpu_s": round(dec_cpu, 2),
        "rows_per_s": round(args.rows / dec_s, 1),
        "rows_per_cpu_s": round(args.rows / dec_cpu, 1),
        "text_only_s": round(text_s, 2), "text_only_cpu_s": round(text_cpu, 2),
        "text_only_rows_per_s": round(args.rows / text_s, 1),
        "rss_mib": {"after_imports": rss_start, "after_generating": rss_data,
                    "after_index": rss_index, "after_decontaminate": rss_dec},
        "recall": round(right / planted, 4) if planted else None,
        "false_drops": false,
        "kept": len(kept), "dropped": len(dropped),
        "dropped_by_reason": dict(Counter(d["reason"] for d in dropped)),
        "per_kind": {k: dict(c) for k, c in per_kind.items()},
    }
    write_json(args.out, result)
    print(markdown_table(["kind", "expected", "rows", "dropped right", "false drops"],
                         sorted(per_kind.items()),
                         lambda kv: [kv[0], KINDS.get(kv[0], "kept"), str(kv[1]["rows"]),
                                     str(kv[1]["right"]) if kv[0] in KINDS else "-",
                                     str(kv[1]["false_drops"]) if kv[0] not in KINDS else "-"]))
    print(f"\n{args.rows} training rows vs {len(index)} test rows: index {index_s:.1f} s, "
          f"decontaminate {dec_s:.1f} s ({args.rows / dec_s:.0f} rows/s, "
          f"{args.rows / dec_cpu:.0f} per CPU second; text only "
          f"{args.rows / text_s:.0f} rows/s), peak RSS {rss_dec['peak']:.0f} MiB (after "
          f"imports {rss_start['peak']:.0f}, after generating {rss_data['peak']:.0f}); "
          f"recall {right}/{planted}, false drops {false}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
