"""``python -m vldft.heldout`` on a new user's mistakes: a set without answers prints n/a, the
default controls follow the file (a text-only set gets none), and a wrong checkpoint path or a
bad held-out file is one line and exit status 2, not a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_demo_rows

from vldft.data import DataError, Sample
from vldft.heldout import cli, default_controls, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory holding a tiny Qwen2.5-VL checkpoint as ``final/``."""
    from vldft.adapters import build_tiny

    run = tmp_path_factory.mktemp("run")
    model, processor = build_tiny("qwen2_5_vl", 3136, 3136)
    model.save_pretrained(run / "final")
    processor.save_pretrained(run / "final")
    return run


def text_row(i: int, **extra) -> dict:
    return {"id": f"t{i}", "messages": [{"role": "user", "content": "What is 2 + 2?"},
                                        {"role": "assistant", "content": "4"}], **extra}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_set_without_answers_prints_n_a(run, tmp_path, capsys):
    """No ``answer`` field: accuracy is n/a, as training prints it (it was a TypeError)."""
    path = write(tmp_path / "text.jsonl", [text_row(i) for i in range(3)])
    results = cli([str(run / "final"), str(path), "--controls", "none", "--max-new-tokens", "2"])
    assert results["images"]["accuracy"] is None and results["images"]["n_scored_ce"] == 3
    printed = capsys.readouterr().out
    assert "held-out (3 samples), text only: accuracy n/a" in printed, printed


def test_default_controls_follow_the_file(run, tmp_path, capsys):
    """Images: blank, shuffled; videos only: the video controls; text only: none (the default
    no longer fails on a text-only file). An explicit control the file cannot take is still
    refused."""
    image = Sample(id="i", messages=[], images=["a.png"])
    video = Sample(id="v", messages=[], videos=["a.mp4"])
    text = Sample(id="t", messages=[])
    assert default_controls([text, image]) == ["blank", "shuffled"]
    assert default_controls([text, video]) == ["frozen_frame", "shuffled_frames"]
    assert default_controls([image, video]) == ["blank", "shuffled"]
    assert default_controls([text]) == []
    path = write(tmp_path / "text.jsonl", [text_row(i, answer="4") for i in range(2)])
    results = cli([str(run / "final"), str(path), "--max-new-tokens", "2"])
    assert list(results) == ["images"] and results["images"]["accuracy"] is not None
    with pytest.raises(SystemExit) as e:
        cli([str(run / "final"), str(path), "--controls", "blank"])
    assert e.value.code == 2
    assert "--controls blank: " in capsys.readouterr().err


def test_an_image_set_still_gets_blank_and_shuffled_by_default(run, tmp_path):
    """Unchanged: a set with images gets the two image controls."""
    rows = tiny_demo_rows(2)
    path = write(tmp_path / "images.jsonl", rows)
    results = main([str(run / "final"), str(path), "--max-new-tokens", "2"])
    assert list(results) == ["images", "blank", "shuffled"]


def test_one_image_sample_cannot_be_shuffled(run, tmp_path, capsys):
    """One sample: the shuffled control would give it its own image (it was scored as a
    control all the same): asked for, it is refused in a line; by default it is left out, said
    so."""
    path = write(tmp_path / "one.jsonl", tiny_demo_rows(1))
    with pytest.raises(SystemExit) as e:
        cli([str(run / "final"), str(path), "--controls", "shuffled"])
    assert e.value.code == 2
    assert "--controls shuffled: no two of the 1 samples with images" in capsys.readouterr().err
    results = main([str(run / "final"), str(path), "--max-new-tokens", "2"])
    assert list(results) == ["images", "blank"]
    assert "no shuffled-images control" in capsys.readouterr().out


def bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (held-out file, what the error line says)."""
    image_row = {**tiny_demo_rows(1)[0], "images": [str(tmp / "nope.png")]}
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    video_row = {"id": "v", "videos": ["corrupt.mp4"], "answer": "right", "messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]},
        {"role": "assistant", "content": "right"}]}
    return {
        "corrupt image": (write(tmp / "cimg.jsonl", [
            *tiny_demo_rows(2), {**image_row, "id": "c", "images": [str(tmp / "corrupt.png")]}]),
            "corrupt.png. cannot be decoded"),
        "corrupt video": (write(tmp / "cvid.jsonl", [video_row]),
                          "corrupt.mp4. cannot be opened"),
        "missing file": (tmp / "absent.jsonl", "data file not found"),
        "a folder": (tmp, "a folder, not a JSONL file"),
        "bad json": (write(tmp / "bad.jsonl", ['{"id": "a", bad']), "invalid JSON"),
        "missing image": (write(tmp / "img.jsonl", [image_row]), "image file not found"),
        "no assistant turn": (write(tmp / "user.jsonl", [
            {"id": "a", "messages": [{"role": "user", "content": "hi"}]}]), "no assistant turn"),
    }


@pytest.mark.parametrize("case", ["missing file", "a folder", "bad json", "missing image",
                                  "no assistant turn", "corrupt image", "corrupt video"])
def test_a_bad_held_out_file_is_one_line_and_status_2(run, tmp_path, capsys, case):
    """``cli`` says a ``DataError`` in one line (``main`` keeps raising it, for library use)."""
    path, said = bad_files(tmp_path)[case]
    with pytest.raises(SystemExit) as e:
        cli([str(run / "final"), str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(said, err) and err.count("\n") == 1, err
    assert err.startswith("python -m vldft.heldout: error: ")
    with pytest.raises(DataError, match=said):
        main([str(run / "final"), str(path)])


def test_a_wrong_checkpoint_is_one_line_and_status_2(run, tmp_path, capsys):
    """A missing folder; the run directory instead of its final/ (named); a folder without
    config.json; a config.json without weights."""
    path = write(tmp_path / "text.jsonl", [text_row(0, answer="4")])
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    for ckpt, said in ((tmp_path / "nope", f"checkpoint {tmp_path / 'nope'}: no such directory"),
                       (run, f"not a saved checkpoint (a run directory? did you mean "
                             f"{run / 'final'}?)"),
                       (empty, f"checkpoint {empty}: no config.json here"),
                       (path, f"checkpoint {path}: a file; pass the checkpoint folder"),
                       (bare, f"checkpoint cannot load {bare}")):
        with pytest.raises(SystemExit) as e:
            main([str(ckpt), str(path), "--controls", "none"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and err.count("\n") == 1, err


def test_the_module_prints_no_traceback(run, tmp_path):
    """``python -m vldft.heldout`` itself: the run directory for its checkpoint, and a missing
    image, are one line each on stderr, status 2."""
    text = write(tmp_path / "text.jsonl", [text_row(0)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args, said in (([str(run), str(text), "--controls", "none"],
                        f"did you mean {run / 'final'}?"),
                       ([str(run / "final"), str(bad_files(tmp_path)["missing image"][0])],
                        "image file not found")):
        proc = subprocess.run([sys.executable, "-m", "vldft.heldout", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = [x for x in proc.stderr.splitlines() if "error" in x or "Traceback" in x]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(lines) == 1 and said in lines[0], proc.stderr[-3000:]


def test_a_held_out_set_with_every_sample_skipped_scores_n_a(tmp_path):
    """Every held-out sample over data.max_length: CE and loss are None (n/a), not 0.0000
    (a perfect score), and the console lines say n/a and how many were skipped."""
    import contextlib
    import io

    from vldft.adapters import load_adapter
    from vldft.collate import Collator
    from vldft.config import ModelConfig
    from vldft.data import sample_from_row
    from vldft.heldout import combine, score_part
    from vldft.report import _num

    adapter = load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))
    rows = tiny_demo_rows(2)
    samples = [sample_from_row(r, f"h.jsonl:{i}", ROOT / "data" / "geo_demo")
               for i, r in enumerate(rows, 1)]
    res = combine([score_part(adapter, Collator(adapter, 16), samples, 2, 2, "dft")])
    assert res["n_skipped"] == 2 and res["n_scored_ce"] == 0
    assert res["ce"] is None and res["loss"] is None and res["mean_p"] is None
    assert _num(res["ce"]) == "n/a" and _num(0.01234) == "0.0123"
    from vldft.report import print_summary

    said = io.StringIO()
    log = {"step": 1, "objective": "dft", "loss": 0.5, "ce": 1.0, "mean_p": 0.4}
    summary = {"steps": 1, "objective": "dft", "heldout": res, "first_log": log,
               "last_log": log, "train_seconds": 1.0, "skipped": {}, "truncated": 0,
               "checkpoint": "runs/x/final",
               "heldout_history": [{"step": 1, "ce": None, "loss": None, "accuracy": None,
                                    "n_skipped": 2}]}
    with contextlib.redirect_stdout(said):
        print_summary(summary, [log])
    assert "held-out at step 1 (2 samples, 2 skipped): ce n/a, dft loss n/a" in said.getvalue()


def test_clips_scored_without_the_runs_settings_are_said_so(run, tmp_path, capsys):
    """A checkpoint with no config.yaml beside it and no --config: its clips are decoded with
    the default data.video settings, and the command says so (it did not)."""
    from PIL import Image

    (tmp_path / "clip").mkdir()
    for i in range(4):
        Image.new("RGB", (28, 28), (60 * i, 0, 0)).save(tmp_path / "clip" / f"{i}.png")
    row = {"id": "v", "videos": ["clip"], "answer": "right", "messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]},
        {"role": "assistant", "content": "right"}]}
    path = write(tmp_path / "v.jsonl", [row])
    main([str(run / "final"), str(path), "--controls", "none", "--max-new-tokens", "2"])
    assert "note: no config.yaml beside" in capsys.readouterr().out
    (tmp_path / "run.yaml").write_text("data: {video: {max_frames: 2}}\n")
    main([str(run / "final"), str(path), "--controls", "none", "--max-new-tokens", "2",
          "--config", str(tmp_path / "run.yaml")])
    assert "note: no config.yaml" not in capsys.readouterr().out


def test_samples_are_encoded_with_the_runs_max_length(run, tmp_path, capsys):
    """The run's data.max_length / overlong (its config.yaml, or --config) encode the held-out
    samples, as the in-training evaluation does (the command used 2048 whatever the run had:
    the two routes skipped different samples); a bad value is one line."""
    path = write(tmp_path / "h.jsonl", tiny_demo_rows(2))
    base = [str(run / "final"), str(path), "--controls", "none", "--max-new-tokens", "2"]
    assert main(base)["images"]["n_skipped"] == 0
    (tmp_path / "short.yaml").write_text("data: {max_length: 20, overlong: skip}\n")
    capsys.readouterr()
    res = main([*base, "--config", str(tmp_path / "short.yaml")])["images"]
    assert res["n_skipped"] == 2 and res["ce"] is None
    assert "; 2 skipped for CE (over data.max_length)" in capsys.readouterr().out
    (tmp_path / "strict.yaml").write_text("data: {max_length: 20, overlong: error}\n")
    with pytest.raises(SystemExit) as e:  # the run's overlong=error: one line, not a traceback
        cli([*base, "--config", str(tmp_path / "strict.yaml")])
    err = capsys.readouterr().err.splitlines()[-1]  # (transformers' weight-loading bar above)
    assert e.value.code == 2 and err.startswith("python -m vldft.heldout: error: sample ")
    assert "data.max_length=20" in err
    (tmp_path / "bad.yaml").write_text("data: {overlong: cut}\n")
    with pytest.raises(SystemExit) as e:
        main([*base, "--config", str(tmp_path / "bad.yaml")])
    assert e.value.code == 2 and "data.overlong" in capsys.readouterr().err
