"""The bad-row matrix: ONE JSONL file with every kind of bad row (plus a parquet with a wrong
column name). ``validate`` must report each with its reason code and location and nothing
else; ``read_source(on_error="skip")`` must keep exactly the rows it can check structurally and
count the rest; ``on_error="raise"`` must stop at the first bad row, naming file, line and id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

import vldft.data.validate as validate_mod
from vldft.adapters import load_adapter
from vldft.config import SourceConfig, load_config
from vldft.data import REASONS, DataError
from vldft.data.formats import read_source
from vldft.data.skips import SkipReport
from vldft.datatool import validate

U, A, S = "user", "assistant", "system"
LONG = "x" * 400  # the tiny tokenizers are byte-level: 400 tokens
MAX_LENGTH = 256


def msg(role, content):
    return {"role": role, "content": content}


def chat(*turns):
    return [msg(r, c) for r, c in turns]


IMG_Q = [{"type": "image"}, {"type": "text", "text": "What is shown?"}]
# (id, row or raw line, reason found by read_source, reason found by validate with the adapter)
MATRIX = [
    ("good1", {"images": ["ok.png"], "messages": chat((U, IMG_Q), (A, "A red square."))},
     None, None),
    ("good2", {"messages": chat((S, "Be brief."), (U, "2+2?"), (A, "4"))}, None, None),
    ("missing_img", {"images": ["nope.png"], "messages": chat((U, IMG_Q), (A, "?"))},
     "image_missing", None),
    ("corrupt_img", {"images": ["corrupt.png"], "messages": chat((U, IMG_Q), (A, "?"))},
     None, "image_corrupt"),
    ("count", {"images": ["ok.png"], "messages": chat((U, "<image><image>Same?"), (A, "Yes"))},
     "image_count", None),
    ("empty_answer", {"messages": chat((U, "Hi"), (A, "  "))}, "empty_assistant", None),
    ("no_answer", {"messages": chat((U, "Hi"))}, "no_assistant", None),
    ("two_users", {"messages": chat((U, "Hi"), (U, "Hello?"), (A, "Hey"))}, "bad_order", None),
    ("late_system", {"messages": chat((U, "Hi"), (A, "Hey"), (S, "Sys"), (U, "a"), (A, "b"))},
     "bad_order", None),
    ("ends_user", {"messages": chat((U, "Hi"), (A, "Hey"), (U, "Bye"))}, "ends_with_user", None),
    ("tool", {"messages": chat((U, "Hi"), ("tool", "{}"), (A, "Hey"))}, "unknown_role", None),
    ("empty_user", {"messages": chat((U, ""), (A, "Hey"))}, "empty_turn", None),
    ("video", {"messages": chat((U, [{"type": "video", "video": "v.mp4"}]), (A, "Hey"))},
     "video_missing", None),
    ("video_count", {"messages": chat((U, "<video>Which way?"), (A, "Left"))}, "video_count",
     None),
    ("clip_segment", {"messages": chat(
        (U, [{"type": "video", "video": "frames", "video_start": 1.0},
             {"type": "text", "text": "Which way?"}]), (A, "Left"))}, "video_option", None),
    ("image_resize", {"images": ["ok.png"], "messages": chat(
        (U, [{"type": "image", "resized_height": 56, "resized_width": 56},
             {"type": "text", "text": "What is shown?"}]), (A, "A red square."))},
     "image_option", None),
    ("image_pixels", {"images": ["ok.png"], "messages": chat(  # an image's own bound: fine
        (U, [{"type": "image", "max_pixels": 56 * 56}, {"type": "text", "text": "What?"}]),
        (A, "A red square."))}, None, None),
    ("answer_image", {"images": ["ok.png"], "messages": chat(
        (U, "Hi"), (A, [{"type": "image"}, {"type": "text", "text": "x"}]))}, "bad_content", None),
    ("corrupt_video", {"videos": ["corrupt.mp4"], "messages": chat((U, "<video>Which way?"),
                                                                   (A, "Left"))},
     None, "video_corrupt"),
    ("long_video", {"videos": ["frames"], "messages": chat((U, "<video>Which way?"), (A, "Left"))},
     None, "video_shortened"),
    ("typo_key", {"mesages": chat((U, "Hi"), (A, "Hey"))}, "missing_column", None),
    (None, '{"id": "broken", "messages": [', "bad_json", None),
    (None, "[1, 2]", "bad_row", None),
    ("long_answer", {"messages": chat((U, "Say x."), (A, LONG))}, None, "truncated"),
    ("image_late", {"images": ["ok.png"], "messages": chat(
        (U, [{"type": "text", "text": LONG}, {"type": "image"}]), (A, "ok"))}, None, "image_cut"),
    ("video_late", {"videos": ["frames"], "messages": chat(  # not even 2 frames fit
        (U, [{"type": "text", "text": LONG}, {"type": "video"}]), (A, "ok"))}, None, "video_cut"),
    ("long_prompt", {"messages": chat((U, LONG), (A, "ok"))}, None, "truncated_empty"),
    ("special_token", {"messages": chat((U, "What is <|image_pad|>?"), (A, "A token."))},
     None, "encode_error"),
    ("good3", {"images": ["ok.png"], "messages": chat((U, IMG_Q), (A, "Blue."))}, None, None),
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """bad.jsonl (the matrix), typo.parquet (wrong column), config.yaml; returns the folder."""
    root = tmp_path_factory.mktemp("matrix")
    Image.new("RGB", (32, 32), (200, 0, 0)).save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (root / "frames").mkdir()  # 16 frames: at the default video pixels, over MAX_LENGTH
    for i in range(16):
        Image.new("RGB", (32, 32), (0, 10 * i, 0)).save(root / "frames" / f"{i}.png")
    lines = []
    for sid, row, _, _ in MATRIX:
        lines.append(row if isinstance(row, str) else json.dumps({"id": sid, **row}))
    (root / "bad.jsonl").write_text("\n".join(lines) + "\n")
    from datasets import Dataset

    Dataset.from_dict({"probelm": ["1+1?"], "answer": ["2"]}).to_parquet(str(root / "typo.parquet"))
    cfg = {"model": {"family": "qwen2_5_vl", "tiny": True},
           "data": {"sources": [{"path": "bad.jsonl", "format": "messages", "name": "bad"},
                                {"path": "typo.parquet", "format": "hf", "name": "typo"}],
                    "max_length": MAX_LENGTH},
           "train": {"output_dir": "out"}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def adapter():
    from vldft.config import ModelConfig

    return load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))


def _where(root: Path, lineno: int, sid: str | None) -> str:
    return f"{root / 'bad.jsonl'}:{lineno}" + (f" (id {sid})" if sid else "")


def expected(root: Path, with_adapter: bool) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for lineno, (sid, _, read_reason, deep_reason) in enumerate(MATRIX, 1):
        reason = read_reason or (deep_reason if with_adapter or deep_reason in (
            "image_corrupt", "video_corrupt") else None)
        if reason:
            where = _where(root, lineno, sid if reason != "bad_json" else None)
            if sid is None and reason == "bad_row":
                where = _where(root, lineno, f"bad.jsonl:{lineno}")
            out.setdefault(("bad", reason), []).append(where)
    out[("typo", "missing_column")] = [str(root / "typo.parquet")]
    return out


def test_matrix_covers_every_row_reason():
    row_reasons = {r for _, _, a, b in MATRIX for r in (a, b) if r}
    source_level = {"missing_file", "bad_source", "bad_answer", "too_long"}
    # local files may name images outside their root: tests/test_data_cli_edges.py has this one
    contained = {"image_outside_root"}
    assert row_reasons | source_level | contained | {"missing_column"} == set(REASONS)


@pytest.mark.parametrize("with_adapter", [True, False])
def test_validate_reports_each_bad_row_and_nothing_else(matrix, adapter, with_adapter):
    cfg = load_config(matrix / "config.yaml")
    report = validate(cfg, adapter if with_adapter else None)
    got = {key: [e["where"] for e in report.examples[key]] for key in report.counts}
    assert got == expected(matrix, with_adapter)
    assert report.counts == {k: len(v) for k, v in expected(matrix, with_adapter).items()}
    assert not report.ok and report.rows == {"bad": len(MATRIX), "typo": 0}
    typo = report.examples[("typo", "missing_column")][0]["message"]
    assert "did you mean columns: question=probelm" in typo
    assert "mesages" in report.examples[("bad", "missing_column")][0]["message"]
    text = report.summary()
    for source, reason in report.counts:
        assert reason in text and source in text
    d = report.to_dict()
    json.dumps(d)
    assert d["ok"] is False and d["sources"]["bad"]["image_count"]["count"] == 1
    if with_adapter:  # a video that cannot be shortened by frames is said to be one
        said = report.examples[("bad", "video_cut")][0]["message"]
        assert "video" in said and "shortened by frames" in said and "image" not in said, said


def test_overlong_skip_turns_truncation_findings_into_too_long(matrix, adapter):
    cfg = load_config(matrix / "config.yaml", ["data.overlong=skip"])
    report = validate(cfg, adapter)
    assert report.count("bad", "too_long") == 4
    assert report.count(reason="truncated") == report.count(reason="image_cut") == 0
    assert report.count(reason="video_cut") == 0


def test_warning_only_report_is_ok(matrix, adapter, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    rows = [m for m in MATRIX if m[0] in ("good1", "long_answer")]  # good + truncated (a warning)
    (tmp_path / "w.jsonl").write_text("".join(json.dumps({"id": s, **r}) + "\n"
                                              for s, r, _, _ in rows))
    cfg = load_config(None, ["model.tiny=true", "data.train_files=[w.jsonl]",
                             f"data.max_length={MAX_LENGTH}", f"base_dir={tmp_path}"])
    report = validate(cfg, adapter)
    assert report.ok and report.counts == {("w", "truncated"): 1}
    assert "0 problems, 1 warnings" in report.summary()


def test_skip_keeps_exactly_the_good_rows(matrix):
    report = SkipReport()
    src = SourceConfig(path="bad.jsonl", format="messages", name="bad")
    samples = read_source(src, matrix, on_error="skip", report=report)
    keep = [sid for sid, _, read_reason, _ in MATRIX if read_reason is None]
    assert [s.id for s in samples] == keep  # image / encode problems are found later
    assert all(s.source == "bad" for s in samples)
    exp = {k: len(v) for k, v in expected(matrix, False).items() if k[0] == "bad"}
    exp.pop(("bad", "image_corrupt"))
    exp.pop(("bad", "video_corrupt"))
    assert report.counts == exp
    assert report.total == len(MATRIX) - len(keep)


def test_raise_stops_at_the_first_bad_row(matrix):
    src = SourceConfig(path="bad.jsonl", format="messages", name="bad")
    with pytest.raises(DataError) as e:
        read_source(src, matrix, on_error="raise")
    assert str(e.value).startswith(f"{matrix / 'bad.jsonl'}:3 (id missing_img): image file not "
                                   "found")
    assert e.value.reason == "image_missing"


def test_raise_on_bad_role_names_the_key(matrix, tmp_path):
    row = next(r for sid, r, _, _ in MATRIX if sid == "tool")
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "r1", **row}) + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:1 \(id r1\): message 1 has unknown role "
                                        r"'tool'"):
        read_source(SourceConfig(path="r.jsonl", format="normalized"), tmp_path)


def test_reason_table_documents_every_code():
    doc = validate_mod.__doc__
    for code in REASONS:
        assert f"| {code} " in doc, code


def test_geometry3k_bad_answer(tmp_path):
    d = tmp_path / "g" / "7"
    d.mkdir(parents=True)
    (d / "data.json").write_text(json.dumps({"id": 7, "problem_text": "Find x.",
                                             "choices": ["1", "2", "3", "4"], "answer": "E"}))
    Image.new("RGB", (8, 8)).save(d / "img_diagram.png")
    report = SkipReport()
    assert read_source(SourceConfig(path="g"), tmp_path, "skip", report) == []
    assert report.counts == {("g", "bad_answer"): 1}
    assert report.examples[("g", "bad_answer")][0]["where"] == f"{d / 'data.json'} (id 7)"
