"""Every figure in the tables of bench/RESULTS.md and docs/performance.md comes from a raw file
under bench/results/ (issue 25: no table number without a measurement behind it).

Each table names its raw files: the paths under ``bench/results/`` (a file, or a folder for all
its files) cited between the table and its section heading, else under the headings above it.
A table that cites none fails, and its figures are looked up in the cited files only.

A table cell is a figure when it holds only numbers, units and separators ("1,374", "31.6 %",
"**9.0x**", "43.7 / 61.7 GiB", "12,275-12,334"); cells with words (labels, "out of memory")
are not checked. A figure is traced when some number in a raw file (a JSON value, or a number
in a text file's or a JSON string's text), as it is or scaled by a unit (x 100: a fraction
shown as a percentage; x 1000: seconds shown as milliseconds; / 2^30, / 2^20: bytes shown as
GiB / MiB), rounds to it at the figure's own precision. Ratios of two measured figures are
figures of their own: a table shows one only where its raw file holds it; a ratio worked out by
hand goes in the prose, marked as such.
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = [ROOT / "bench" / "RESULTS.md", ROOT / "docs" / "performance.md"]
RESULTS = ROOT / "bench" / "results"
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")
# what may stand around the numbers of a figure cell
UNITS = re.compile(r"\*\*|`|%|\bx\b|(?<=\d)x\b|\b(?:ms|s|GiB|MiB|GB|TFLOP/s)\b|[-/~()+,≥>= ]")
SCALES = (1.0, 100.0, 1000.0, 1 / 2**30, 1 / 2**20)


def tables(text: str) -> list[tuple[int, list[str], list[list[str]]]]:
    """Markdown tables of ``text``: (line number of the header, header cells, body rows)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(
                r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            head = _cells(lines[i])
            body, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                body.append(_cells(lines[j]))
                j += 1
            out.append((i + 1, head, body))
            i = j
        else:
            i += 1
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def figures(cell: str) -> list[str]:
    """The numbers of a figure cell, [] for any other cell."""
    nums = NUMBER.findall(cell)
    if not nums or UNITS.sub("", NUMBER.sub("", cell)).strip():
        return []
    return nums


CITE = re.compile(r"(?:bench/)?results/[\w./+-]*[\w/]")


def cited(lines: list[str], line: int) -> list[Path]:
    """Raw files a table at ``line`` (1-based) cites: paths in the text from its section's
    heading down to it; if none, in the own text of the enclosing sections (heading to first
    sub-heading), innermost first, then in the text before the first heading. A sibling
    section's citations never count. Folders are expanded."""
    heads = [(k, len(lines[k].split()[0])) for k in range(line - 1) if lines[k].startswith("#")]
    chain, level = [], 99
    for k, lv in reversed(heads):  # the enclosing sections, innermost first
        if lv < level:
            chain.append(k)
            level = lv
    starts = [k for k, _ in heads]
    regions = [(chain[0], line - 1)] if chain else []
    regions += [(k, next((h for h in starts if h > k), line - 1)) for k in chain[1:]]
    regions.append((0, starts[0] if starts else line - 1))
    for a, b in regions:
        found: list[Path] = []
        for m in CITE.findall("\n".join(lines[a:b])):
            path = ROOT / "bench" / m.removeprefix("bench/")
            if path.is_dir():
                found += [p for p in sorted(path.rglob("*")) if p.is_file()]
            elif path.is_file():
                found.append(path)
        if found:
            return found
    return []


_CACHE: dict[Path, list[float]] = {}


def raw_numbers(paths: list[Path] | None = None) -> list[float]:
    """Every number in ``paths`` (default: every raw file under bench/results/), scaled by each
    unit, sorted."""
    if paths is None:
        paths = [p for p in sorted(RESULTS.rglob("*")) if p.is_file()]
    return sorted(v for p in paths for v in _numbers(p))


def _numbers(path: Path) -> list[float]:
    if path in _CACHE:
        return _CACHE[path]
    values: list[float] = []

    def walk(obj) -> None:
        if isinstance(obj, bool):
            return
        if isinstance(obj, (int, float)):
            values.append(float(obj))
        elif isinstance(obj, str):
            values.extend(float(n.replace(",", "")) for n in NUMBER.findall(obj))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    text = path.read_text(errors="replace")
    try:
        walk(json.loads(text))
    except ValueError:
        for line in text.splitlines():
            try:
                walk(json.loads(line))
            except ValueError:
                walk(line)
    _CACHE[path] = [v * s for v in values for s in SCALES]
    return _CACHE[path]


def traced(figure: str, raw: list[float]) -> bool:
    value = float(figure.replace(",", ""))
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    tol = 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12
    k = bisect.bisect_left(raw, value - tol)
    return k < len(raw) and raw[k] <= value + tol


def untraced(path: Path) -> list[str]:
    missing = []
    text = path.read_text()
    for line, head, body in tables(text):
        if not any(figures(cell) for row in body for cell in row):
            continue  # no figures (a table of switches, say)
        sources = cited(text.splitlines(), line)
        if not sources:
            missing.append(f"{path.name}:{line} [{' | '.join(head)}]: cites no raw file")
            continue
        raw = raw_numbers(sources)
        for row in body:
            for col, cell in enumerate(row):
                for fig in figures(cell):
                    if not traced(fig, raw):
                        name = head[col] if col < len(head) else "?"
                        missing.append(f"{path.name}:{line} [{row[0]} / {name}] {fig}")
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_table_figure_is_in_a_raw_file(doc: Path) -> None:
    assert tables(doc.read_text()), f"{doc}: no tables found"
    missing = untraced(doc)
    assert not missing, "figures with no raw file behind them:\n" + "\n".join(missing)


def test_the_checker_itself() -> None:
    assert figures("**1,374**") == ["1,374"] and figures("31.6 %") == ["31.6"]
    assert figures("43.7 / 61.7 GiB") == ["43.7", "61.7"] and figures("9.0x") == ["9.0"]
    assert figures("12,275-12,334") == ["12,275", "12,334"]
    assert figures("out of memory") == [] and figures("packed 8,192 (1)") == []
    assert figures("would need ~19 GiB") == []
    raw = sorted(v * s for v in (0.3160, 1.38342, 12334.0) for s in SCALES)
    assert traced("31.6", raw) and traced("1,383", raw) and traced("1.38", raw)
    assert traced("12,334", raw) and not traced("12,335", raw) and not traced("31.7", raw)
    text = "x\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nmore"
    assert tables(text) == [(3, ["a", "b"], [["1", "2"], ["3", "4"]])]
    doc = ("# A (`bench/results/2026-11-30_h200/`)\n## B\ntext\n| a |\n|---|\n"
           "## C `bench/results/2026-11-27_cpu/results_train_vs_trl.json`\n| a |\n|---|\n"
           "## D\n| a |\n|---|\n# E\n## F\n| a |\n|---|\n")
    lines = doc.splitlines()
    assert {p.parent.name for p in cited(lines, 4)} == {"2026-11-30_h200"}
    assert [p.name for p in cited(lines, 7)] == ["results_train_vs_trl.json"]
    assert {p.parent.name for p in cited(lines, 10)} == {"2026-11-30_h200"}  # the parent's
    assert cited(lines, 14) == []  # a sibling's citation does not count
