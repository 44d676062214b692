"""Skipped rows and validation findings: ``SkipReport`` counts them per (source, reason) with
example locations and lists every one (file, line or row, id, reason, image, message), as
``data_summary.json`` and ``validation.json`` carry them."""

from __future__ import annotations

import re
from typing import Any

from vldft.data import DataError

MAX_EXAMPLES = 10  # example locations kept per (source, reason); summary() shows 3

LOCATION = re.compile(r"^(?P<file>.+?)(?::(?P<line>\d+)| row (?P<row>\d+)| item (?P<item>.+?))?"
                      r"(?: \(id .*\))?$")


def location(where: str) -> dict[str, Any]:
    """``file`` and ``line`` (JSONL), ``row`` (tables) or ``item`` (JSON objects) of a location
    string as DataError / Sample.origin write it ("f.jsonl:501 (id x)", "t.parquet row 3")."""
    m = LOCATION.match(where)
    if not m:
        return {"file": where, "line": None}
    out: dict[str, Any] = {"file": m["file"], "line": int(m["line"]) if m["line"] else None}
    if m["row"] is not None:
        out["row"] = int(m["row"])
    if m["item"] is not None:
        out["item"] = m["item"]
    return out


class SkipReport:
    """Rows skipped (or findings), counted per (source, reason) with example locations, and
    every one of them listed in ``entries`` (file, line, id, reason, image, message)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.examples: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.entries: list[dict[str, Any]] = []

    def add(self, source: str, where: str, reason: str, message: str,
            sample_id: str | None = None, image: str | None = None,
            offset: int | None = None, stage: str = "read") -> None:
        key = (source, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append({"where": where, "message": message})
        self.entries.append(skip_entry(source, where, reason, message, sample_id, image, offset,
                                       stage))

    def add_error(self, source: str, e: DataError, where: str, sample_id: str | None = None,
                  stage: str = "read") -> None:
        """Record a DataError (its location, reason, image and byte offset)."""
        self.add(source, e.where or where, e.reason, e.detail, sample_id, e.image, e.offset,
                 stage)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, source: str | None = None, reason: str | None = None) -> int:
        return sum(n for (s, r), n in self.counts.items()
                   if source in (None, s) and reason in (None, r))

    def by_source(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (source, reason), n in sorted(self.counts.items()):
            out.setdefault(source, {})[reason] = {"count": n,
                                                  "examples": self.examples[(source, reason)]}
        return out

    def summary(self, title: str = "skipped") -> str:
        if not self.counts:
            return f"{title}: nothing"
        lines = [f"{title}: {self.total} rows"]
        for source, reasons in self.by_source().items():
            lines.append(f"  {source}: {sum(r['count'] for r in reasons.values())}")
            for reason, info in reasons.items():
                lines.append(f"    {reason:<16} {info['count']:>6}")
                lines += [f"      {e['where']}: {e['message']}" for e in info["examples"][:3]]
                if info["count"] > 3:
                    lines.append(f"      ... {info['count'] - 3} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "sources": self.by_source(), "entries": self.entries}


def skip_entry(source: str, where: str, reason: str, message: str,
               sample_id: str | None = None, image: str | None = None,
               offset: int | None = None, stage: str = "read") -> dict[str, Any]:
    """One skipped row as data_summary.json lists it: stage (read / encode), source, reason,
    file, line (or row / item), id, image and byte offset (when they apply), message."""
    entry: dict[str, Any] = {"stage": stage, "source": source, "reason": reason,
                             **location(where), "id": sample_id}
    if image is not None:
        entry["image"] = str(image)
    if offset is not None:
        entry["offset"] = offset
    entry["message"] = message
    return entry


def format_entry(e: dict[str, Any]) -> str:
    """One line: "file:line (id X) reason: message [image ...]"."""
    at = e.get("file") or "?"
    if e.get("line") is not None:
        at += f":{e['line']}"
    elif e.get("row") is not None:
        at += f" row {e['row']}"
    elif e.get("item") is not None:
        at += f" item {e['item']}"
    if e.get("id") is not None:
        at += f" (id {e['id']})"
    image = f" [image {e['image']}]" if e.get("image") and e["image"] not in e["message"] else ""
    return f"{at} {e['reason']}: {e['message']}{image}"
