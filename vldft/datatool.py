"""Data tools: convert a source to the normalised JSONL, validate a config's data, inspect it.

    python -m vldft.datatool convert --format llava llava.json out/train.jsonl --image-root imgs/
    python -m vldft.datatool convert --format hf geo.parquet geo.jsonl --columns q=problem,a=answer
    python -m vldft.datatool validate configs/demo.yaml [key=value ...] [--max-samples N]
    python -m vldft.datatool inspect configs/demo.yaml [key=value ...] --n 3 [--html out.html]
    vldft-data ...                                   (the same, as the installed console script)

``convert`` writes image paths relative to the output's folder (absolute when outside it) and
writes images stored as bytes / PIL as PNG files into ``<OUT stem>_images/``. ``validate``
exits with 1 when any problem is found and writes ``validation.json`` to ``train.output_dir``.
``inspect`` shows samples with their trained tokens in ``[[...]]`` and a token-length histogram.
This module sits above the collator and the adapters (``validate`` and ``inspect`` encode
samples as training does), so it is not inside the bottom ``vldft.data`` layer.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import json
import os
import sys
from pathlib import Path

from vldft.adapters import load_adapter
from vldft.adapters.base import Adapter
from vldft.collate import IGNORE, Collator, Encoded, SampleError, Skipped, show, token_runs
from vldft.config import Config, ConfigError, SourceConfig, load_config
from vldft.data import DataError, ImageBytes, Sample, open_image
from vldft.data.formats import FORMATS, read_source
from vldft.data.skips import SkipReport
from vldft.data.validate import ValidationReport, check_sources
from vldft.progress import prog_name

ALIASES = {"q": "question", "a": "answer", "s": "solution", "img": "images", "i": "images",
           "m": "messages", "c": "choices"}


# -- convert -----------------------------------------------------------------------------------
def parse_columns(text: str | None) -> dict[str, str]:
    """"q=problem,a=answer" -> {"question": "problem", "answer": "answer"}."""
    out: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise ValueError(f"--columns: {item!r} is not FIELD=COLUMN (e.g. q=problem)")
        key, col = (s.strip() for s in item.split("=", 1))
        out[ALIASES.get(key, key)] = col
    return out


def _write_image(img, out_dir: Path, base: Path, name: str) -> str:
    """Path string for the JSONL: relative to ``base`` when below it, else absolute."""
    if isinstance(img, (str, Path)):
        path = Path(img).resolve()
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = (out_dir / f"{name}.png").resolve()
        if isinstance(img, ImageBytes) and img.data.startswith(b"\x89PNG\r\n\x1a\n"):
            path.write_bytes(img.data)  # already PNG: keep the bytes exactly
        else:
            open_image(img).save(path, format="PNG")
    try:
        return os.path.relpath(path, base) if path.is_relative_to(base) else str(path)
    except ValueError:
        return str(path)


def sample_to_row(s: Sample, out_dir: Path, base: Path, index: int) -> dict:
    images = [_write_image(img, out_dir, base, f"{index:06d}_{k}")
              for k, img in enumerate(s.images)]
    row = {"id": s.id, "messages": s.messages, "images": images}
    if s.answer is not None:
        row["answer"] = s.answer
    if s.kind is not None:
        row["kind"] = s.kind
    return row


def cmd_convert(args: argparse.Namespace) -> int:
    src = SourceConfig(path=args.src, format=args.format, image_root=args.image_root,
                       columns=args.columns_parsed, prompt_template=args.prompt_template,
                       system=args.system, split=args.split)
    report = SkipReport()
    samples = read_source(src, Path.cwd(), on_error=args.on_error, report=report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base, img_dir = out.parent.resolve(), out.parent / f"{out.stem}_images"
    with open(out, "w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            f.write(json.dumps(sample_to_row(s, img_dir, base, i), ensure_ascii=False) + "\n")
    n_img = sum(len(s.images) for s in samples)
    print(f"wrote {len(samples)} samples ({n_img} images, "
          f"{sum(not s.images for s in samples)} text-only) to {out}")
    print(report.summary())
    return 0 if samples else 1


# -- validate ----------------------------------------------------------------------------------
def _load(args: argparse.Namespace) -> tuple[Config, Adapter]:
    cfg = load_config(args.config, args.overrides)
    return cfg, load_adapter(cfg.model)


def validate(cfg: Config, adapter: Adapter | None = None, max_samples: int | None = None
             ) -> ValidationReport:
    """Check all sources of ``cfg`` (``vldft.data.validate.check_sources``); with ``adapter``,
    also encode up to ``max_samples`` samples per source exactly as training would (None:
    all): lengths, truncation and template / tokenizer mismatches become findings."""
    encode = None
    if adapter is not None:
        collator = Collator.from_config(adapter, cfg)
        encode = functools.partial(encode_finding, collator)
    return check_sources(cfg, max_samples, encode)


SKIP_REASONS = {  # Collator Skipped.reason (already a code) -> what the report says
    "too_long": "longer than data.max_length",
    "image_cut": "truncation would cut an image block",
    "truncated_empty": "no trained tokens left after truncation",
}


def encode_finding(collator: Collator, sample: Sample) -> tuple[str | None, str, int | None]:
    """(reason or None, message, token count) of encoding one sample for training."""
    try:
        enc = collator.encode(sample)
    except SampleError as e:
        reason = "too_long" if "> data.max_length" in str(e) else "encode_error"
        return reason, str(e), None
    except Exception as e:  # a processor / image failure is a finding too, not a crash
        return "encode_error", f"sample {sample.id}: {type(e).__name__}: {e}", None
    if isinstance(enc, Skipped):
        return enc.reason, SKIP_REASONS.get(enc.reason, enc.reason), None
    n = len(enc.input_ids)
    if enc.truncated:
        return "truncated", f"truncated to data.max_length={collator.max_length}", n
    return None, "", n


def cmd_validate(args: argparse.Namespace) -> int:
    if args.no_encode:  # file checks only: no tokenizer, no model to load
        cfg, adapter = load_config(args.config, args.overrides), None
    else:
        cfg, adapter = _load(args)
    report = validate(cfg, adapter, args.max_samples)
    print(report.summary())
    out = cfg.resolve(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(report.to_dict(), indent=2))
    print(f"wrote {out / 'validation.json'}")
    return 0 if report.ok else 1


# -- inspect -----------------------------------------------------------------------------------
def histogram(values: list[int], bins: int = 10, width: int = 40) -> str:
    """Text histogram: one line per bin, ``#`` bars scaled to the fullest bin."""
    if not values:
        return "(no values)"
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for v in values:
        counts[min((v - lo) // step, bins - 1)] += 1
    top = max(counts)
    return "\n".join(f"  {lo + i * step:>6}-{lo + (i + 1) * step - 1:<6} "
                     f"{'#' * round(width * c / top):<{width}} {c}"
                     for i, c in enumerate(counts) if lo + i * step <= hi)


def token_counts(enc: Encoded, image_token_id: int) -> dict[str, int]:
    ids, labels = enc.input_ids, enc.labels
    image = int((ids == image_token_id).sum())
    response = int((labels != IGNORE).sum())
    return {"total": len(ids), "prompt": len(ids) - response - image, "response": response,
            "image": image}


def html_sample(s: Sample, enc: Encoded, adapter: Adapter) -> str:
    tok, out = adapter.tokenizer, []
    for kind, ids in token_runs(enc, adapter.image_token_id):
        if kind == "image":
            text = f"{tok.decode(ids[:1])}\u00d7{len(ids)}"
        else:
            text = tok.decode(ids, skip_special_tokens=False)
        out.append(f'<span class="{kind}">{html.escape(text)}</span>')
    imgs = []
    for img in s.images:
        buf = io.BytesIO()
        adapter.load_image(img).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        imgs.append(f'<img src="data:image/png;base64,{data}">')
    counts = token_counts(enc, adapter.image_token_id)
    return (f'<div class="sample"><h3>{html.escape(s.id)} <small>({html.escape(s.source)}; '
            f'{counts})</small></h3><div class="imgs">{"".join(imgs)}</div>'
            f'<pre>{"".join(out)}</pre></div>')


HTML_HEAD = """<!doctype html><meta charset="utf-8"><title>vldft inspect</title><style>
body{font-family:sans-serif} .sample{display:flex;flex-wrap:wrap;gap:1em;border-top:1px solid #ccc}
h3{width:100%} pre{white-space:pre-wrap;flex:1;min-width:30em}
.train{background:#c8f7c5} .mask{color:#888} .image{background:#cde;color:#036}
img{max-width:320px;border:1px solid #ccc}</style>
<p>trained tokens <span class="train">green</span>, masked <span class="mask">grey</span>,
image tokens <span class="image">collapsed</span></p>
"""


def cmd_inspect(args: argparse.Namespace) -> int:
    cfg, adapter = _load(args)
    d, coll = cfg.data, Collator.from_config(adapter, cfg)
    report = SkipReport()
    lengths, pages = [], []
    for src in cfg.all_sources():
        samples = read_source(src, Path(cfg.base_dir), d.on_error, report)
        for i, s in enumerate(samples[: max(args.n, args.max_samples)]):
            enc = coll.encode(s)
            if isinstance(enc, Skipped):
                if i < args.n:
                    print(f"--- {s.source} / {s.id}: skipped ({enc.reason})")
                continue
            lengths.append(len(enc.input_ids))
            if i < args.n:
                print(f"--- {s.source} / {s.id} ({s.origin}): "
                      f"{token_counts(enc, adapter.image_token_id)}")
                print(show(enc, adapter.tokenizer, adapter.image_token_id))
                if args.html:
                    pages.append(html_sample(s, enc, adapter))
    print(f"\ntoken lengths of {len(lengths)} samples (data.max_length {d.max_length}):")
    print(histogram(lengths))
    if report.total:
        print(report.summary())
    if args.html:
        Path(args.html).write_text(HTML_HEAD + "\n".join(pages), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


# -- entry point -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog_name("vldft.datatool", "vldft-data"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a source to the normalised JSONL")
    c.add_argument("src", help="file, folder, parquet / arrow, save_to_disk dir or hub id")
    c.add_argument("out", help="output JSONL (images go to <stem>_images/ next to it)")
    c.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                   help="input format (default: detect)")
    c.add_argument("--image-root", help="folder relative image paths start from")
    c.add_argument("--columns", help="field=column list, e.g. q=problem,a=answer "
                   "(fields: question/q, answer/a, solution/s, images/img, messages/m, "
                   "choices/c, id)")
    c.add_argument("--prompt-template", help="user prompt, e.g. '{question}\\nAnswer with A-D.'")
    c.add_argument("--system", help="system prompt added to every sample")
    c.add_argument("--split", default="train", help="split of an HF dataset (default train)")
    c.add_argument("--on-error", default="skip", choices=("skip", "raise"),
                   help="bad rows: skip and report (default) or stop at the first")
    for name, text in (("validate", "check every source of a config (exit 1 on problems)"),
                       ("inspect", "show encoded samples and a token-length histogram")):
        s = sub.add_parser(name, help=text)
        s.add_argument("config", help="YAML config")
        s.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                       help="optional overrides of the config's values (as for vldft.train)")
    v = sub.choices["validate"]
    v.add_argument("--max-samples", type=int, default=None,
                   help="encode at most N samples per source (default: all)")
    v.add_argument("--no-encode", action="store_true", help="skip the tokenizer / length checks")
    i = sub.choices["inspect"]
    i.add_argument("--n", type=int, default=3, help="samples shown per source (default 3)")
    i.add_argument("--max-samples", type=int, default=500,
                   help="samples per source encoded for the histogram (default 500)")
    i.add_argument("--html", help="also write an HTML page with images and coloured tokens")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vldft.progress import quiet_if_logging

    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    if args.command == "convert":
        try:
            args.columns_parsed = parse_columns(args.columns)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        return {"convert": cmd_convert, "validate": cmd_validate,
                "inspect": cmd_inspect}[args.command](args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
