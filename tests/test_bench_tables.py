"""Every figure in the tables of bench/RESULTS.md and docs/performance.md comes from a raw file
under bench/results/ (issue 25: no table number without a measurement behind it), row by row.

Each table names its raw files: the paths under ``bench/results/`` (a file, or a folder for all
its files) cited between the table and its section heading, else under the headings above it.
A table that cites none fails, and its rows are looked up in the cited files only.

**Row-aware.** Every number of a table row, in any cell (labels and cells with words included:
"531 s (188 rows/s)", "packed 4,096 tokens", scientific notation such as "3.475720e-05"), must
be found in ONE record of a cited raw file, each at its shown rounding and each from a raw
value of its own ("11.32, 11.32" needs two). A record is a JSON object at any depth (a result
row) with everything below it, less its sub-collections (a list of objects, or an object of
two or more objects: records of their own), plus the file's run header: the numbers of its
name ("run2"), the top object's ``args`` and its own numbers (a row's label may quote a run,
an argument, a tolerance; a run-wide figure such as a peak RSS). A text file's record is a
line. A number is found when a raw value, as it is or scaled by a unit the figure's cell or
column header names (x 100 for "%": a fraction shown as a percentage; x 1000 for "ms":
seconds shown as milliseconds; / 2^30 for "GiB" / "GB", / 2^20 for "MiB": bytes), rounds to
it at the figure's own precision (31.6 matches 31.55 to 31.65; a raw value written as a tie,
0.5585 s, may be shown as 558 or 559 ms). Known blind spots: a small integer (a run number,
"3 x 2" runs x steps) usually matches some small value of the record; words in labels
("chunked_c2048") are not compared.

**Derived figures** (a ratio, difference or mean worked out by hand from a raw file's values),
in a table or in the prose, are marked in the doc by ``(derived)`` right after the figure and
its unit ("6.0x (derived)", "~2.7 GiB (derived)") and listed in ``DERIVED`` with how to
recompute them from the raw files; the test recomputes each (a marked figure not listed fails).
A table row's other figures still trace to one record. Figures in the prose that are not
marked are not checked (docs/performance.md and bench/RESULTS.md cite their raw files beside
them).
"""

from __future__ import annotations

import bisect
import json
import re
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = [ROOT / "bench" / "RESULTS.md", ROOT / "docs" / "performance.md"]
RESULTS = ROOT / "bench" / "results"
# a number as a doc shows it: 1,374 / 31.6 / 3.475720e-05 / 9.0x; not part of a name (fp32,
# Qwen2.5-VL, 3b, 16k)
NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
                    r"(?![a-wyzA-Z_\d])")
# a number inside a raw file's text (a JSON string, a text file's line): also inside names
RAW_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# unit named in a cell or its column header -> the scale from a raw value to the figure
UNIT_SCALES = {re.compile(r"%"): 100.0, re.compile(r"\bms\b"): 1000.0,
               re.compile(r"\bGi?B\b"): 1 / 2**30, re.compile(r"\bMiB\b"): 1 / 2**20}
DERIVED_MARK = "(derived)"
DERIVED_FIGURE = re.compile(rf"({NUMBER.pattern})(?:\s*(?:x|%|GiB|ms|s)\b)?\s*\(derived\)")
# tables whose numbers are no measurements, by (doc, first header cell): why
NOT_MEASURED = {
    ("performance.md", "switch"): "config switches and what they save: its numbers are package "
                                  "versions (liger-kernel 0.8.5, transformers 5.22), no figures",
}


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
    """The numbers of a cell, words or not, less the ones marked derived (``DERIVED``)."""
    return NUMBER.findall(DERIVED_FIGURE.sub("", cell))


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


# ----------------------------------------------------------------------------- raw records
def _collection(obj) -> bool:
    """A list holding objects, or an object of two or more objects: records side by side."""
    if isinstance(obj, list):
        return any(isinstance(v, dict) for v in obj)
    return isinstance(obj, dict) and len(obj) >= 2 and all(
        isinstance(v, dict) for v in obj.values())


def _own(obj) -> list[float]:
    """The numbers of ``obj`` and everything below it, its sub-collections left out."""
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, str):
        return [float(n) for n in RAW_NUMBER.findall(obj)]
    if _collection(obj):
        return []
    values = obj.values() if isinstance(obj, dict) else obj
    return [x for v in values for x in _own(v)]


def _header(top) -> list[float]:
    """A file's run header: the top object's ``args`` (the command line's arguments) and its
    own numbers (not its strings, lists or objects: a command line, load averages)."""
    if not isinstance(top, dict):
        return []
    return _own(top.get("args", {})) + [
        float(v) for v in top.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _walk(obj, header: list[float], out: list[list[float]]) -> None:
    """Append every record below ``obj`` (itself included) with ``header`` to ``out``."""
    if isinstance(obj, dict) and not _collection(obj):
        out.append(header + _own(obj))
    if isinstance(obj, (dict, list)):
        for v in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(v, (dict, list)):
                _walk(v, header, out)


_CACHE: dict[Path, list[list[float]]] = {}


def records(path: Path) -> list[list[float]]:
    """The records of a raw file (module docstring), each as its numbers, sorted: a JSON
    file's objects, a JSON-lines file's lines' objects, a text file's lines."""
    if path in _CACHE:
        return _CACHE[path]
    text = path.read_text(errors="replace")
    name = [float(n) for n in RAW_NUMBER.findall(path.name)]
    found: list[list[float]] = []
    try:
        top = json.loads(text)
        _walk(top, name + _header(top), found)
    except ValueError:
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"line": line}
            _walk(obj if isinstance(obj, dict) else {"line": obj}, name, found)
    _CACHE[path] = [sorted(rec) for rec in found]
    return _CACHE[path]


def value_and_tolerance(figure: str) -> tuple[float, float]:
    """A figure's value and half a unit of its last shown digit ("31.6": 0.05; "2.0e-08":
    0.05e-08; "1,374": 0.5), widened a little for the bisection (``rounds`` decides)."""
    shown = Decimal(figure.replace(",", ""))
    return float(shown), float(Decimal(5).scaleb(shown.as_tuple().exponent - 1)) * (1 + 1e-6)


def rounds(figure: str, value: float, scale: float = 1.0) -> bool:
    """``value`` as the raw file writes it, x ``scale``, rounds to ``figure`` at its last digit
    (0.5585 s is 558 or 559 ms: a raw value already rounded to a tie may go either way, never
    to 557 or 560)."""
    shown = Decimal(figure.replace(",", ""))
    with localcontext() as ctx:
        ctx.prec = 80
        exact = Decimal(repr(value)) * (Decimal(1) / Decimal(round(1 / scale)) if scale < 1
                                        else Decimal(scale))
        return abs(exact - shown) <= Decimal(5).scaleb(shown.as_tuple().exponent - 1)


def scales(*texts: str) -> tuple[float, ...]:
    """1 and the scales of the units ``texts`` (a cell, its column header) name."""
    return (1.0,) + tuple(s for unit, s in UNIT_SCALES.items()
                          if any(unit.search(t) for t in texts))


def matches(figure: str, raw: list[float], by: tuple[float, ...] = (1.0,)) -> set[int]:
    """Indices of the numbers of ``raw`` (sorted) that, times one of the scales ``by``, round
    to ``figure``."""
    value, tol = value_and_tolerance(figure)
    out = set()
    for s in by:
        k = bisect.bisect_left(raw, (value - tol) / s)
        while k < len(raw) and raw[k] <= (value + tol) / s:
            if rounds(figure, raw[k], s):
                out.add(k)
            k += 1
    return out


def traced(figure: str, raw: list[float], by: tuple[float, ...] = (1.0,)) -> bool:
    """``figure`` rounds from a number of ``raw`` (sorted) times one of the scales ``by``."""
    return bool(matches(figure, raw, by))


def rounds_to(figure: str, value: float) -> bool:
    return rounds(figure, value)


def unmatched(figs: list[tuple[str, tuple[float, ...]]], raw: list[float]) -> list[str]:
    """The figures of a row left over when each takes its own number of ``raw`` (one raw
    value backs one figure: "11.32, 11.32" needs two), as many matched as can be (Kuhn's
    augmenting paths)."""
    options = [matches(f, raw, by) for f, by in figs]
    owner: dict[int, int] = {}

    def take(i: int, seen: set[int]) -> bool:
        for k in options[i] - seen:
            seen.add(k)
            if k not in owner or take(owner[k], seen):
                owner[k] = i
                return True
        return False

    done = {i for i in range(len(figs)) if options[i] and take(i, set())}
    return [f for i, (f, _) in enumerate(figs) if i not in done]


# ----------------------------------------------------------------------------- derived figures
def _rows(rel: str, **match) -> dict:
    """The one row of ``bench/results/<rel>``'s ``rows`` whose keys equal ``match``."""
    rows = [r for r in json.loads((RESULTS / rel).read_text())["rows"]
            if all(r.get(k) == v for k, v in match.items())]
    assert len(rows) == 1, (rel, match, len(rows))
    return rows[0]


def _slope(framework: str, key: str) -> float:
    slopes = json.loads((RESULTS / "2026-11-26_cpu/results_train_vs_trl_scaling.json"
                         ).read_text())["slopes"]
    return next(s[key]["per_1k_tokens"] for s in slopes if s["framework"] == framework)


H200, PACK_CPU = "2026-11-30_h200", "2026-11-30_cpu/results_packing_cpu.json"


def _h200_step_ratios() -> list[float]:
    """Chunked / naive step time at 2k, 4k, 8k in the two H200 calls."""
    return [_rows(f"{H200}/results_gpu_train_run{run}.json", method="chunked", seq_len=n)
            ["step_s"] / _rows(f"{H200}/results_gpu_train_run{run}.json", method="naive",
                               seq_len=n)["step_s"] for run in (1, 2) for n in (2048, 4096, 8192)]


def _pack_cpu(key: str) -> dict:
    return json.loads((RESULTS / PACK_CPU).read_text())["rows"][key]


def _padded_varlen_over_sdpa() -> float:
    rel = f"{H200}/results_packing_gpu_run2.json"
    return (_rows(rel, config="padded_b4_varlen")["tokens_per_s"]
            / _rows(rel, config="padded_b4")["tokens_per_s"])


def _naive_8k_minus_chunked() -> float:
    rel = f"{H200}/results_gpu_train_run1.json"
    return (_rows(rel, method="naive", seq_len=8192)["peak_mem_gib"]
            - _rows(rel, method="chunked", seq_len=8192)["peak_mem_gib"])


def _naive_ckpt_slope() -> float:
    rel = "2026-11-27_h100/results_gpu_train_h100_ckpt_fused.json"
    a, b = (_rows(rel, method="naive", seq_len=n) for n in (4096, 16384))
    return (b["peak_mem_gib"] - a["peak_mem_gib"]) / (b["targets"] - a["targets"]) * 1000


def _longest_ratio() -> float:
    search = json.loads((RESULTS / "2026-11-27_h100/results_gpu_train_h100.json").read_text()
                        )["search"]
    fit = {s["method"]: s["longest_fit"] for s in search}
    return fit["chunked"] / fit["naive"]


# (doc, figure as shown before its "(derived)"): the value recomputed from the raw files
DERIVED = {
    ("RESULTS.md", "6.0"): lambda: _slope("trl", "step_s") / _slope("vldft", "step_s"),
    ("RESULTS.md", "3.7"): lambda: _slope("trl", "peak_rss_gib") / _slope("vldft",
                                                                           "peak_rss_gib"),
    ("RESULTS.md", "2.7"): _naive_ckpt_slope,
    ("RESULTS.md", "6.4"): _longest_ratio,
    ("RESULTS.md", "1.37"): lambda: (_pack_cpu("packed_varlen")["useful_tokens_per_s"]
                                     / _pack_cpu("padded_grouped")["useful_tokens_per_s"]),
    ("RESULTS.md", "4.1"): _padded_varlen_over_sdpa,
    ("RESULTS.md", "0.98"): lambda: sum(_h200_step_ratios()) / 6,
    ("RESULTS.md", "17"): _naive_8k_minus_chunked,
    ("performance.md", "6.4"): _longest_ratio,
    ("performance.md", "17"): _naive_8k_minus_chunked,
    ("performance.md", "4.1"): _padded_varlen_over_sdpa,
    ("performance.md", "2.3"): lambda: (_pack_cpu("packed_sdpa")["median_s"]
                                        / _pack_cpu("packed_varlen")["median_s"]),
}


# ----------------------------------------------------------------------------- the check
def untraced(path: Path) -> list[str]:
    """One line per table row whose numbers no single record of its cited files holds (the
    figures the closest record misses), and per table that cites no raw file."""
    missing = []
    text = path.read_text()
    for line, head, body in tables(text):
        if (path.name, head[0]) in NOT_MEASURED or not any(
                figures(cell) for row in body for cell in row):
            continue  # no figures
        sources = cited(text.splitlines(), line)
        if not sources:
            missing.append(f"{path.name}:{line} [{' | '.join(head)}]: cites no raw file")
            continue
        recs = [r for p in sources for r in records(p)]
        for r, row in enumerate(body):
            figs = [(f, scales(cell, head[c] if c < len(head) else ""))
                    for c, cell in enumerate(row) for f in figures(cell)]
            if not figs:
                continue
            best: list[str] | None = None
            for rec in recs:
                lost = unmatched(figs, rec)
                if best is None or len(lost) < len(best):
                    best = lost
                if not lost:
                    break
            if best:
                missing.append(f"{path.name}:{line + 2 + r} [{row[0]}]: no record holds "
                               f"{', '.join(best)} with the row's other figures")
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_table_row_is_one_raw_record(doc: Path) -> None:
    assert tables(doc.read_text()), f"{doc}: no tables found"
    missing = untraced(doc)
    assert not missing, "table rows with no raw record behind them:\n" + "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_derived_figures_are_recomputed(doc: Path) -> None:
    """Every figure marked derived is listed in DERIVED and is what the raw values give, at its
    shown rounding; every DERIVED entry is still marked in its doc."""
    marked = DERIVED_FIGURE.findall(doc.read_text())
    listed = {fig for d, fig in DERIVED if d == doc.name}
    assert set(marked) == listed, f"marked, not in DERIVED: {set(marked) - listed}; " \
                                  f"in DERIVED, not marked: {listed - set(marked)}"
    wrong = {fig: DERIVED[(doc.name, fig)]() for fig in marked}
    wrong = {fig: v for fig, v in wrong.items() if not rounds(fig, v)}
    assert not wrong, f"{doc.name}: derived figures the raw files do not give: {wrong}"


def test_exempt_tables_exist() -> None:
    """Every NOT_MEASURED entry names a table that is there (a stale entry exempts nothing)."""
    heads = {(d.name, head[0]) for d in DOCS for _, head, _ in tables(d.read_text())}
    assert set(NOT_MEASURED) <= heads, set(NOT_MEASURED) - heads


def test_the_checker_itself() -> None:
    assert figures("**1,374**") == ["1,374"] and figures("31.6 %") == ["31.6"]
    assert figures("43.7 / 61.7 GiB") == ["43.7", "61.7"] and figures("9.0x") == ["9.0"]
    assert figures("12,275-12,334") == ["12,275", "12,334"]
    assert figures("out of memory") == [] and figures("packed 8,192 (1)") == ["8,192", "1"]
    assert figures("531 s (188 rows/s)") == ["531", "188"]
    assert figures("3.475720e-05") == ["3.475720e-05"] and figures("1e-4") == ["1e-4"]
    assert figures("fp32, 3b, Qwen2.5-VL, 16k") == [] and figures("1.4x (derived)") == []
    assert figures("8 GiB, ~2.7 GiB (derived)") == ["8"]
    assert DERIVED_FIGURE.findall("is 6.0x (derived) and ~2.7 GiB (derived); 3 (derived)") == [
        "6.0", "2.7", "3"]
    assert value_and_tolerance("2.0e-08") == pytest.approx((2e-8, 0.05e-8))
    assert rounds("558", 0.5585, 1000.0) and rounds("559", 0.5585, 1000.0)  # a tie
    assert not rounds("557", 0.5585, 1000.0) and not rounds("560", 0.5585, 1000.0)
    assert rounds("31.6", 0.3164, 100.0) and not rounds("31.7", 0.3164, 100.0)
    assert rounds("104", 104.5) and rounds("4.00", 4.0 * 2**30, 1 / 2**30)
    assert unmatched([("11.32", (1.0,)), ("11.32", (1.0,))], [11.32, 11.33]) == ["11.32"]
    assert unmatched([("2.25", (1.0,)), ("2.3", (1.0,))], [2.241, 2.251]) == ["2.3"]
    raw = sorted([0.3160, 1.38342, 12334.0, 3.4757204e-05, 22.5])
    pct, ms = scales("31.6 %", "MFU"), scales("1,383", "step (ms)")
    assert pct == (1.0, 100.0) and ms == (1.0, 1000.0) and scales("1.2", "x") == (1.0,)
    assert traced("31.6", raw, pct) and traced("1,383", raw, ms) and traced("1.38", raw)
    assert not traced("31.6", raw) and not traced("1,383", raw)  # no unit named, no scale
    assert traced("12,334", raw) and not traced("12,335", raw) and not traced("31.7", raw, pct)
    assert traced("3.475720e-05", raw) and not traced("3.475721e-05", raw)
    assert not traced("2.1e-08", raw)  # 22.5 / 2^30 is, but no GiB is named
    # one record per result row (with the run header); figures of two rows together are not
    top = {"args": {"pack": 8192}, "rows": [{"method": "a", "step_s": 0.558, "mem": 43.71},
                                            {"method": "b", "step_s": 0.500, "mem": 50.63,
                                             "ops": [{"s": 0.7}]}], "peak": 989}
    recs: list[list[float]] = []
    _walk(top, _header(top), recs)
    assert [sorted(r) for r in recs] == [[989.0, 989.0, 8192.0, 8192.0], [989.0, 8192.0, 8192.0], [
        0.558, 43.71, 989.0, 8192.0], [0.5, 50.63, 989.0, 8192.0], [0.7, 989.0, 8192.0]]
    assert any(all(traced(f, sorted(r)) for f in ("0.558", "43.71", "8,192")) for r in recs)
    assert not any(all(traced(f, sorted(r)) for f in ("0.558", "50.63")) for r in recs)
    assert not any(all(traced(f, sorted(r)) for f in ("0.5", "0.7")) for r in recs)
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
