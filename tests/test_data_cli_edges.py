"""The data CLI's edges: ``validate`` takes a data file as well as a config; ``convert`` decodes
every image it writes a row for and fails when it dropped rows unless told to skip them; image
paths that leave their image root (``..``, symlinks, absolute) are named bad rows where the
source does not allow them (hub sources by default, ``convert`` by default)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vldft.config import SourceConfig, load_config
from vldft.data import REASONS, DataError
from vldft.data.formats import read_source
from vldft.data.skips import SkipReport
from vldft.data.validate import check_sources
from vldft.datatool import main


def row(sid: str, image: str | None) -> dict:
    user = "<image>What colour?" if image else "What colour?"
    return {"id": sid, "images": [image] if image else [],
            "messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": "Red."}]}


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """imgs/ with a good, a truncated and a non-image file; a secret file beside it; and a
    symlink inside imgs/ that points at that secret."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(imgs / "good.png")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (imgs / "trunc.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    (imgs / "text.png").write_text("not an image")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", imgs / "link.png")
    return tmp_path


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_new_reason_is_documented():
    assert "image_outside_root" in REASONS


# -- convert ---------------------------------------------------------------------------------
def test_convert_decodes_every_image_and_fails_on_dropped_rows(files, capsys):
    src = write(files / "in.jsonl", [
        row("ok", "good.png"), row("cut", "trunc.png"), row("text", "text.png"),
        row("up", "../secret.png"), row("abs", str(files / "secret.png")),
        row("link", "link.png"), row("words", None)])
    out = files / "out" / "train.jsonl"
    args = ["convert", str(src), str(out), "--image-root", str(files / "imgs")]
    assert main(args) == 1  # rows were dropped and --on-error skip was not given
    captured = capsys.readouterr()
    assert "incomplete" in captured.err and "--on-error skip" in captured.err
    assert "--allow-outside-root" in captured.out
    kept = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert kept == ["ok", "words"]
    listed = json.loads((files / "out" / "train.skipped.json").read_text())
    assert {e["id"]: e["reason"] for e in listed["entries"]} == {
        "cut": "image_corrupt", "text": "image_corrupt", "up": "image_outside_root",
        "abs": "image_outside_root", "link": "image_outside_root"}
    assert listed["total"] == 5
    assert "truncated" in next(e["message"] for e in listed["entries"] if e["id"] == "cut")

    assert main([*args, "--on-error", "skip"]) == 0  # dropping them accepted: exit 0
    assert main([*args, "--on-error", "skip", "--allow-outside-root"]) == 0
    kept = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert kept == ["ok", "up", "abs", "link", "words"]  # outside the root, allowed
    with pytest.raises(SystemExit):  # argparse: --on-error takes skip or raise only
        main([*args, "--on-error", "ignore"])
    capsys.readouterr()
    assert main([*args, "--on-error", "raise"]) == 2  # stops at the first bad row
    assert "outside the image root" in capsys.readouterr().err


def test_convert_without_problems_exits_0_and_leaves_no_stale_skip_list(files):
    out = files / "o.jsonl"
    (files / "o.skipped.json").write_text("{}")  # from an earlier run
    src = write(files / "in.jsonl", [row("ok", "good.png")])
    assert main(["convert", str(src), str(out), "--image-root", str(files / "imgs")]) == 0
    assert not (files / "o.skipped.json").exists()


# -- validate FILE ---------------------------------------------------------------------------
def test_validate_takes_a_data_file(files, capsys):
    good = write(files / "imgs" / "good.jsonl", [row("ok", "good.png"), row("w", None)])
    assert main(["validate", str(good)]) == 0
    assert "validation: OK - 2 rows in 1 sources" in capsys.readouterr().out
    bad = write(files / "imgs" / "bad.jsonl", [row("ok", "good.png"), row("cut", "trunc.png"),
                                               row("gone", "missing.png")])
    report = files / "v.json"
    assert main(["validate", str(bad), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "image_corrupt" in out and "image_missing" in out
    assert json.loads(report.read_text())["problems"] == 2
    # a local file is read as training reads it: paths outside its folder are allowed there
    outside = write(files / "imgs" / "abs.jsonl", [row("abs", str(files / "secret.png"))])
    assert main(["validate", str(outside)]) == 0


def test_validate_file_arguments_are_checked(files, capsys):
    data = write(files / "d.jsonl", [row("w", None)])
    assert main(["validate", str(data), "train.lr=1"]) == 2
    assert "overrides need a YAML config" in capsys.readouterr().err
    cfg = files / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"tiny": True}, "data": {"train_files": ["d.jsonl"]}}))
    assert main(["validate", str(cfg), "--image-root", "x", "--no-encode"]) == 2
    assert "only for a data file" in capsys.readouterr().err
    assert main(["inspect", str(data)]) == 2
    assert "takes a YAML config" in capsys.readouterr().err


def test_a_data_file_that_cannot_be_read_is_one_line_naming_it(files, capsys, monkeypatch):
    """validate FILE on a missing file, on a path that is no file or folder (a device) and on an
    unreadable file says so in one line naming it, exit 2, as convert does (validate printed
    a six-line findings block for the missing file; both ended an unreadable one in a
    traceback)."""
    locked = write(files / "locked.jsonl", [row("w", None)])
    real_open = open

    def guarded(file, *args, **kwargs):  # as a chmod 000 file reads for a user who is not root
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    for path, says in ((files / "nothing.jsonl", "not found"),
                       (Path(os.devnull), "not a file or folder"),
                       (locked, "cannot be read (Permission denied)")):
        for command in (["validate", str(path)], ["convert", str(path), str(files / "o.jsonl")]):
            assert main(command) == 2, command
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, (command, out, err)
            assert err.startswith("error: ") and str(path) in err and says in err, (command, err)
    assert not (files / "o.jsonl").exists()
    # a data file that is there but holds no rows is still a finding of the file
    assert main(["validate", str(write(files / "empty.jsonl", []))]) == 1
    assert "bad_source" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["auto", "normalized", "messages", "llava", "sharegpt", "hf"])
def test_convert_refuses_an_unknown_columns_field_in_every_format(files, capsys, fmt):
    """--columns foo=bar was ignored without a word where the format maps no columns (the
    normalised JSONL, messages, llava, sharegpt): refused in one line naming the field and the
    known ones, as the hf format refused it."""
    src = write(files / "in.jsonl", [row("w", None)])
    out = files / "o.jsonl"
    assert main(["convert", str(src), str(out), "--format", fmt, "--columns", "foo=bar"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "columns.foo: unknown field" in err, err
    assert "'question', 'answer', 'solution', 'images', 'messages', 'choices', 'id'" in err, err
    assert not out.exists()
    if fmt in ("auto", "messages"):  # a known field still maps (id: the row id)
        assert main(["convert", str(src), str(out), "--format", fmt, "--columns", "id=id"]) == 0


@pytest.mark.parametrize("extra", [["--columns", "question=q"], ["--columns", "answer=a,id=id"],
                                   ["--prompt-template", "{question} Answer briefly."]])
def test_a_row_format_refuses_columns_and_templates_it_would_ignore(files, capsys, extra):
    """A known field other than id, or a prompt template, on a row format (turns as written)
    was dropped without a word: refused in one line naming the keys and where they apply."""
    src = write(files / "in.jsonl", [row("w", None)])
    out = files / "o.jsonl"
    assert main(["convert", str(src), str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf, text_math and geometry3k" in err, err
    assert ("prompt_template" if "--prompt-template" in extra else "columns.") in err
    assert not out.exists()


# -- containment in configs ------------------------------------------------------------------
def read(src: SourceConfig, base: Path) -> tuple[list[str], dict[str, str]]:
    report = SkipReport()
    samples = read_source(src, base, on_error="skip", report=report)
    return [s.id for s in samples], {e["id"]: e["reason"] for e in report.entries}


def test_hub_sources_keep_their_images_inside_the_root_by_default(files):
    data = write(files / "imgs" / "rows.jsonl", [
        row("ok", "good.png"), row("abs-in", str(files / "imgs" / "good.png")),
        row("up", "../secret.png"), row("link", "link.png"),
        row("abs-out", str(files / "secret.png"))])
    local = SourceConfig(path=str(data), format="normalized")
    assert read(local, files) == (["ok", "abs-in", "up", "link", "abs-out"], {})
    hub = SourceConfig(path=str(data), format="normalized", hub="org/set", name="set")
    outside = {"up": "image_outside_root", "link": "image_outside_root",
               "abs-out": "image_outside_root"}
    assert read(hub, files) == (["ok", "abs-in"], outside)
    opened = SourceConfig(path=str(data), format="normalized", hub="org/set", name="set",
                          allow_outside_root=True)
    assert read(opened, files)[1] == {}
    closed = SourceConfig(path=str(data), format="normalized", allow_outside_root=False)
    assert read(closed, files)[1] == outside
    with pytest.raises(DataError, match=r"\.\./secret\.png resolves to .*secret\.png, outside "
                                        r"the image root"):
        read_source(closed, files)


def test_the_config_key_reaches_validation(files):
    write(files / "imgs" / "rows.jsonl", [row("ok", "good.png"), row("up", "../secret.png")])
    cfg_file = files / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "model": {"tiny": True},
        "data": {"sources": [{"path": "imgs/rows.jsonl", "allow_outside_root": False}]}}))
    report = check_sources(load_config(cfg_file))
    assert not report.ok and report.count(reason="image_outside_root") == 1
    assert check_sources(load_config(cfg_file, ["data.sources[0].allow_outside_root=null"])).ok
