"""Every document the project cites exists in the repository, and every cited anchor is a heading.

Citations looked for in the project's own text files (code, configs, docs, README, tests):
``docs/<name>.md`` / ``bench/<name>.md`` / ``data/README.md``, each with an optional
``#anchor``, and relative Markdown links ``[text](path.md#anchor)`` in ``.md`` files. Anchors are
GitHub's heading slugs. Nothing may cite the design brief the project does not contain
(``DESIGN.md``), nor, in what users read (README, docs, the package, configs, eval tasks), a
folder outside the repository (``../shared``).
"""

import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg")
CITED = re.compile(r"(?<![\w./-])((?:docs|bench)/[\w.-]+\.md|data/README\.md)(#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s#]+\.md)(#[\w-]+)?\)")
READ_BY_USERS = ("README.md", "docs/", "vldft/", "configs/", "eval/")


def _files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.splitlines()
            if f.endswith(TEXT) and (ROOT / f).is_file() and not f.startswith(".venv")]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation but ``_`` and ``-``
    dropped, spaces -> '-' (``## `qwen3_vl_moe` `` is ``#qwen3_vl_moe``)."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """Anchors of a Markdown file's headings (outside code fences), duplicates numbered."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def citations() -> list[tuple[str, int, Path, str | None]]:
    """(citing file, line, cited path, anchor or None) for every citation found."""
    found = []
    for f in _files():
        rel = f.relative_to(ROOT)
        for no, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(),
                                  1):
            for m in CITED.finditer(line):
                found.append((str(rel), no, ROOT / m.group(1), m.group(2)))
            if f.suffix == ".md":
                for m in MD_LINK.finditer(line):
                    if "://" not in m.group(1):
                        found.append((str(rel), no, (f.parent / m.group(1)).resolve(),
                                      m.group(2)))
    return found


def test_slug_matches_github():
    assert slug("Measured on a tiny Qwen2.5-VL on a CPU") == "measured-on-a-tiny-qwen25-vl-on-a-cpu"
    assert slug("Choosing the objective: probe, collapse guard, compare") == \
        "choosing-the-objective-probe-collapse-guard-compare"
    assert slug("`python -m vldft.probe`: how strong?") == "python--m-vldftprobe-how-strong"
    assert slug("`qwen3_vl_moe`") == "qwen3_vl_moe"


def test_every_cited_document_and_anchor_exists():
    found = citations()
    assert any(p == ROOT / "docs/design.md" and a for _, _, p, a in found), \
        "the design notes are cited with anchors"
    broken = []
    for where, no, path, anchor in found:
        if not path.is_file():
            broken.append(f"{where}:{no}: {path.relative_to(ROOT)} does not exist")
        elif anchor and anchor[1:] not in anchors(path):
            broken.append(f"{where}:{no}: {path.relative_to(ROOT)} has no heading {anchor} "
                          f"(headings: {sorted(anchors(path))})")
    assert not broken, "\n".join(broken)


def test_design_notes_have_the_sections_the_code_relies_on():
    have = anchors(ROOT / "docs/design.md")
    assert {"the-science-in-brief", "data-flow", "decisions",
            "measured-on-a-tiny-qwen25-vl-on-a-cpu"} <= have


@pytest.mark.parametrize("needle", ["DESIGN.md", "DESIGN notes", "../shared"])
def test_nothing_cites_documents_outside_the_repository(needle):
    hits = []
    for f in _files():
        rel = str(f.relative_to(ROOT))
        if rel == "tests/test_docs_links.py":
            continue
        if needle == "../shared" and not rel.startswith(READ_BY_USERS):
            continue  # tests may read optional local data from there (skipped when absent)
        for no, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(),
                                  1):
            if needle in line:
                hits.append(f"{rel}:{no}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)
