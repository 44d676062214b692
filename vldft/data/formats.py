"""Read any supported source (``SourceConfig``) into normalised ``Sample``s.

    samples = read_source(src, base_dir)                           # first bad row: DataError
    report = SkipReport()
    samples = read_source(src, base_dir, on_error="skip", report=report)
    print(report.summary())

Formats and how ``format: auto`` (``detect_format``) recognises them:

- ``normalized``: the kit's JSONL (``vldft.data``). Detected: ``.jsonl`` whose first 50 rows have
  ``messages`` with roles system/user/assistant and string or typed-part contents only.
- ``llava``: JSON list / JSONL of ``{"id", "image", "conversations": [{"from", "value"}]}``.
  Detected: a ``conversations`` key and either ``image`` or neither ``images`` nor ``system``.
- ``sharegpt`` (LLaMA-Factory): ``conversations`` (from/value) or ``messages`` (role/content),
  ``images`` list, ``system`` column. Detected: ``conversations`` + ``images``/``system``, or a
  ``.json`` file with ``messages``.
- ``messages`` (OpenAI / ms-swift / LLaMA-Factory v1): JSONL ``messages`` with typed parts,
  inline images or ``<image>`` strings, ``images`` list. Detected: ``.jsonl`` + ``messages``
  that is not ``normalized``.
- ``hf``: a ``.parquet`` / ``.arrow`` file, a ``save_to_disk`` folder, a folder of parquet files,
  a hub id ``owner/name`` (when no such local path exists), or JSON rows with question / answer
  and image columns. Detected: those files / folders; JSON rows with an ``images``/``image`` key.
- ``geometry3k``: a folder of ``<id>/data.json`` + ``img_diagram.png`` (or ``<split>/<id>/``).
  Detected: sub-folders holding ``data.json``.
- ``text_math``: JSON / JSONL / parquet with problem/solution (NuminaMath), query/response
  (MetaMathQA) or question/answer (GSM8K). Detected: those columns and no image column.

Row formats are in ``vldft.data.chat``, tables (hf, text_math, geometry3k) in
``vldft.data.tables``. Relative ``path`` / ``image_root`` resolve against ``base_dir``; image
paths default to the data file's directory. A source with a ``hub`` key (downloaded data), or
with ``allow_outside_root: false``, may not name an image that resolves outside its image root
(``image_outside_root``: ``../../etc/passwd`` is a bad row, never opened). Every sample gets
``source`` (the source label), ``origin`` (file:line / file row N) and an id (the row's ``id``,
else ``<file>:<line>``).

Errors: a source-level problem (file missing or unreadable, undetectable format, an unknown
``columns`` field in any format, a mapped column that does not exist) always raises
``DataError``. A row-level problem raises with ``on_error="raise"`` (naming file, line, id and
key) or, with ``on_error="skip"``, is recorded in the ``SkipReport`` with its reason code
(``vldft.data.REASONS``); nothing is dropped silently.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vldft.config import FORMATS as CONFIG_FORMATS
from vldft.config import SourceConfig, hub_source, is_hub_id, resolve_path
from vldft.data import (
    LINE_BREAK,
    ROLES,
    DataError,
    Sample,
    fail,
    image_name,
    image_problem,
    iter_jsonl,
    line_of,
    sample_from_row,
)
from vldft.data.chat import CONVERTERS
from vldft.data.skips import SkipReport
from vldft.data.tables import (
    DEFAULTS,
    TEXT_MATH_LAYOUTS,
    Row,
    check_columns,
    check_template,
    geometry3k_row,
    iter_geometry3k,
    open_table,
    qa_row,
    resolve_columns,
)
from vldft.data.video import video_problem

FORMATS = tuple(f for f in CONFIG_FORMATS if f != "auto")  # one list, in vldft.config
DETECT_ROWS = 50  # rows looked at by detect_format

# -- detection ---------------------------------------------------------------------------------
def _is_typed(content: Any) -> bool:
    return isinstance(content, str) or isinstance(content, list) and all(
        isinstance(p, dict) and (p.get("type") in ("image", "video") and len(p) == 1
                                 or p.get("type") == "text" and "text" in p) for p in content)


def _typed_only(row: Any) -> bool:
    msgs = row.get("messages") if isinstance(row, dict) else None
    return isinstance(msgs, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and _is_typed(m.get("content"))
        for m in msgs)


def detect_row_format(row: Any, suffix: str, where: str, more: list[Any] = ()) -> str:
    """Format of JSON rows from the first row's keys (see the module table); ``more`` rows
    (the next few) must also be typed-only for ``normalized``, and their keys count for
    ``llava`` vs ``sharegpt``."""
    keys = set(row) if isinstance(row, dict) else set()
    if "messages" in keys and {"problem", "solution"} <= keys:  # NuminaMath-CoT, as its parquet
        return "text_math"  # (its messages repeat problem / solution; the answer is extracted)
    if "messages" in keys:
        if suffix == ".jsonl" and all(_typed_only(r) for r in [row, *more]):
            return "normalized"
        return "sharegpt" if suffix == ".json" else "messages"
    if "conversations" in keys:  # over the first few rows: a text-only first row of a
        # ShareGPT file has no `images` key (read as llava, every row's images were dropped)
        seen = keys.union(*(set(r) for r in more if isinstance(r, dict)))
        return ("llava" if seen & {"image", "video"} or not seen & {"images", "videos", "system"}
                else "sharegpt")
    if keys & set(DEFAULTS["question"]) and keys & {"answer", "solution", "response"}:
        return "hf" if keys & {"images", "image"} else "text_math"
    raise DataError(f"{where}: cannot tell the format from the first row (keys "
                    f"{sorted(keys)}); set the source's format to one of {FORMATS}",
                    "bad_source", where)


def detect_format(path: Path) -> str:
    """The format of a file / folder (extension, first row keys, folder layout) or DataError."""
    path = Path(path)
    if not path.exists():
        if is_hub_id(str(path)):
            return "hf"
        raise DataError(f"data source not found: {path}", "missing_file", str(path))
    if path.is_dir():
        if any((d / "data.json").is_file() for d in _subdirs(path)) or any(
                (d / "data.json").is_file() for s in _subdirs(path) for d in _subdirs(s)):
            return "geometry3k"
        marks = ("dataset_info.json", "state.json", "dataset_dict.json")
        first = next(path.rglob("*.parquet"), None)
        if first is not None and not any((path / m).is_file() for m in marks):
            try:
                return table_format(_table_columns(first))
            except (OSError, ValueError) as e:  # pyarrow errors subclass these
                raise DataError(f"{first}: cannot read as a table: {e}", "bad_source",
                                str(first)) from None
        if any((path / m).is_file() for m in marks):
            return "hf"
        raise DataError(f"{path}: cannot tell the format of this folder (no geometry3k problem "
                        "folders, no save_to_disk dataset, no parquet files)", "bad_source",
                        str(path))
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".arrow"):
        try:
            cols = _table_columns(path)
        except (OSError, ValueError) as e:  # pyarrow errors subclass these
            raise DataError(f"{path}: cannot read as a table: {e}", "bad_source",
                            str(path)) from None
        return table_format(cols)
    if suffix in (".json", ".jsonl"):
        head = list(itertools.islice(iter_json(path), DETECT_ROWS))
        if not head:
            fail(str(path), "bad_source", "no rows")
        rows = [(where, r) for where, _, r in head if not isinstance(r, DataError)]
        if not rows:  # (a bad row among good ones is the reader's: counted, or an error)
            raise head[0][2]
        return detect_row_format(rows[0][1], suffix, rows[0][0], [r for _, r in rows[1:]])
    raise DataError(f"{path}: cannot tell the format from the extension {suffix!r}; set the "
                    f"source's format to one of {FORMATS}", "bad_source", str(path))


def table_format(cols: list[str]) -> str:
    """The format of a table (parquet / arrow) from its column names: ``conversations``
    (LLaVA-OneVision-Data: id, image, conversations) is ``llava``; question / answer columns
    with an image column ``hf``; without one ``text_math`` when a text-math layout fits."""
    if "conversations" in cols:
        return "llava" if "image" in cols or not {"images", "system"} & set(cols) else "sharegpt"
    if {"images", "image"} & set(cols):
        return "hf"
    return "text_math" if any(set(lay) <= set(cols) for lay in TEXT_MATH_LAYOUTS) else "hf"


def _is_table(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in (".parquet", ".arrow")


def _subdirs(path: Path) -> list[Path]:
    return [d for d in sorted(path.iterdir()) if d.is_dir()][:50]


def _table_columns(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    from datasets import Dataset

    return list(Dataset.from_file(str(path)).column_names)


# -- readers -----------------------------------------------------------------------------------
def iter_json(path: Path) -> Iterator[Row]:
    """Rows of a JSONL file, a JSON list, or a JSON object of id -> row (.json that is really
    JSONL is read as JSONL). JSONL is decoded line by line: a malformed line, or one with an
    invalid UTF-8 byte, is yielded as a ``bad_json`` DataError (file, line, byte offset) and
    the other lines are still read. A JSON document with an invalid byte is a source error."""
    if path.suffix.lower() == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            first = next((ln for ln in LINE_BREAK.split(raw) if ln.strip()), b"")
            # (a byte order mark is no part of the first row: JSONL with a BOM is JSONL too)
            if not _is_json(first.decode("utf-8", "replace").removeprefix("\ufeff")):
                bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
                at = e.start + bom
                where = f"{path}:{line_of(raw, at)}"
                detail = f"not UTF-8 text: invalid byte 0x{raw[at]:02x} at byte offset {at}"
                raise DataError(f"{where}: {detail}", "bad_json", where, detail,
                                offset=at) from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                first = next((ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()), "")
                if not _is_json(first):
                    detail = f"invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
                    raise DataError(f"{path}:{e.lineno}: {detail}", "bad_json",
                                    f"{path}:{e.lineno}", detail) from None
            else:
                yield from _json_items(path, data)
                return
    for lineno, row in iter_jsonl(path):  # JSONL: streamed line by line
        yield f"{path}:{lineno}", f"{path.name}:{lineno}", row


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _json_items(path: Path, data: Any) -> Iterator[Row]:
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        items = list(data.items())  # {"id": row, ...} (MathVista / MathVerse style)
    else:
        items = list(enumerate(data if isinstance(data, list) else [data]))
    for key, row in items:
        yield f"{path} item {key}", f"{path.name}[{key}]", row


def _reader(fmt: str, path: Path, src: SourceConfig, hub: bool
            ) -> tuple[Iterator[Row], Callable[[Any, str], dict]]:
    """Rows of the source and the function that normalises one of them."""
    check_columns(src.columns, str(path))  # every format: a row format maps ``id`` only
    if fmt in CONVERTERS:
        unused = [f"columns.{k}" for k in src.columns if k != "id"]
        unused += ["prompt_template"] if src.prompt_template is not None else []
        if unused:  # they were ignored without a word
            raise DataError(f"{path}: {', '.join(unused)}: the {fmt} format takes its turns "
                            "from its rows as written (columns maps only id here); columns and "
                            "prompt_template apply to the hf, text_math and geometry3k formats",
                            "bad_source", str(path))
        if not hub and _is_table(path) and fmt != "normalized":  # e.g. LLaVA-OneVision parquet
            try:
                _, rows = open_table(path, src.path, src.split, hub)
            except (OSError, ValueError) as e:  # pyarrow errors subclass these
                if isinstance(e, DataError):
                    raise
                raise DataError(f"{path}: cannot read as a table: {e}", "bad_source",
                                str(path)) from None
            return rows, CONVERTERS[fmt]
        if path.is_dir():
            raise DataError(f"{path}: {fmt} format needs a JSON / JSONL file (or a parquet / "
                            "arrow table)", "bad_source")
        return iter_json(path), CONVERTERS[fmt]
    check_template(src.prompt_template, str(path))
    cols, tmpl = src.columns, src.prompt_template
    if fmt == "geometry3k":
        if not path.is_dir():
            fail(str(path), "bad_source", "geometry3k format needs a folder")
        return iter_geometry3k(path, src.split), lambda raw, loc: geometry3k_row(
            raw, cols, tmpl, loc)
    if fmt == "text_math" and "images" in cols:
        raise DataError(f"{path}: text_math is text-only; use format hf for an images column",
                        "bad_source", str(path))
    if not hub and path.suffix.lower() in (".json", ".jsonl"):
        return iter_json(path), lambda raw, loc: qa_row(raw, None, cols, fmt, tmpl, loc)
    try:
        names, rows = open_table(path, src.path, src.split, hub)
    except DataError:
        raise
    except (OSError, ValueError) as e:  # corrupt parquet / arrow (pyarrow errors subclass these)
        raise DataError(f"{path}: cannot read as a table: {e}", "bad_source", str(path),
                        detail=f"cannot read as a table: {e}") from None
    resolved = resolve_columns(names, cols, fmt, src.path if hub else str(path))
    return rows, lambda raw, loc: qa_row(raw, resolved, cols, fmt, tmpl, loc)


def _row_id(raw: Any, columns: dict[str, str]) -> str | None:
    if not isinstance(raw, dict):
        return None
    for key in (columns.get("id"), "id", "pid"):
        if key and raw.get(key) is not None:
            return str(raw[key])
    return None


def _add_system(row: dict, system: str | None) -> None:
    """Prepend the source's system prompt unless the row has its own (the row wins)."""
    msgs = row.get("messages")
    if system and isinstance(msgs, list) and not (
            msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": system})


def _media_problem(sample: Sample, loc: str) -> DataError | None:
    """An ``image_corrupt`` / ``video_corrupt`` error for the sample's first image / video that
    does not open (``image_problem`` / ``video_problem``), or None."""
    checks = [("image", image_name(x), image_problem, x) for x in sample.images]
    checks += [("video", v.name, video_problem, v) for v in sample.videos]
    for kind, name, check, item in checks:
        why = check(item)
        if why is not None:
            detail = f"{kind} {name} cannot be opened ({why})"
            return DataError(f"{loc}: {detail}", f"{kind}_corrupt", loc, detail, image=name)
    return None


def check_source_path(src: SourceConfig, base_dir: Path) -> None:
    """A source's path that is missing, that is no file or folder (a device, a pipe), or a file
    that cannot be opened: a ``DataError`` in one line naming it (an unreadable file ended in a
    traceback, a device was read for a format). A hub dataset id passes."""
    if hub_source(src.path, src.format, base_dir):
        return
    path, label = resolve_path(src.path, base_dir), src.label
    if not path.exists():
        raise DataError(f"data source {label!r} not found: {path}", "missing_file", str(path))
    if not path.is_dir():
        if not path.is_file():
            raise DataError(f"data source {label!r} is not a file or folder: {path}",
                            "bad_source", str(path))
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise DataError(f"data source {label!r} cannot be read ({e.strerror or e}): {path}",
                            "bad_source", str(path)) from None


def image_root(src: SourceConfig, base_dir: Path) -> Path:
    """The folder a source's relative image / video paths start from: its ``image_root``, else
    its own folder (a file's: the folder holding it); a hub dataset's: ``base_dir``."""
    if src.image_root:
        return resolve_path(src.image_root, base_dir)
    if hub_source(src.path, src.format, base_dir):
        return Path(base_dir)
    path = resolve_path(src.path, base_dir)
    return path if path.is_dir() else path.parent


def image_roots(cfg) -> dict[str, Path]:
    """:func:`image_root` of every configured source (``cfg.all_sources()``), by label."""
    return {src.label: image_root(src, Path(cfg.base_dir)) for src in cfg.all_sources()}


def read_source(src: SourceConfig, base_dir: Path, on_error: str = "raise",
                report: SkipReport | None = None, verify_images: bool = False) -> list[Sample]:
    """All samples of one source, normalised and checked (see the module docstring).

    ``verify_images``: also open every image and run PIL's ``verify()`` (headers and PNG
    checksums, no decoding; ~20-40 us per image on data/geo_demo), so a corrupt image is a
    ``image_corrupt`` row error here (file, line, id, image) instead of a failure when the
    training loop first reaches it. Training reads with it on."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "skip" and report is None:
        raise ValueError("on_error='skip' needs a SkipReport to record the skipped rows in")
    path = resolve_path(src.path, base_dir)
    hub = hub_source(src.path, src.format, base_dir)
    check_source_path(src, base_dir)
    fmt = src.format if src.format != "auto" else ("hf" if hub else detect_format(path))
    if fmt not in FORMATS:
        raise DataError(f"{src.path}: unknown format {fmt!r}; choose from {FORMATS}",
                        "bad_source")
    root = image_root(src, base_dir)
    allow_outside = (src.allow_outside_root if src.allow_outside_root is not None
                     else src.hub is None)  # downloaded data stays inside its root
    rows, convert = _reader(fmt, path, src, hub)
    samples: list[Sample] = []
    n_skipped = 0
    for where, default_id, raw in rows:
        sid = _row_id(raw, src.columns) or default_id
        loc = f"{where} (id {sid})"
        try:
            if isinstance(raw, DataError):
                raise raw
            row = convert(raw, loc)
            row["id"] = sid
            _add_system(row, src.system)
            sample = sample_from_row(row, where, root, allow_outside_root=allow_outside)
        except DataError as e:
            if on_error == "raise":
                raise
            assert report is not None
            report.add_error(src.label, e, loc, sid)
            n_skipped += 1
            continue
        sample.source = src.label
        problem = _media_problem(sample, loc) if verify_images else None
        if problem is not None:
            if on_error == "raise":
                raise problem
            assert report is not None
            report.add_error(src.label, problem, loc, sample.id)
            n_skipped += 1
            continue
        samples.append(sample)
    if not samples and not n_skipped:
        fail(str(path), "bad_source", "no samples")
    return samples
