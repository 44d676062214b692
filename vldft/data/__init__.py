"""Training samples: the one normalised ``Sample`` every source format is turned into.

A JSONL row (the kit's normalised format, also what ``data/geo_demo`` holds):

    {"id": "geo-train-000000",
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "... Answer: 70"}]}],
     "images": ["images/train_000000.png"],
     "answer": "70"}

``content`` may also be a plain string, where each ``<image>`` marks an image. Image paths are
relative to ``image_root`` (default: the JSONL file's directory). Rows without images are
text-only samples. Every problem raises ``DataError`` naming the file, line and row id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A malformed sample; the message names where it came from."""


@dataclass
class Sample:
    id: str
    messages: list[dict[str, Any]]  # [{"role", "content": [{"type": "text"|"image", ...}]}]
    images: list[Any] = field(default_factory=list)  # paths (or PIL images), in order of use
    answer: str | None = None  # reference final answer, when the source has one
    kind: str | None = None  # optional category (e.g. problem kind) for per-kind reporting


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        parts: list[dict[str, Any]] = []
        for i, chunk in enumerate(content.split("<image>")):
            if i:
                parts.append({"type": "image"})
            if chunk:
                parts.append({"type": "text", "text": chunk})
        return parts
    if not isinstance(content, list):
        raise DataError(f"{where}: content must be a string or a list of parts")
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
            raise DataError(f"{where}: content part {part!r} is not a text or image part")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise DataError(f"{where}: text part without a 'text' string")
    return [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
            for p in content]


def sample_from_row(row: dict[str, Any], where: str, image_root: Path) -> Sample:
    """Normalise one row (already parsed JSON) and check it; ``where`` names it in errors."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        raise DataError(f"{where}: expected an object with a 'messages' list")
    sid = str(row.get("id", where))
    where = f"{where} (id {sid})"
    messages = []
    for i, msg in enumerate(row["messages"]):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {role!r}; valid: {ROLES}")
        messages.append({"role": role, "content": _parts(msg.get("content"), f"{where} msg {i}")})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant turn, nothing to train on")
    images = row.get("images") or []
    if isinstance(images, str):
        images = [images]
    n_parts = sum(p["type"] == "image" for m in messages for p in m["content"])
    if n_parts != len(images):
        raise DataError(f"{where}: {n_parts} image placeholders but {len(images)} images")
    paths = []
    for img in images:
        path = Path(img) if Path(img).is_absolute() else image_root / img
        if not path.is_file():
            raise DataError(f"{where}: image file not found: {path}")
        paths.append(path)
    answer = row.get("answer")
    kind = row.get("kind")
    return Sample(sid, messages, paths, None if answer is None else str(answer),
                  None if kind is None else str(kind))


def load_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Read a JSONL file of normalised rows into Samples (errors name file and line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    root = Path(image_root) if image_root else path.parent
    samples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            samples.append(sample_from_row(row, where, root))
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples
