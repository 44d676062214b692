"""The keys of the start-up cache (``vldft.data.cache``): what identifies the rows a config
reads, and the length estimates of those rows for one tokenizer and pixel setting.

The rows' key: the code that reads them (vldft.data / config / adapters sources and the
versions of pyarrow, datasets, Pillow, transformers, tokenizers), ``data.on_error``, the base
directory, every source field that changes rows (all but ``weight``, ``max_samples`` and the
pixel bounds) with the path, size and mtime of every file of the source (every file under a
folder), and with ``data.decontaminate`` the benchmarks, their folder and every file of their
local copies. The lengths' key: the rows' key, the model family and adapter, the tokenizer (its
whole serialisation and the chat templates), the image processor, ``model.min_pixels`` /
``max_pixels`` and the per-source pixel bounds (``data.max_length`` changes no estimate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from vldft.config import hub_source, resolve_path, source_pixels

VERSION = 4  # of the stored layout (2: videos' options, 3: image parts' keys, 4: images /
# videos per row and rows' content keys); older: rebuilt
MIX_FIELDS = ("weight", "max_samples", "min_pixels", "max_pixels")  # not in the rows' key


def _add(h, obj: Any) -> None:
    h.update(json.dumps(obj, sort_keys=True, default=str).encode() + b"\n")


def stat(path: str | bytes) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def file_identities(path: Path):
    """(name under ``path``, size, mtime_ns) of a file, or of every file under a folder in a
    fixed order; (``""``, -1, -1) when nothing is there."""
    if not path.is_dir():
        yield ("", *stat(path))
        return
    for top, dirs, files in os.walk(path, followlinks=True):  # as the readers' rglob
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(top, name)
            yield (os.path.relpath(full, path), *stat(full))


def code_identity() -> str:
    """A hash of the code that reads rows and estimates lengths, and of the libraries it uses:
    a change of either rebuilds."""
    from importlib.metadata import version

    import vldft

    pkg = Path(vldft.__file__).parent
    h = hashlib.sha256()
    files = [f for sub in ("data", "config", "adapters") for f in sorted((pkg / sub).rglob("*.py"))]
    for f in files + [pkg / "scoring.py"]:
        h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    _add(h, [version(d) for d in ("pyarrow", "datasets", "pillow", "transformers", "tokenizers")])
    return h.hexdigest()


def benchmark_names(setting: str | list[str]) -> list[str]:
    from vldft.data.decontam import benchmarks_for

    return benchmarks_for(setting)


def rows_key(cfg) -> tuple[str | None, str]:
    """(the key of the rows ``cfg`` reads, ""), or (None, why they cannot be cached)."""
    h = hashlib.sha256()
    base = Path(cfg.base_dir)
    _add(h, {"version": VERSION, "code": code_identity(), "on_error": cfg.data.on_error,
             "base_dir": [str(base), str(base.resolve())]})
    for src in cfg.all_sources():
        if hub_source(src.path, src.format, base):
            return None, (f"source {src.label!r} is a hub dataset id; download it "
                          "(vldft-data download) to cache it")
        path = resolve_path(src.path, base)
        fields = {k: v for k, v in dataclasses.asdict(src).items() if k not in MIX_FIELDS}
        _add(h, {"source": fields, "path": str(path)})
        for entry in file_identities(path):
            _add(h, entry)
    if cfg.data.decontaminate != "off":
        names, root = benchmark_names(cfg.data.decontaminate), cfg.benchmark_root()
        _add(h, {"decontaminate": cfg.data.decontaminate, "benchmarks": names,
                 "root": str(root)})
        for name in names:
            for entry in file_identities(root / name):
                _add(h, [name, *entry])
    return h.hexdigest()[:32], ""


def tokenizer_identity(adapter) -> str:
    """A hash of the tokenizer (its full serialisation, without the truncation / padding state
    that encoding calls leave behind) and of the chat templates."""
    tok = adapter.tokenizer
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        if backend.truncation is not None or backend.padding is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())  # a copy, without that state
            backend.no_truncation()
            backend.no_padding()
        h.update(backend.to_str().encode())
    else:
        _add(h, sorted(tok.get_vocab().items()))
    _add(h, [type(tok).__name__, tok.special_tokens_map, getattr(tok, "chat_template", None),
             getattr(adapter.processor, "chat_template", None)])
    return h.hexdigest()


def lengths_key(cfg, adapter, rkey: str) -> str:
    """The key of the length estimates of the rows ``rkey``."""
    image_proc = getattr(adapter.processor, "image_processor", None)
    h = hashlib.sha256()
    _add(h, {"rows": rkey, "family": cfg.model.family,
             "adapter": f"{type(adapter).__module__}.{type(adapter).__qualname__}",
             "tokenizer": tokenizer_identity(adapter), "image_token": adapter.image_token,
             "template_kwargs": adapter.template_kwargs,
             "pixels": [cfg.model.min_pixels, cfg.model.max_pixels],
             "source_pixels": sorted(source_pixels(cfg).items()),
             "video": dataclasses.asdict(cfg.data.video),
             "image_processor": image_proc.to_dict() if image_proc is not None else None})
    return h.hexdigest()[:32]
