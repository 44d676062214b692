"""Start-up at scale: time and peak memory from process start to the first micro-batch, without
the training-set cache, on the first start (cache built) and on a restart (cache hit).

    python bench/startup.py [--rows 10000,100000,1000000] [--layout parquet|jsonl]
                            [--no-cache-max 100000] [--data DIR] [--out FILE]

Generates (once, kept in ``--data``, default ``runs/bench/startup_data/``) a source of N rows
with N distinct images: ``parquet`` embeds a small PNG per row (as hub datasets saved with
``to_parquet`` do), ``jsonl`` names one PNG file per row. Each measurement is a fresh Python
process (``--child``) that does what ``vldft.train`` does before its first step: load the config
(the tiny Qwen2.5-VL, packing into 8,192-token micro-batches as the shipped real-model configs),
build the adapter, ``vldft.data.cache.training_set``, the collator and the packed loader, count
the epoch's micro-batches and take the first one. Modes: ``no_cache`` (``VLDFT_NO_CACHE=1``:
every start before the cache; up to ``--no-cache-max`` rows), ``build`` (empty cache folder)
and ``restart`` (the folder ``build`` filled). Peak RSS is the child's ``ru_maxrss`` (it counts
the cache's mapped pages that were touched; they are shared between ranks). Writes a JSON file
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

T0 = time.perf_counter()  # the child's clock starts before its heavy imports
ROOT = Path(__file__).resolve().parents[1]
# the children import vldft from a snapshot taken at the start (``--data``/code): the cache's
# key covers vldft's code, so an edit in the working tree mid-run would turn a restart into a
# rebuild
sys.path.insert(0, os.environ.get("STARTUP_BENCH_CODE") or str(ROOT))

from common import (  # noqa: E402
    RUNS,
    ChildFailed,
    child_result,
    default_out,
    machine_info,
    markdown_table,
    peak_rss_kib,
    run_child,
    write_json,
)

CONFIG = ROOT / "tests/tiny_demo.yaml"
OVERRIDES = ["data.train_files=[]", "data.heldout_file=null", "data.packing=true",
             "data.pack_tokens=8192", "data.max_length=2048", "train.eval_max_samples=0"]
KINDS = ("triangle", "square", "circle")


def _png(i: int) -> bytes:
    """A 32 x 32 diagram, distinct per row: a shape plus the row number in two pixel rows."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(img)
    box = [4 + i % 5, 4 + i % 7, 26, 24]
    [draw.polygon, draw.rectangle, draw.ellipse][i % 3](
        [(box[0], box[3]), (box[2], box[3]), (box[0], box[1])] if i % 3 == 0 else box,
        fill=(i % 251, (i // 251) % 251, 120))
    for bit in range(24):
        img.putpixel((bit, 30 + bit // 32), (0, 0, 0) if i >> bit & 1 else (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _text(i: int) -> tuple[str, str]:
    q = (f"Problem {i}: the figure shows a {KINDS[i % 3]} inscribed in a square of side "
         f"{i % 17 + 3}. What is the area of the shaded region? Give the answer to two decimals.")
    a = (f"The square has side {i % 17 + 3}, so its area is {(i % 17 + 3) ** 2}. The "
         f"{KINDS[i % 3]} covers part of it; subtracting gives the shaded region. " * (1 + i % 4)
         + f"Answer: {(i % 97) / 7:.2f}")
    return q, a


def generate(n: int, layout: str, data: Path) -> Path:
    """The source of ``n`` rows (generated once, streamed: memory stays flat)."""
    data.mkdir(parents=True, exist_ok=True)
    if layout == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = data / f"rows_{n}.parquet"
        if path.exists():
            return path
        tmp = path.with_suffix(".tmp")
        writer = None
        for start in range(0, n, 10_000):
            ids = range(start, min(n, start + 10_000))
            qa = [_text(i) for i in ids]
            batch = pa.table({"id": [f"r{i}" for i in ids], "question": [q for q, _ in qa],
                              "answer": [a for _, a in qa],
                              "images": [[{"bytes": _png(i), "path": f"{i}.png"}] for i in ids]})
            writer = writer or pq.ParquetWriter(tmp, batch.schema)
            writer.write_table(batch)
        writer.close()
        tmp.rename(path)
        return path
    path = data / f"rows_{n}.jsonl"
    if path.exists():
        return path
    images = data / f"images_{n}"
    images.mkdir(exist_ok=True)
    with open(path.with_suffix(".tmp"), "w") as f:
        for i in range(n):
            (images / f"{i}.png").write_bytes(_png(i))
            q, a = _text(i)
            f.write(json.dumps({"id": f"r{i}", "images": [f"{images.name}/{i}.png"],
                                "messages": [{"role": "user", "content": "<image>" + q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    path.with_suffix(".tmp").rename(path)
    return path


def child(source: str) -> dict:
    """One start, as vldft.train does it up to the first step; phases in seconds."""
    import torch

    from vldft.adapters import load_adapter
    from vldft.collate import Collator
    from vldft.config import load_config
    from vldft.data.cache import training_set
    from vldft.loader import build_loader

    torch.set_num_threads(1)
    marks = {"imports": time.perf_counter() - T0}
    cfg = load_config(CONFIG, [*OVERRIDES, f"data.sources=[{{path: {source}, name: rows}}]"])
    adapter = load_adapter(cfg.model)
    marks["adapter"] = time.perf_counter() - T0
    lines: list[str] = []
    data = training_set(cfg, adapter, lines.append)
    marks["training_set"] = time.perf_counter() - T0
    loader, _ = build_loader(cfg, data, Collator.from_config(adapter, cfg))
    n_batches = len(loader)  # train.main sizes the schedule with it
    marks["loader"] = time.perf_counter() - T0
    batch = next(iter(loader))
    marks["first_batch"] = time.perf_counter() - T0
    import vldft

    return {"vldft": str(Path(vldft.__file__).parent), "samples": len(data.samples),
            "micro_batches": n_batches,
            "first_batch_tokens": int(batch["input_ids"].numel()), "log": lines,
            "seconds": {k: round(v, 2) for k, v in marks.items()},
            "peak_rss_mib": round(peak_rss_kib() / 1024)}


def snapshot(data: Path) -> Path:
    """A copy of the working tree's vldft package for the children (see the top)."""
    code = data / "code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(ROOT / "vldft", code / "vldft",
                    ignore=shutil.ignore_patterns("__pycache__", "_bundled"))
    return code


def measure(source: Path, mode: str, cache: Path, code: Path) -> dict:
    env = {**os.environ, "VLDFT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "STARTUP_BENCH_CODE": str(code)}
    env.pop("VLDFT_NO_CACHE", None)
    if mode == "no_cache":
        env["VLDFT_NO_CACHE"] = "1"
    if mode != "restart":
        shutil.rmtree(cache, ignore_errors=True)
    try:
        result = run_child([sys.executable, __file__, "--child", str(source)], env)
    except ChildFailed as e:
        raise SystemExit(f"{mode} {source}: failed\n{e}") from None
    result.pop("wall_s")
    cache_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) \
        if cache.exists() else 0
    return {"mode": mode, **result, "cache_mib": round(cache_bytes / 2**20)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--rows", default="10000,100000,1000000")
    ap.add_argument("--layout", choices=("parquet", "jsonl"), default="parquet")
    ap.add_argument("--no-cache-max", type=int, default=100_000,
                    help="measure the uncached start up to this many rows")
    ap.add_argument("--data", default=str(RUNS / "startup_data"))
    ap.add_argument("--out", default=default_out("startup.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_result(child(args.child))
        return {}
    runs, code = [], snapshot(Path(args.data))
    for n in [int(x) for x in args.rows.split(",")]:
        t = time.perf_counter()
        source = generate(n, args.layout, Path(args.data))
        gen = round(time.perf_counter() - t, 1)
        size = round(source.stat().st_size / 2**20) if source.is_file() else None
        cache = Path(args.data) / f"cache_{args.layout}_{n}"
        modes = (["no_cache"] if n <= args.no_cache_max else []) + ["build", "restart"]
        for mode in modes:
            r = {"rows": n, "layout": args.layout, "source_mib": size, "generate_s": gen,
                 **measure(source, mode, cache, code)}
            runs.append(r)
            print(f"{n} {mode}: {r['seconds']} rss {r['peak_rss_mib']} MiB", flush=True)
            write_json(args.out, {"machine": machine_info(), "args": vars(args),
                                  "overrides": OVERRIDES, "runs": runs})
    print(markdown_table(
        ["rows", "layout", "start", "training set s", "first micro-batch s", "peak RSS MiB",
         "cache MiB"], runs,
        lambda r: [str(r["rows"]), r["layout"], r["mode"],
                   f"{r['seconds']['training_set'] - r['seconds']['adapter']:.1f}",
                   f"{r['seconds']['first_batch']:.1f}", str(r["peak_rss_mib"]),
                   str(r["cache_mib"])]))
    return {"runs": runs}


if __name__ == "__main__":
    main()
