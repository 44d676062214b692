"""Data tools: convert a source to the normalised JSONL, download a config's data, validate a
config's data (or one data file), inspect it.

    python -m vldft.datatool convert --format llava llava.json out/train.jsonl --image-root imgs/
    python -m vldft.datatool convert --format hf geo.parquet geo.jsonl --columns q=problem,a=answer
    python -m vldft.datatool download configs/qwen25vl_geo.yaml --data-dir /data/vldft
    python -m vldft.datatool validate configs/demo.yaml [key=value ...] [--max-samples N]
    python -m vldft.datatool validate data/geo_demo/train.jsonl [--format F] [--image-root DIR]
    python -m vldft.datatool inspect configs/demo.yaml [key=value ...] --n 3 [--html out.html]
    vldft-data ...                                   (the same, as the installed console script)

``convert`` opens and fully decodes every image it writes a row for, writes image paths relative
to the output's folder (absolute when outside it) and images stored as bytes / PIL as PNG files
into ``<OUT stem>_images/``; videos the same way (a file as its path, checked by decord; a frame
list or folder as its frames, each decoded; a clip's own settings as ``{"video": ..., "fps":
...}``). Bad rows (and undecodable images) are dropped and listed in
``<OUT stem>.skipped.json``; the command then exits 1 unless ``--on-error skip`` was given.
``validate`` exits with 1 when any problem is found; with a config it encodes the samples as
training does and writes ``validation.json`` to ``train.output_dir``; with a data file (JSON /
JSONL / parquet / arrow / folder) it checks its rows and images only, as training reads such a
file (a local source); a file that is missing, unreadable or no file or folder is one line and
exit 2, as for ``convert``. ``convert`` refuses image paths that resolve outside the image root
unless ``--allow-outside-root`` (its input is usually someone else's data). ``inspect`` shows
samples with their trained tokens in ``[[...]]`` and a token-length histogram, with how many
were truncated, shortened by frames (videos) or skipped.

This module sits above the collator and the adapters (``validate`` and ``inspect`` encode
samples as training does), so it is not inside the bottom ``vldft.data`` layer; it imports them
(and torch) only when a command needs them, so ``--help`` and argument errors are immediate.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import io
import json
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vldft.config import Config, ConfigError, DataConfig, SourceConfig, load_config
from vldft.data import DataError, ImageBytes, Sample, open_image
from vldft.data.formats import FORMATS, check_source_path, read_source
from vldft.data.skips import SkipReport
from vldft.data.tables import choice_counts
from vldft.data.validate import ValidationReport, check_sources, media_problem
from vldft.data.video import Video
from vldft.progress import prog_name

if TYPE_CHECKING:
    from vldft.adapters.base import Adapter
    from vldft.collate import Collator, Encoded

CONFIG_SUFFIXES = (".yaml", ".yml")
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


def _path_string(path: Path, base: Path) -> str:
    """``path`` for the JSONL: relative to ``base`` when below it, else absolute."""
    path = path.resolve()
    try:
        return os.path.relpath(path, base) if path.is_relative_to(base) else str(path)
    except ValueError:
        return str(path)


def _write_image(img, out_dir: Path, base: Path, name: str) -> str:
    """Path string for the JSONL (``_path_string``); an image held as bytes / PIL is written
    to ``out_dir/<name>.png`` first."""
    if isinstance(img, (str, Path)):
        return _path_string(Path(img), base)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    if isinstance(img, ImageBytes) and img.data.startswith(b"\x89PNG\r\n\x1a\n"):
        path.write_bytes(img.data)  # already PNG: keep the bytes exactly
    else:
        open_image(img).save(path, format="PNG")
    return _path_string(path, base)


def _write_video(video: Video, out_dir: Path, base: Path, name: str) -> Any:
    """A ``videos`` entry that reads back to ``video``: a file as its path, a frame list (or
    folder) as the list of its frames' paths (frames held as bytes / PIL written as images
    are, ``<name>_<j>.png``), and with per-clip options an object ``{"video": ..., **options}``
    (``vldft.data._video`` reads it; ``nframes`` is already min_frames = max_frames)."""
    if video.file is not None:
        ref: Any = _path_string(Path(video.file), base)
    else:
        ref = [_write_image(f, out_dir, base, f"{name}_{j:04d}")
               for j, f in enumerate(video.frames)]
    return {"video": ref, **video.options} if video.options else ref


def sample_to_row(s: Sample, out_dir: Path, base: Path, index: int) -> dict:
    images = [_write_image(img, out_dir, base, f"{index:06d}_{k}")
              for k, img in enumerate(s.images)]
    row = {"id": s.id, "messages": s.messages, "images": images}
    if s.videos:
        row["videos"] = [_write_video(v, out_dir, base, f"{index:06d}_v{k}")
                         for k, v in enumerate(s.videos)]
    if s.answer is not None:
        row["answer"] = s.answer
    if s.kind is not None:
        row["kind"] = s.kind
    return row


def output_folder(path: Path, flag: str) -> None:
    """Make ``path``'s folder (a ``DataError`` naming ``flag`` when it cannot be made or
    written), so a long read or encode does not end in a traceback at the write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{flag} {path}: its folder cannot be made ({e.strerror or e})"
                        ) from None
    if path.is_dir():
        raise DataError(f"{flag} {path}: a folder; give a file name")
    if not os.access(path.parent, os.W_OK):
        raise DataError(f"{flag} {path}: its folder {path.parent} is not writable")


def cmd_convert(args: argparse.Namespace) -> int:
    src = SourceConfig(path=args.src, format=args.format, image_root=args.image_root,
                       columns=args.columns_parsed, prompt_template=args.prompt_template,
                       system=args.system, split=args.split,
                       allow_outside_root=args.allow_outside_root)
    on_error = args.on_error or "skip"  # not given: find every bad row, then fail if any
    output_folder(Path(args.out), "OUT")  # before any row is read
    report = SkipReport()
    with choice_counts() as notes:
        samples = read_source(src, Path.cwd(), on_error=on_error, report=report)
    samples = [s for s in samples if decodes(s, src.label, on_error, report)]
    out = Path(args.out)
    base, img_dir = out.parent.resolve(), out.parent / f"{out.stem}_images"
    with open(out, "w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            f.write(json.dumps(sample_to_row(s, img_dir, base, i), ensure_ascii=False) + "\n")
    # rows, as the mixture table counts them (a row with an image and a clip counts in both),
    # with the files they hold
    with_img, with_vid = sum(bool(s.images) for s in samples), sum(bool(s.videos) for s in samples)
    n_img, n_vid = sum(len(s.images) for s in samples), sum(len(s.videos) for s in samples)
    videos = f"{with_vid} with video: {n_vid} clip{'s' * (n_vid != 1)}; " if n_vid else ""
    print(f"wrote {len(samples)} samples ({with_img} with images: {n_img} "
          f"image{'s' * (n_img != 1)}; {videos}"
          f"{sum(not s.images and not s.videos for s in samples)} text-only) to {out}")
    print(choices_summary(notes, samples), end="")
    skipped = out.with_name(f"{out.stem}.skipped.json")
    if not report.total:
        skipped.unlink(missing_ok=True)  # an earlier run's list would no longer be true
        return 0 if samples else 1
    skipped.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    print(report.summary("dropped"))
    print(f"every dropped row (file, line, id, reason): {skipped}")
    print(outside_root_hint(report), end="")
    if args.on_error != "skip":
        print(f"error: {report.total} rows dropped, so {out} is incomplete; fix them, or pass "
              "--on-error skip to accept dropping them (exit 0)", file=sys.stderr)
        return 1
    return 0 if samples else 1


def choices_summary(notes: dict[str, list[str]], samples: list[Sample] | None = None) -> str:
    """Lines counting the rows (of ``samples``, when given) whose choices were appended after
    the question or were already in it (``vldft.data.tables.choice_counts``), one example each."""
    kept = None if samples is None else {f"{s.origin} (id {s.id})" for s in samples}
    out = ""
    for kind, what in (("appended", "choices appended after the question"),
                       ("in_question", "choices already listed in the question (not repeated)")):
        rows = [w for w in notes.get(kind, ()) if kept is None or w in kept]
        if rows:
            out += f"{what}: {len(rows)} rows, e.g. {rows[0]}\n"
    return out


def decodes(sample: Sample, label: str, on_error: str, report: SkipReport) -> bool:
    """Whether every image and video of ``sample`` decodes (``media_problem``); if not, an
    ``image_corrupt`` / ``video_corrupt`` DataError (``on_error="raise"``) or a skip."""
    problem = media_problem(sample)
    if problem is None:
        return True
    reason, name, message = problem
    where = f"{sample.origin} (id {sample.id})"
    e = DataError(f"{where}: {message}", reason, where, message, image=name)
    if on_error == "raise":
        raise e
    report.add_error(label, e, where, sample.id)
    return False


def outside_root_hint(report: SkipReport) -> str:
    """A line for reports with ``image_outside_root`` rows (convert's override)."""
    if not report.count(reason="image_outside_root"):
        return ""
    return ("convert refuses image paths outside the image root (--image-root, default the "
            "input's folder); pass --allow-outside-root if these paths are intended\n")


# -- validate ----------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> Config:
    """The config, with its downloaded sources present and of what it asks for (else one line
    naming them: ``origin_conflict``)."""
    from vldft.data.download import origin_conflict

    cfg = load_config(args.config, args.overrides)
    conflict = origin_conflict(cfg, args.overrides)
    if conflict:
        raise ConfigError(conflict)
    missing = cfg.missing_sources(overrides=args.overrides)
    if missing:
        raise ConfigError(missing)
    return cfg


def _load(args: argparse.Namespace) -> tuple[Config, Adapter]:
    from vldft.adapters import load_adapter

    cfg = _config(args)
    return cfg, load_adapter(cfg.model)


def validate(cfg: Config, adapter: Adapter | None = None, max_samples: int | None = None
             ) -> ValidationReport:
    """Check all sources of ``cfg`` (``vldft.data.validate.check_sources``); with ``adapter``,
    also encode up to ``max_samples`` samples per source exactly as training would (None:
    all): lengths, truncation and template / tokenizer mismatches become findings."""
    encode = None
    if adapter is not None:
        from vldft.collate import Collator

        collator = Collator.from_config(adapter, cfg)
        encode = functools.partial(encode_finding, collator)
    return check_sources(cfg, max_samples, encode)


SKIP_REASONS = {  # Collator Skipped.reason (already a code) -> what the report says
    "too_long": "longer than data.max_length",
    "image_cut": "truncation would cut an image block",
    "video_cut": "a video that cannot be shortened by frames to fit, and truncation would cut it",
    "truncated_empty": "no trained tokens left after truncation",
}


def encode_finding(collator: Collator, sample: Sample) -> tuple[str | None, str, int | None]:
    """(reason or None, message, token count) of encoding one sample for training."""
    from vldft.collate import SampleError, Skipped

    try:
        enc = collator.encode(sample)
    except SampleError as e:
        reason = ("too_long" if "> data.max_length" in str(e) else
                  e.reason if e.reason == "image_option" else "encode_error")
        return reason, str(e), None
    except Exception as e:  # a processor / image failure is a finding too, not a crash
        return "encode_error", f"sample {sample.id}: {type(e).__name__}: {e}", None
    if isinstance(enc, Skipped):
        return enc.reason, SKIP_REASONS.get(enc.reason, enc.reason), None
    n = len(enc.input_ids)
    if enc.truncated:
        return "truncated", f"truncated to data.max_length={collator.max_length}", n
    if enc.shortened:
        return "video_shortened", (f"videos sampled with fewer frames to fit data.max_length="
                                   f"{collator.max_length}"), n
    return None, "", n


def is_config(path: str) -> bool:
    """A YAML config (by its suffix); anything else ``validate`` reads as a data source."""
    return Path(path).suffix.lower() in CONFIG_SUFFIXES


def data_file_config(args: argparse.Namespace) -> Config:
    """A config holding only the data file of ``validate FILE`` as its one source."""
    if args.overrides:
        raise ConfigError(f"validate {args.config}: key=value overrides need a YAML config; "
                          "for a data file use --format / --image-root")
    src = SourceConfig(path=args.config, format=args.format or "auto",
                       image_root=args.image_root)  # as training reads a local file
    src.validate("validate FILE")
    check_source_path(src, Path.cwd())  # missing / unreadable: one line (as convert), no report
    return Config(data=DataConfig(sources=[src]), base_dir=str(Path.cwd()))


def cmd_validate(args: argparse.Namespace) -> int:
    file_mode = not is_config(args.config)
    if not file_mode:
        given = [f"--{k.replace('_', '-')}" for k in ("format", "image_root")
                 if getattr(args, k)]
        if given:
            raise ConfigError(f"{', '.join(given)}: only for a data file; a config sets these "
                              "per source (data.sources[i].format / image_root)")
    if file_mode:  # rows and images; no model, so no tokenizer / length checks
        cfg, adapter = data_file_config(args), None
    elif args.no_encode:  # file checks only: no tokenizer, no model to load
        cfg, adapter = _config(args), None
    else:
        cfg, adapter = _load(args)
    with choice_counts() as notes:
        report = validate(cfg, adapter, args.max_samples)
    print(report.summary())
    print(choices_summary(notes), end="")
    path = Path(args.report) if args.report else (
        None if file_mode else cfg.resolve(cfg.train.output_dir) / "validation.json")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {path}")
    return 0 if report.ok else 1


# -- download ----------------------------------------------------------------------------------
def cmd_download(args: argparse.Namespace) -> int:
    from vldft.data.download import download

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(str(Path(args.data_dir).resolve()))}")
    cfg = load_config(args.config, overrides)
    sources = {}
    for item in args.source:
        if "=" not in item:
            raise ConfigError(f"--source {item!r}: expected NAME=LOCAL_FOLDER")
        name, folder = item.split("=", 1)
        sources[name] = folder
    revisions = {}
    for item in args.revision:
        name, _, rev = item.partition("=")
        if not name or not rev:
            raise ConfigError(f"--revision {item!r}: expected BENCH=REV")
        revisions[name] = rev
    try:
        done = download(cfg, sources, force=args.force, revisions=revisions)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except (ConnectionError, OSError) as e:  # the hub clients raise these (and subclasses)
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(download needs the Hugging Face hub: run it where huggingface.co is reachable, "
              "or pass --source NAME=LOCAL_FOLDER)", file=sys.stderr)
        return 2
    print(f"[vldft] {len(done['sources'])} source(s) in {cfg.data_root()}, "
          f"{len(done['benchmarks'])} benchmark copy(ies) in {cfg.benchmark_root()}")
    extra = " ".join(shlex.quote(o) for o in args.overrides
                     if not o.startswith("data.data_dir="))
    print(f"[vldft] train offline with: python -m vldft.train {shlex.quote(args.config)} "
          f"{extra + ' ' if extra else ''}data.data_dir={shlex.quote(str(cfg.data_root()))}")
    return 0


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


def token_counts(enc: Encoded, adapter: Adapter) -> dict[str, int]:
    """Tokens of a sample by kind: image / video pads (``video`` only for a sample with
    video tokens), trained response tokens, and the rest (prompt and template)."""
    from vldft.collate import IGNORE

    ids, labels = enc.input_ids, enc.labels
    image = int((ids == adapter.image_token_id).sum())
    video = int((ids == adapter.video_token_id).sum()) if adapter.video_token_id is not None \
        else 0
    response = int((labels != IGNORE).sum())
    counts = {"total": len(ids), "prompt": len(ids) - response - image - video,
              "response": response, "image": image}
    return {**counts, "video": video} if video else counts


def _png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def html_sample(s: Sample, enc: Encoded, adapter: Adapter, video=None) -> str:
    """One sample of ``inspect --html``: its images, each video's frames as training decodes
    them with ``video`` (``data.video``; a strip per clip, the time of each frame under it),
    and its tokens (trained ones green, image / video runs collapsed)."""
    from PIL import Image

    from vldft.collate import token_runs

    tok, out = adapter.tokenizer, []
    for kind, ids in token_runs(enc, adapter.image_token_id, adapter.video_token_id):
        if kind in ("image", "video"):
            text = f"{tok.decode(ids[:1])}\u00d7{len(ids)}"
        else:
            text = tok.decode(ids, skip_special_tokens=False)
        out.append(f'<span class="{kind}">{html.escape(text)}</span>')
    imgs = [_png(adapter.load_image(img)) for img in s.images]
    for v in s.videos if video is not None else ():
        dec = adapter.load_video(v, video)
        pics = [Image.fromarray(f.permute(1, 2, 0).contiguous().numpy()) for f in dec.frames]
        frames = [f'<figure>{_png(p)}<figcaption>{i / dec.fps:.2f} s</figcaption></figure>'
                  for p, i in zip(pics, dec.indices, strict=True)]
        imgs.append(f'<div class="clip" title="{html.escape(v.name)}">{"".join(frames)}</div>')
    counts = token_counts(enc, adapter)
    shortened = " (videos shortened by frames to fit: training takes fewer than shown)" \
        if enc.shortened else ""
    return (f'<div class="sample"><h3>{html.escape(s.id)} <small>({html.escape(s.source)}; '
            f'{counts}){shortened}</small></h3><div class="imgs">{"".join(imgs)}</div>'
            f'<pre>{"".join(out)}</pre></div>')


HTML_HEAD = """<!doctype html><meta charset="utf-8"><title>vldft inspect</title><style>
body{font-family:sans-serif} .sample{display:flex;flex-wrap:wrap;gap:1em;border-top:1px solid #ccc}
h3{width:100%} pre{white-space:pre-wrap;flex:1;min-width:30em}
.train{background:#c8f7c5} .mask{color:#888} .image,.video{background:#cde;color:#036}
img{max-width:320px;border:1px solid #ccc} .clip{display:flex;gap:2px;overflow-x:auto}
.clip img{max-width:120px} figure{margin:0;font-size:small;text-align:center}</style>
<p>trained tokens <span class="train">green</span>, masked <span class="mask">grey</span>,
image and video tokens <span class="image">collapsed</span>; a video as the frames training
decodes, with their times</p>
"""


def cmd_inspect(args: argparse.Namespace) -> int:
    from vldft.collate import Collator, SampleError, Skipped, show

    if not is_config(args.config):
        raise ConfigError(f"inspect {args.config}: takes a YAML config (its model's tokenizer "
                          "encodes the samples); to check a data file alone: validate FILE")
    if args.html:
        output_folder(Path(args.html), "--html")  # before the model loads and samples encode
    cfg, adapter = _load(args)
    d, coll = cfg.data, Collator.from_config(adapter, cfg)
    report = SkipReport()
    lengths, pages = [], []
    skipped: Counter = Counter()  # encode-time skips by (source, reason)
    truncated = shortened = 0
    notes: dict[str, list[str]] = {}
    for src in cfg.all_sources():
        with choice_counts() as found:
            samples = read_source(src, Path(cfg.base_dir), d.on_error, report)
        for kind, rows in found.items():
            notes.setdefault(kind, []).extend(rows)
        for i, s in enumerate(samples[: max(args.n, args.max_samples)]):
            try:
                enc = coll.encode(s)
            except SampleError as e:  # an image / clip that cannot be decoded: as training
                # with data.on_error=skip would count it (a traceback ended inspect)
                enc = Skipped(s.id, e.reason, s.source, s.origin, e.image, str(e))
            if isinstance(enc, Skipped):
                skipped[(s.source, enc.reason)] += 1
                if i < args.n:
                    print(f"--- {s.source} / {s.id}: skipped ({enc.reason})")
                continue
            lengths.append(len(enc.input_ids))
            truncated += bool(enc.truncated)
            shortened += bool(enc.shortened)
            if i < args.n:
                fewer = " (videos shortened by frames)" if enc.shortened else ""
                print(f"--- {s.source} / {s.id} ({s.origin}){fewer}: "
                      f"{token_counts(enc, adapter)}")
                print(show(enc, adapter.tokenizer, adapter.image_token_id,
                           adapter.video_token_id))
                if args.html:
                    pages.append(html_sample(s, enc, adapter, d.video))
    print(f"\ntoken lengths of {len(lengths)} samples (data.max_length {d.max_length}):")
    print(histogram(lengths))
    if truncated:
        print(f"truncated to data.max_length: {truncated} of these {len(lengths)} samples "
              f"(data.overlong={d.overlong})")
    if shortened:
        print(f"shortened by frames to fit data.max_length: {shortened} of these {len(lengths)} "
              "samples (their videos sampled with fewer frames, as training does)")
    if skipped:
        print(f"skipped while encoding (not in the histogram): {sum(skipped.values())} samples: "
              + ", ".join(f"{n} {src}/{why} ({SKIP_REASONS.get(why, why)})"
                          for (src, why), n in sorted(skipped.items())))
    if report.total:
        print(report.summary())
    print(choices_summary(notes), end="")
    if args.html:
        Path(args.html).write_text(HTML_HEAD + "\n".join(pages), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


# -- entry point -------------------------------------------------------------------------------
def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed in a shell -> newline, tab, backslash (other
    backslashes, e.g. LaTeX ``\\frac``, stay)."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


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
    c.add_argument("--prompt-template", type=unescape,
                   help="user prompt, e.g. '{question}\\nAnswer with A-D.' (\\n, \\t and \\\\ "
                   "are a newline, a tab and a backslash); {choices}: the options; without it, "
                   "a row's choices go after the question")
    c.add_argument("--system", help="system prompt added to every sample")
    c.add_argument("--split", default="train", help="split of an HF dataset (default train)")
    c.add_argument("--on-error", default=None, choices=("skip", "raise"),
                   help="bad rows (and images that do not decode): by default every one is "
                   "dropped, listed in <OUT stem>.skipped.json, and the command exits 1; skip: "
                   "the same, accepted (exit 0); raise: stop at the first")
    c.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths that resolve (after .. and symlinks) outside the "
                   "image root (default: such a row is dropped as image_outside_root)")
    for name, text, what in (
            ("validate", "check every source of a config, or one data file (exit 1 on "
             "problems)", "YAML config (.yaml / .yml), or a data file / folder / parquet: its "
             "rows and images are checked (no model: as --no-encode)"),
            ("inspect", "show encoded samples and a token-length histogram", "YAML config")):
        s = sub.add_parser(name, help=text)
        s.add_argument("config", metavar="CONFIG" if name == "inspect" else "CONFIG_OR_FILE",
                       help=what)
        s.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                       help="optional overrides of the config's values (as for vldft.train)")
    d = sub.add_parser("download", help="fetch a config's hub sources and the benchmark "
                       "copies it needs into a data dir (run where the hub is reachable)")
    d.add_argument("config", help="YAML config")
    d.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="optional overrides of the config's values (as for vldft.train)")
    d.add_argument("--data-dir", help="where the sources go (data.data_dir; default: the "
                   "config's, else $VLDFT_DATA_DIR, else ~/.cache/vldft/data)")
    d.add_argument("--source", action="append", default=[], metavar="NAME=LOCAL_FOLDER",
                   help="read a source or benchmark from a local folder standing in for its "
                   "hub repository (repeatable)")
    d.add_argument("--revision", action="append", default=[], metavar="BENCH=REV",
                   help="read a benchmark copy from this branch, tag or commit of its hub "
                   "repository (repeatable; a training source takes data.sources[i].revision)")
    d.add_argument("--force", action="store_true", help="fetch again over existing copies")
    v = sub.choices["validate"]
    v.add_argument("--max-samples", type=int, default=None,
                   help="check images of / encode at most N samples per source (default: all)")
    v.add_argument("--no-encode", action="store_true", help="skip the tokenizer / length checks")
    v.add_argument("--format", default=None, choices=("auto", *FORMATS),
                   help="a data file's format (default: detect)")
    v.add_argument("--image-root", help="a data file's image folder (default: its folder)")
    v.add_argument("--report", help="also write the findings as JSON here (default: "
                   "train.output_dir/validation.json for a config, none for a data file)")
    i = sub.choices["inspect"]
    i.add_argument("--n", type=int, default=3, help="samples shown per source (default 3)")
    i.add_argument("--max-samples", type=int, default=500,
                   help="samples per source encoded for the histogram (default 500)")
    i.add_argument("--html", help="also write an HTML page with images and coloured tokens")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a subcommand's options and ``key=value`` overrides in any order
    (``parse_intermixed_args``, which argparse refuses on the parser holding subcommands)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in commands:
        sub = commands[argv[0]]
        args = sub.parse_intermixed_args(argv[1:])
        args.command = argv[0]
        for flag, low in (("n", 0), ("max_samples", 0)):
            value = getattr(args, flag, None)
            if value is not None and value < low:
                sub.error(f"--{flag.replace('_', '-')} must be >= {low}, got {value}")
        return args
    return parser.parse_args(argv)  # --help, or no / an unknown command: argparse's message


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vldft.progress import quiet_if_logging

    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    if args.command == "convert":
        try:
            args.columns_parsed = parse_columns(args.columns)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        return {"convert": cmd_convert, "validate": cmd_validate, "inspect": cmd_inspect,
                "download": cmd_download}[args.command](args)
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
