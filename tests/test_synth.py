"""Tests for vldft.data.synth: determinism, schema, arithmetic and the bundled demo set."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vldft.data.synth import (
    KINDS,
    extract_final_answer,
    generate_sample,
    main,
    write_split,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "geo_demo"
DOC_ARGS = ["--n-train", "800", "--n-heldout", "160", "--seed", "0", "--size", "112"]
DOC_COMMAND = "python -m vldft.data.synth --out data/geo_demo " + " ".join(DOC_ARGS)
SHAPES = {"triangle", "square", "circle", "pentagon", "hexagon"}


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
    jsonl = write_split(out, "train", 200, seed=123)
    return out, _rows(jsonl)


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
    assert image.size == (112, 112) and kind in KINDS and question
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
        assert text.endswith(f"Answer: {row['answer']}")
        assert len(text) < 120 and text.isascii() and _question(row).isascii()
        body = text.rsplit("Answer:", 1)[0].strip()
        assert body.endswith(".") and 1 <= body.count(". ") + 1 <= 3  # 1-3 short sentences
        assert re.fullmatch(r"\d+|[a-z]+", row["answer"])


def test_kinds_images_and_balance(sample_set: tuple[Path, list[dict]]) -> None:
    out, rows = sample_set
    counts = Counter(row["kind"] for row in rows)
    assert set(counts) == set(KINDS)
    assert 50 <= counts["shape"] <= 110  # ~40% of 200
    assert all(counts[k] >= 15 for k in KINDS)
    for row in rows[:60]:
        with Image.open(out / row["images"][0]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (112, 112)
            gray = im.convert("L").tobytes()
        assert sum(v == 255 for v in gray) > 0.6 * len(gray)  # white background
        assert sum(v < 128 for v in gray) > 40  # some dark strokes


def test_custom_size(tmp_path: Path) -> None:
    jsonl = write_split(tmp_path, "heldout", 5, seed=3, size=160)
    for row in _rows(jsonl):
        assert row["id"].startswith("geo-heldout-")
        assert _pixels(tmp_path / row["images"][0])[:2] == ("RGB", (160, 160))


def _expected(row: dict) -> str:
    """Recompute the final answer from the question text alone (or check the shape name)."""
    q, kind = _question(row), row["kind"]
    if kind == "shape":
        assert q == "What shape is shown in the diagram?" and row["answer"] in SHAPES
        return row["answer"]
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


def test_arithmetic_matches_question(sample_set: tuple[Path, list[dict]]) -> None:
    _, rows = sample_set
    for row in rows:
        assert row["answer"] == _expected(row), row
        assert extract_final_answer(_answer_text(row)) == row["answer"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Angles sum to 180. 180 - 50 - 60 = 70. Answer: 70", "70"),
        ("Answer: 5\nWait, recheck. Answer: 13", "13"),
        ("Answer: 12.  \n", "12"),
        ("answer: Triangle!", "triangle"),
        ("The answer: a Hexagon.", "hexagon"),
        ("**Answer:** 70 deg", "70"),
        ("Answer:   Circle   ", "circle"),
        ("Answer: 42\nAnswer:", "42"),
        ("I think it is 70.", None),
        ("", None),
        ("Answer:", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


def test_bundled_set_matches_documented_command(tmp_path: Path) -> None:
    assert DOC_COMMAND in (REPO / "data" / "README.md").read_text(encoding="utf-8")
    main(["--out", str(tmp_path), *DOC_ARGS])
    for split, n in (("train", 800), ("heldout", 160)):
        fresh, bundled = tmp_path / f"{split}.jsonl", BUNDLED / f"{split}.jsonl"
        assert fresh.read_bytes() == bundled.read_bytes()
        rows = _rows(bundled)
        assert len(rows) == n
        for row in rows[:: max(1, n // 16)]:
            rel = row["images"][0]
            assert _pixels(tmp_path / rel) == _pixels(BUNDLED / rel)
    assert len(list((BUNDLED / "images").glob("*.png"))) == 960
    train_q = {(r["kind"], _question(r)) for r in _rows(BUNDLED / "train.jsonl")}
    held_q = [(r["kind"], _question(r)) for r in _rows(BUNDLED / "heldout.jsonl")]
    assert any(q not in train_q for q in held_q)  # splits come from different seeds
