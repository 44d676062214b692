"""A ``choices`` column is never dropped silently: without ``{choices}`` in the prompt template
the options go after the question, unless the question already lists them; options that carry
their letter are not labelled twice; a row without choices leaves no dangling separator; the
count is printed by ``vldft-data convert``. Also the data CLI's ``--prompt-template`` escapes and
its config overrides anywhere on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, TINY_CONFIG

from vldft.config import SourceConfig
from vldft.data import Sample
from vldft.data.formats import read_source
from vldft.data.tables import choice_counts
from vldft.datatool import main

MATHVERSE = ROOT.parent / "shared/realdata/mathverse_visualizer_subset"


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prompt(s: Sample) -> str:
    """The user turn's text (image parts left out)."""
    content = s.messages[0]["content"]
    return content if isinstance(content, str) else "".join(
        p.get("text", "") for p in content)


def prompts(path: Path, template: str | None = None, fmt: str = "text_math") -> list[str]:
    src = SourceConfig(path=str(path), format=fmt, prompt_template=template)
    return [prompt(s) for s in read_source(src, path.parent)]


def row(question: str, choices, sid: str = "q") -> dict:
    return {"id": sid, "question": question, "choices": choices, "answer": "A"}


# -- 1. choices without {choices}: appended after the question, unless already there ----------
def test_choices_appended_after_the_question_without_template(tmp_path):
    f = write(tmp_path / "t.jsonl", [row("Which is largest?", ["1", "3", "2"]),
                                     row("How many?", None), row("Name it.", [])])
    assert prompts(f) == ["Which is largest?\nChoices: A. 1 B. 3 C. 2", "How many?",
                          "Name it."]


def test_choices_go_after_the_question_not_after_the_template(tmp_path):
    f = write(tmp_path / "t.jsonl", [row("Which is largest?\n", ["1", "3"]),
                                     row("How many?", None)])
    assert prompts(f, "{question}\nAnswer with the letter.") == [
        "Which is largest?\nChoices: A. 1 B. 3\nAnswer with the letter.",
        "How many?\nAnswer with the letter."]


def test_options_already_in_the_question_are_not_repeated(tmp_path):
    listed = "Find the bearing.\nChoice:\nA. 090 T\nB. 180 T"
    paren = "Which?\n(A) 1\n(B) 2"
    colon = "Which? Choices: A:$x$ B:$y$"
    unlabelled = "Is x 1 or 2?"  # the values, but not as labelled options: appended
    f = write(tmp_path / "t.jsonl", [row(listed, ["A. 090 T", "B. 180 T"]),
                                     row(paren, ["1", "2"]), row(colon, ["$x$", "$y$"]),
                                     row(unlabelled, ["1", "2"])])
    assert prompts(f) == [listed, paren, colon, "Is x 1 or 2?\nChoices: A. 1 B. 2"]
    # an explicit {choices} does not repeat them either (its line goes, as for no choices)
    assert prompts(f, "{question}\nChoices: {choices}\nAnswer with the letter.") == [
        f"{listed}\nAnswer with the letter.", f"{paren}\nAnswer with the letter.",
        f"{colon}\nAnswer with the letter.",
        "Is x 1 or 2?\nChoices: A. 1 B. 2\nAnswer with the letter."]


def test_geometry3k_template_without_choices_keeps_them(tmp_path):
    from PIL import Image

    d = tmp_path / "g3k" / "7"
    d.mkdir(parents=True)
    (d / "data.json").write_text(json.dumps({"problem_text": "Find x.", "choices": ["1", "2"],
                                             "answer": "B"}))
    Image.new("RGB", (8, 8)).save(d / "img_diagram.png")
    assert prompts(d.parent, fmt="geometry3k") == ["Find x.\nChoices: A. 1 B. 2"]
    assert prompts(d.parent, "{question}\nAnswer with the letter.", "geometry3k") == [
        "Find x.\nChoices: A. 1 B. 2\nAnswer with the letter."]


def test_choice_counts(tmp_path):
    f = write(tmp_path / "t.jsonl", [row("Which?", ["1", "2"], "a"),
                                     row("Which?\nA. 1\nB. 2", ["1", "2"], "b"),
                                     row("How many?", None, "c")])
    with choice_counts() as counts:
        prompts(f)
    assert {k: len(v) for k, v in counts.items()} == {"appended": 1, "in_question": 1}
    assert counts["appended"][0] == f"{f}:1 (id a)"
    with choice_counts() as counts:  # {choices} used: nothing appended, nothing to report
        prompts(f, "{question}\n{choices}")
    assert {k: len(v) for k, v in counts.items()} == {"in_question": 1}


# -- 2. options that carry their letter are not labelled again -------------------------------
def test_labelled_options_keep_their_label(tmp_path):
    f = write(tmp_path / "t.jsonl", [row("Q", ["A:$x$", "B. y", "(C) z", "D) w", "Apple"])])
    assert prompts(f, "{question}\n{choices}") == ["Q\nA:$x$ B. y (C) z D) w E. Apple"]
    assert prompts(f) == ["Q\nChoices: A:$x$ B. y (C) z D) w E. Apple"]
    # another option's letter, or a letter that is the option itself, is no label
    f = write(tmp_path / "u.jsonl", [row("Q", ["B. 2", "A"]), row("Q", ["A.5", "B.$y$"])])
    assert prompts(f, "{question}\n{choices}") == ["Q\nA. B. 2 B. A", "Q\nA. A.5 B.$y$"]


# -- 3. no choices: no dangling separator ------------------------------------------------------
@pytest.mark.parametrize(("template", "expected"), [
    ("{question}\n{choices}", "Round to three decimal places."),
    ("{question}\n\n{choices}", "Round to three decimal places."),
    ("{question} {choices}", "Round to three decimal places."),
    ("{question}\nChoices: {choices}\nAnswer briefly.",
     "Round to three decimal places.\n\nAnswer briefly."),
])
def test_no_choices_no_dangling_separator(tmp_path, template, expected):
    f = write(tmp_path / "t.jsonl", [row("Round to three decimal places.\n", None),
                                     row("Round to three decimal places.\n", [])])
    assert prompts(f, template) == [expected, expected]


# -- the real MathVerse sample (15 multiple-choice rows of 306) ----------------------------------
needs_mathverse = pytest.mark.skipif(
    not MATHVERSE.is_dir(), reason=f"real MathVerse sample not here ({MATHVERSE}); it lives "
    "outside the repository")

TAN = ("Which two of the following expressions are OPPOSITE of $\\tan (\\theta)$ ?\n"
       "Choose 2 answers:\nChoices: A:$\\tan (\\pi+\\theta)$ "
       "B:$\\tan \\left(\\frac{\\pi}{2}-\\theta\\right)$ C:$\\tan (2 \\pi-\\theta)$ "
       "D:$\\tan (\\pi-\\theta)$")
BEARING = ("Find the true bearing of point B from point A.\nChoice:\nA. 090^\\circ T\n"
           "B. 180^\\circ T\nC. 049^\\circ T\nD. 041^\\circ T")


@needs_mathverse
@pytest.mark.parametrize("extra", [[], ["--format", "hf"], ["--columns", "c=choices"]])
def test_mathverse_convert_keeps_every_option_once(tmp_path, capsys, extra):
    out = tmp_path / "mv.jsonl"
    assert main(["convert", str(MATHVERSE / "plane_geometry_subset.json"), str(out),
                 "--image-root", str(MATHVERSE / "images"), *extra]) == 0
    printed = capsys.readouterr().out
    assert "choices appended after the question: 7 rows" in printed
    assert "choices already listed in the question (not repeated): 8 rows" in printed
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    text = {k: "".join(p.get("text", "") for p in r["messages"][0]["content"])
            for k, r in rows.items()}
    assert text["34"] == TAN and text["314"] == BEARING
    assert text["315"] == ("Find the true bearing of point B from point A.\nChoices: "
                           "A. 090^\\circ T B. 180^\\circ T C. 049^\\circ T D. 041^\\circ T")
    source = json.loads((MATHVERSE / "plane_geometry_subset.json").read_text())
    for pid, r in source.items():  # each option as often as the question had it, at least once
        for option in r["choices"] or []:
            assert text[pid].count(option) == max(1, r["question"].count(option)), (pid, option)
        if not r["choices"]:  # free-form rows: the question as it was
            assert text[pid] == r["question"], pid


@needs_mathverse
def test_mathverse_training_reads_the_same_prompts():
    """``format: auto`` (what training reads) gives the prompts convert writes."""
    src = SourceConfig(path=str(MATHVERSE / "plane_geometry_subset.json"),
                       image_root=str(MATHVERSE / "images"))
    with choice_counts() as counts:
        samples = {s.id: s for s in read_source(src, MATHVERSE)}
    assert prompt(samples["34"]) == TAN and prompt(samples["314"]) == BEARING
    assert {k: len(v) for k, v in counts.items()} == {"appended": 7, "in_question": 8}


# -- 4. --prompt-template: \n and \t typed in a shell are a newline and a tab ------------------
def test_cli_prompt_template_escapes(tmp_path, capsys):
    f = write(tmp_path / "t.jsonl", [row("Which?", ["1", "2"]), row("How many?", None)])
    out = tmp_path / "o.jsonl"
    template = r"{question}\nAnswer with A-D.\tThanks. C:\\dir"  # as a shell passes '...'
    assert main(["convert", "--format", "text_math", str(f), str(out),
                 "--prompt-template", template]) == 0
    got = [r["messages"][0]["content"][0]["text"]
           for r in map(json.loads, out.read_text().splitlines())]
    assert got == ["Which?\nChoices: A. 1 B. 2\nAnswer with A-D.\tThanks. C:\\dir",
                   "How many?\nAnswer with A-D.\tThanks. C:\\dir"]
    assert "choices appended after the question: 1 rows" in capsys.readouterr().out


# -- 5. config overrides anywhere on a vldft-data command line ------------------------------------
def test_validate_override_after_options(tmp_path):
    out = tmp_path / "run"
    assert main(["validate", str(TINY_CONFIG), "--no-encode", "--max-samples", "1",
                 f"train.output_dir={out}", "data.heldout_file=null"]) == 0
    assert (out / "validation.json").is_file()


def test_download_override_after_options(tmp_path, monkeypatch, capsys):
    import vldft.data.download as dl

    seen = {}

    def fake(cfg, sources, force=False, revisions=None):
        seen.update(lr=cfg.train.lr, data_dir=cfg.data.data_dir, sources=sources, force=force)
        return {"sources": [], "benchmarks": []}

    monkeypatch.setattr(dl, "download", fake)
    assert main(["download", str(TINY_CONFIG), "--data-dir", str(tmp_path), "train.lr=1e-4",
                 "--source", "a=b", "train.seed=3", "--force"]) == 0
    assert seen == {"lr": 1e-4, "data_dir": str(tmp_path.resolve()), "sources": {"a": "b"},
                    "force": True}
    # the offline training command it prints keeps the overrides (it dropped them)
    said = capsys.readouterr().out
    assert f"train offline with: python -m vldft.train {TINY_CONFIG} train.lr=1e-4 " \
        f"train.seed=3 data.data_dir={tmp_path.resolve()}" in said, said


def test_inspect_override_after_options(monkeypatch):
    import vldft.datatool as dt

    seen = {}

    def fake(args):
        seen.update(n=args.n, overrides=args.overrides)
        raise dt.ConfigError("stop here")

    monkeypatch.setattr(dt, "_load", fake)
    assert main(["inspect", str(TINY_CONFIG), "--n", "1", "train.lr=1e-4", "--max-samples",
                 "2", "train.seed=3"]) == 2
    assert seen == {"n": 1, "overrides": ["train.lr=1e-4", "train.seed=3"]}
