"""Tests for vldft.data.synth: determinism, schema, answers checked against the pixels or the
question, and the bundled demo set."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import DEMO_DATA, ROOT
from PIL import Image

from vldft.data.synth import (
    COLOURS,
    IMAGE_KINDS,
    KINDS,
    MAX_DOTS,
    PRIOR_KINDS,
    SHAPES,
    STUDY_KINDS,
    generate_sample,
    main,
    write_split,
)
from vldft.scoring import extract_answer

BUNDLED = DEMO_DATA.parent
DOC_ARGS = ["--n-train", "800", "--n-heldout", "160", "--n-study", "200", "--seed", "0",
            "--size", "112"]
DOC_COMMAND = "python -m vldft.data.synth --out data/geo_demo --overwrite " + " ".join(DOC_ARGS)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


def _pixels(path: Path) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(path) as im:
        return im.mode, im.size, im.tobytes()


def _question(row: dict) -> str:
    return row["messages"][0]["content"][1]["text"]


def _answer_text(row: dict) -> str:
    return row["messages"][1]["content"][0]["text"]


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("geo200")
    jsonl = write_split(out, "train", 200, seed=123, kinds=KINDS)
    return out, _rows(jsonl)


def _dark_components(path: Path) -> list[int]:
    """Sizes of the 4-connected components of dark pixels (an independent count of blobs)."""
    with Image.open(path) as im:
        gray = im.convert("L")
        w, h = gray.size
        dark = [v < 128 for v in gray.tobytes()]
    seen, sizes = [False] * (w * h), []
    for start in range(w * h):
        if dark[start] and not seen[start]:
            seen[start], stack, n = True, [start], 0
            while stack:
                i = stack.pop()
                n += 1
                x, y = i % w, i // w
                for j in ((i - 1) if x else -1, (i + 1) if x < w - 1 else -1,
                          (i - w) if y else -1, (i + w) if y < h - 1 else -1):
                    if j >= 0 and dark[j] and not seen[j]:
                        seen[j] = True
                        stack.append(j)
            sizes.append(n)
    return sizes


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = write_split(tmp_path / "a", "train", 30, seed=7)
    b = write_split(tmp_path / "b", "train", 30, seed=7)
    c = write_split(tmp_path / "c", "train", 30, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    for row in _rows(a):
        rel = row["images"][0]
        assert _pixels(a.parent / rel) == _pixels(b.parent / rel)
    differing = [
        row["images"][0]
        for row in _rows(a)
        if _pixels(a.parent / row["images"][0]) != _pixels(c.parent / row["images"][0])
    ]
    assert len(differing) >= 25


def test_generate_sample_leaves_global_random_state_alone() -> None:
    random.seed(99)
    state = random.getstate()
    image, kind, question, answer_text, final = generate_sample(random.Random(1))
    assert random.getstate() == state
    assert image.size == (112, 112) and kind in IMAGE_KINDS and question
    assert answer_text.endswith(f"Answer: {final}")


def test_row_schema(sample_set: tuple[Path, list[dict]]) -> None:
    out, rows = sample_set
    assert len(rows) == 200
    for i, row in enumerate(rows):
        assert list(row) == ["id", "kind", "messages", "images", "answer"]
        assert row["id"] == f"geo-train-{i:06d}"
        assert row["kind"] in KINDS
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert list(user) == ["role", "content"] and list(assistant) == ["role", "content"]
        assert user["content"][0] == {"type": "image"}
        assert [p["type"] for p in user["content"]] == ["image", "text"]
        assert [p["type"] for p in assistant["content"]] == ["text"]
        assert row["images"] == [f"images/train_{i:06d}.png"]
        assert (out / row["images"][0]).is_file()
        text = _answer_text(row)
        if row["kind"] in PRIOR_KINDS:  # pre-training kinds: pieces of the demo's answers
            assert text.endswith(".") if row["kind"].startswith("describe") else (
                text.endswith(f"Answer: {row['answer']}"))
            continue
        assert text.endswith(f"Answer: {row['answer']}")
        assert len(text) < 120 and text.isascii() and _question(row).isascii()
        body = text.rsplit("Answer:", 1)[0].strip()
        assert body.endswith(".") and 1 <= body.count(". ") + 1 <= 3  # 1-3 short sentences
        assert re.fullmatch(r"\d+|[a-z]+", row["answer"])  # (the image-only and story kinds)


def test_kinds_images_and_balance(sample_set: tuple[Path, list[dict]]) -> None:
    out, rows = sample_set
    counts = Counter(row["kind"] for row in rows)
    assert set(counts) == set(KINDS)
    assert all(4 <= counts[k] <= 30 for k in KINDS)  # uniform over 14 kinds: ~14 each
    for row in rows[:60]:
        with Image.open(out / row["images"][0]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (112, 112)
            gray = im.convert("L").tobytes()
        assert sum(v == 255 for v in gray) > 0.4 * len(gray)  # white background
        assert sum(v < 128 for v in gray) > 40  # some dark ink


def test_default_kinds_need_the_image_and_are_balanced(tmp_path: Path) -> None:
    rows = _rows(write_split(tmp_path, "train", 300, seed=5))
    counts = Counter(row["kind"] for row in rows)
    assert set(counts) == set(IMAGE_KINDS) and min(counts.values()) >= 120
    answers = Counter(row["answer"] for row in rows)
    assert set(answers) == set(SHAPES) | {str(n) for n in range(1, MAX_DOTS + 1)}
    questions = {row["kind"]: set() for row in rows}
    for row in rows:
        questions[row["kind"]].add(_question(row))
    assert all(len(q) == 1 for q in questions.values())  # the text never gives the answer away


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic kinds"):
        write_split(tmp_path, "train", 2, seed=0, kinds=("shape", "hexagon"))
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--kinds", "shape,nope"])


def test_custom_size(tmp_path: Path) -> None:
    jsonl = write_split(tmp_path, "heldout", 5, seed=3, size=160)
    for row in _rows(jsonl):
        assert row["id"].startswith("geo-heldout-")
        assert _pixels(tmp_path / row["images"][0])[:2] == ("RGB", (160, 160))


def _expected(row: dict, root: Path) -> str:
    """Recompute the final answer independently: from the pixels for the image kinds (dots are
    separate dark blobs; a shape is one), from the question text for the others."""
    q, kind = _question(row), row["kind"]
    if kind == "shape":
        assert q == "What shape is shown in the diagram?" and row["answer"] in SHAPES
        assert len([n for n in _dark_components(root / row["images"][0]) if n > 30]) == 1
        return row["answer"]
    if kind == "count":
        assert q == "How many dots are in the diagram?"
        return str(len([n for n in _dark_components(root / row["images"][0]) if n > 30]))
    if kind in ("count_more", "count_rephrased"):
        assert q in ("How many dots are in the diagram?", "How many dots do you see?")
        n = len([n for n in _dark_components(root / row["images"][0]) if n > 30])
        assert (n > MAX_DOTS) == (kind == "count_more")
        return str(n)
    if kind == "shape_rephrased":
        assert q == "Which shape is drawn here?" and row["answer"] in SHAPES
        assert len([n for n in _dark_components(root / row["images"][0]) if n > 30]) == 1
        return row["answer"]
    if kind == "name_shape":
        assert q == "Name the shape." and row["answer"] in SHAPES
        assert len([n for n in _dark_components(root / row["images"][0]) if n > 30]) == 1
        return row["answer"]
    if kind == "describe_shape":  # no final answer: the sentence is checked against the pixels
        assert q == "Describe the figure." and row["answer"] is None
        assert re.fullmatch(r"The figure (?:has [34] corners|is round, with no corners)\.",
                            _answer_text(row))
        assert len([n for n in _dark_components(root / row["images"][0]) if n > 30]) == 1
        return None
    if kind == "describe_dots":
        assert q == "Describe the dots."
        assert _answer_text(row).startswith(f"I count {row['answer']} dot")
        return str(len([n for n in _dark_components(root / row["images"][0]) if n > 30]))
    if kind == "count_dots":
        assert q == "Count the dots."
        return str(len([n for n in _dark_components(root / row["images"][0]) if n > 30]))
    if kind == "colour":
        assert q == "What colour is the figure?"
        with Image.open(root / row["images"][0]) as im:
            ink = Counter(c for c in im.convert("RGB").getdata() if c != (255, 255, 255))
        return next(name for name, rgb in COLOURS.items() if rgb == ink.most_common(1)[0][0])
    if kind == "triangle_angle":
        a, b = map(int, re.search(r"two angles are (\d+) deg and (\d+) deg", q).groups())
        assert a >= 20 and b >= 20 and 180 - a - b >= 20
        return str(180 - a - b)
    if kind == "right_triangle":
        a, b = map(int, re.search(r"legs are (\d+) and (\d+)\.", q).groups())
        c = math.isqrt(a * a + b * b)
        assert c * c == a * a + b * b
        return str(c)
    if kind == "parallel_lines":
        relations = "corresponding|alternate interior|co-interior"
        pattern = rf"One angle is (\d+) deg\. Find its ({relations}) angle"
        x, relation = re.search(pattern, q).groups()
        return str(180 - int(x) if relation == "co-interior" else int(x))
    assert kind == "circle"
    return str(2 * int(re.search(r"radius r = (\d+)\.", q).group(1)))


def test_answers_match_pixels_or_question(sample_set: tuple[Path, list[dict]]) -> None:
    out, rows = sample_set
    for row in rows:
        assert row["answer"] == _expected(row, out), row
        if row["answer"] is not None:
            assert extract_answer(_answer_text(row)) == row["answer"]  # the kit's scorer reads it


def test_bundled_set_matches_documented_command(tmp_path: Path) -> None:
    assert DOC_COMMAND in (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    main(["--out", str(tmp_path), *DOC_ARGS])
    for split, n in (("train", 800), ("heldout", 160), ("study", 200)):
        fresh, bundled = tmp_path / f"{split}.jsonl", BUNDLED / f"{split}.jsonl"
        assert fresh.read_bytes() == bundled.read_bytes()
        rows = _rows(bundled)
        assert len(rows) == n
        for row in rows[:: max(1, n // 16)]:
            rel = row["images"][0]
            assert _pixels(tmp_path / rel) == _pixels(BUNDLED / rel)
    assert len(list((BUNDLED / "images").glob("*.png"))) == 1160
    assert {r["kind"] for r in _rows(BUNDLED / "train.jsonl")} == set(IMAGE_KINDS)
    assert {r["kind"] for r in _rows(BUNDLED / "study.jsonl")} == set(STUDY_KINDS)
    assert max(int(r["answer"]) for r in _rows(BUNDLED / "study.jsonl")
               if r["kind"] == "count_more") > MAX_DOTS
    # the splits come from different seeds: no held-out diagram is a training diagram
    train_px = {_pixels(BUNDLED / r["images"][0]) for r in _rows(BUNDLED / "train.jsonl")}
    assert not any(_pixels(BUNDLED / r["images"][0]) in train_px
                   for split in ("heldout", "study") for r in _rows(BUNDLED / f"{split}.jsonl"))


def test_the_cli_needs_an_out_and_never_replaces_a_set_unasked(tmp_path: Path, capsys) -> None:
    """No default --out (it was the bundled data/geo_demo, which a bare run replaced); a folder
    holding a set is refused without --overwrite, and replaced with it, a stale study split of
    the old set included."""
    with pytest.raises(SystemExit):
        main(["--n-train", "2", "--n-heldout", "1"])
    assert "--out" in capsys.readouterr().err
    small = ["--n-train", "2", "--n-heldout", "1", "--kinds", "colour"]
    main(["--out", str(tmp_path), *small, "--n-study", "1"])
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), *small, "--seed", "5"])
    err = capsys.readouterr().err
    assert "already holds a set (train.jsonl, heldout.jsonl, study.jsonl)" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    main(["--out", str(tmp_path), *small, "--seed", "5", "--overwrite"])
    assert not (tmp_path / "study.jsonl").exists()
    assert not list((tmp_path / "images").glob("study_*.png"))
    assert len(_rows(tmp_path / "train.jsonl")) == 2
