"""Data errors are per row, always: an invalid UTF-8 byte costs its line (file, line, byte
offset), never the file; a corrupt image is a row error naming file, line, id and image. Every
skip is listed in data_summary.json and on the console; ``on_error=raise`` stops with one line
(no traceback) naming the row."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, TINY_CONFIG, tiny_demo_rows

import vldft.data.formats as formats_mod
from vldft.config import SourceConfig, load_config
from vldft.data import DataError, load_jsonl
from vldft.data.formats import read_source
from vldft.data.skips import SkipReport
from vldft.datatool import validate
from vldft.loader import dedupe
from vldft.train import cli, main

BAD_LINE = 501


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def _utf8_file(folder: Path, extra_bad_json: int | None = None) -> tuple[Path, int]:
    """520 demo rows; line 501 has one invalid byte (0xff) inside its question text; with
    ``extra_bad_json`` that line is cut (invalid JSON). Returns (path, offset of the byte)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r).encode() for r in tiny_demo_rows(520)]
    bad = lines[BAD_LINE - 1]
    k = bad.index(b"What") if b"What" in bad else bad.index(b'"text": "') + 9
    lines[BAD_LINE - 1] = bad[:k] + b"\xff" + bad[k + 1:]
    if extra_bad_json:
        lines[extra_bad_json - 1] = lines[extra_bad_json - 1][:40]
    data = b"".join(ln + b"\n" for ln in lines)
    path = folder / "train.jsonl"
    path.write_bytes(data)
    offset = data.index(b"\xff")
    assert data.count(b"\n", 0, offset) + 1 == BAD_LINE
    return path, offset


def _train_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.train_files=[{data}]", "data.heldout_file=null", f"train.output_dir={out}",
            "train.max_steps=2", "train.micro_batch_size=8", "train.log_every=1",
            "train.eval_max_samples=0", "loss.sft_warmup_steps=0", *extra]


def _validate(data: Path):
    cfg = load_config(None, ["model.tiny=true", f"data.train_files=[{data}]",
                             "data.heldout_file=null", f"base_dir={data.parent}"])
    return validate(cfg, None, max_samples=0)


# -- invalid UTF-8 -----------------------------------------------------------------------------
def test_validate_reports_the_bad_utf8_row_and_keeps_the_other_519(tmp_path):
    data, offset = _utf8_file(tmp_path / "a")
    report = _validate(data)
    assert report.rows == {"train": 520}
    assert report.counts == {("train", "bad_json"): 1}
    [entry] = report.entries
    assert entry["file"] == str(data) and entry["line"] == BAD_LINE
    assert entry["offset"] == offset and entry["reason"] == "bad_json"
    assert f"byte offset {offset}" in entry["message"] and "0xff" in entry["message"]
    assert f"{data}:{BAD_LINE}" in report.summary()
    samples = read_source(SourceConfig(path=str(data)), tmp_path, "skip", SkipReport())
    assert len(samples) == 519 and f"train.jsonl:{BAD_LINE}" not in {s.origin for s in samples}


def test_validate_still_reports_another_bad_row_in_the_same_file(tmp_path):
    data, offset = _utf8_file(tmp_path / "b", extra_bad_json=7)
    report = _validate(data)
    assert report.rows == {"train": 520}
    assert sorted((e["line"], e["reason"]) for e in report.entries) == [
        (7, "bad_json"), (BAD_LINE, "bad_json")]
    assert "invalid JSON" in report.entries[0]["message"]
    assert report.entries[1]["offset"] == offset
    samples = read_source(SourceConfig(path=str(data)), tmp_path, "skip", SkipReport())
    assert len(samples) == 518


def test_train_with_skip_trains_on_the_other_rows_and_lists_the_bad_one(tmp_path, capsys):
    data, offset = _utf8_file(tmp_path / "c")
    out = tmp_path / "run"
    summary = main(load_config(TINY_CONFIG,
                               _train_overrides(data, out, "data.on_error=skip")))
    assert summary["steps"] == 2 and summary["train_samples"] == 519
    assert summary["read_skips"] == {"train/bad_json": 1}
    saved = json.loads((out / "data_summary.json").read_text())
    assert saved["sources"][0]["read"] == 519
    [entry] = saved["skipped"]
    assert entry == {"stage": "read", "source": "train", "reason": "bad_json",
                     "file": str(data), "line": BAD_LINE, "id": f"train.jsonl:{BAD_LINE}",
                     "offset": offset, "message": entry["message"]}
    console = capsys.readouterr().out
    assert f"{data}:{BAD_LINE}" in console and "data_summary.json" in console


def test_train_with_raise_stops_with_one_line_naming_file_line_and_offset(tmp_path):
    data, offset = _utf8_file(tmp_path / "d")
    with pytest.raises(SystemExit) as e:
        cli([str(TINY_CONFIG), *_train_overrides(data, tmp_path / "run")])
    msg = str(e.value.code)
    assert "\n" not in msg and "Traceback" not in msg
    assert f"{data}:{BAD_LINE}" in msg and f"byte offset {offset}" in msg


def test_heldout_and_json_documents_name_line_and_offset(tmp_path):
    data, offset = _utf8_file(tmp_path / "e")
    with pytest.raises(DataError, match=rf"train\.jsonl:{BAD_LINE}: .*byte offset {offset}"):
        load_jsonl(data)
    doc = tmp_path / "e" / "rows.json"
    raw = b'[\n  {"id": "a"},\n  {"id": "b\xff"}\n]\n'
    doc.write_bytes(raw)
    at = raw.index(b"\xff")
    with pytest.raises(DataError, match=rf"rows\.json:3: .*byte offset {at}") as err:
        list(formats_mod.iter_json(doc))
    assert err.value.offset == at and err.value.reason == "bad_json"


# -- corrupt images ----------------------------------------------------------------------------
def _corrupt_image_file(folder: Path) -> tuple[Path, Path, str]:
    """16 demo rows, the 4th pointing at a .png of random bytes. (data, image, id)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = tiny_demo_rows(16)
    bad = folder / "corrupt.png"
    bad.write_bytes(random.Random(0).randbytes(3000))
    rows[3]["images"] = [str(bad)]
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, bad, rows[3]["id"]


def test_corrupt_image_with_skip_is_listed_with_id_file_line_and_image(tmp_path, capsys):
    data, bad, sid = _corrupt_image_file(tmp_path / "f")
    out = tmp_path / "run"
    summary = main(load_config(TINY_CONFIG,
                               _train_overrides(data, out, "data.on_error=skip")))
    assert summary["train_samples"] == 15
    assert summary["read_skips"] == {"train/image_corrupt": 1}
    [entry] = json.loads((out / "data_summary.json").read_text())["skipped"]
    assert {k: entry[k] for k in ("stage", "source", "reason", "file", "line", "id", "image")} \
        == {"stage": "read", "source": "train", "reason": "image_corrupt", "file": str(data),
            "line": 4, "id": sid, "image": str(bad)}
    console = capsys.readouterr().out
    assert f"{data}:4 (id {sid})" in console and str(bad) in console
    assert "image_corrupt" in console and "data_summary.json" in console


def test_corrupt_image_with_raise_stops_before_training(tmp_path):
    data, bad, sid = _corrupt_image_file(tmp_path / "g")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli([str(TINY_CONFIG), *_train_overrides(data, out)])
    msg = str(e.value.code)
    assert "\n" not in msg and f"{data}:4 (id {sid})" in msg and str(bad) in msg
    assert not (out / "metrics.jsonl").exists()  # stopped before training started


def test_a_corrupt_held_out_image_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """A held-out set is scored whole or refused: a row whose image (or clip) does not decode
    stops the run in one line at start, whatever data.on_error says for training rows (it was
    found at the first evaluation: a traceback after training)."""
    import vldft.train as train_mod

    heldout, bad, sid = _corrupt_image_file(tmp_path / "hh")
    data = heldout  # training rows may skip that image; the held-out set may not
    out = tmp_path / "run"
    monkeypatch.setattr(train_mod, "load_model", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as e:
        cli([str(TINY_CONFIG), *_train_overrides(data, out, "data.on_error=skip",
                                                 f"data.heldout_file={heldout}")])
    msg = str(e.value.code)
    assert "\n" not in msg and f"{heldout}:4 (id {sid})" in msg and str(bad) in msg, msg
    assert "held-out file" in msg and not (out / "metrics.jsonl").exists()


def test_image_failing_only_at_encode_time_is_named_too(tmp_path, monkeypatch, capsys):
    """An image PIL's verify() passes but that cannot be decoded (simulated by turning the
    up-front check off): skip lists it (stage encode), raise stops with one line."""
    monkeypatch.setattr(formats_mod, "image_problem", lambda img: None)
    data, bad, sid = _corrupt_image_file(tmp_path / "h")
    out = tmp_path / "run"
    summary = main(load_config(TINY_CONFIG,
                               _train_overrides(data, out, "data.on_error=skip")))
    assert summary["skipped"] == {"train/image_corrupt": 1}
    [entry] = json.loads((out / "data_summary.json").read_text())["skipped"]
    assert (entry["stage"], entry["file"], entry["line"], entry["id"], entry["image"]) == \
        ("encode", str(data), 4, sid, str(bad))
    assert f"{data}:4 (id {sid})" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli([str(TINY_CONFIG), *_train_overrides(data, tmp_path / "run2",
                                                                "train.max_steps=4")])
    msg = str(e.value.code)
    assert "\n" not in msg and f"{data}:4 (id {sid})" in msg and str(bad) in msg


def test_ranks_agree_on_skip_counts():
    """Entries gathered from two ranks that both met the same sample count it once."""
    e = {"stage": "encode", "source": "train", "reason": "image_corrupt", "file": "t.jsonl",
         "line": 4, "id": "x", "message": "m"}
    f = dict(e, line=9, id="y")
    assert dedupe([e, f, dict(e)]) == [e, f]


# -- encode-time skips: keys, ranks, resume ----------------------------------------------------
class _Sampler:
    def set_position(self, *args) -> None:
        pass


def _stream_skips(batches: list[list], seen: set | None = None,
                  entries: list[dict] | None = None) -> tuple[Counter, list[dict], set]:
    """Run ``micro_batch_stream`` over micro-batches whose skipped samples are ``batches``."""
    from vldft.collate import Skipped
    from vldft.loader import micro_batch_stream
    from vldft.state import RunState

    loader = [{"skipped": [Skipped(*s) for s in b], "n_truncated": 0, "input_ids": 1}
              for b in batches]
    state = RunState(seen=seen or set(), skip_entries=[] if entries is None else entries)
    stream = micro_batch_stream(loader, _Sampler(), state, 1)
    for _ in batches:
        next(stream)
    return state.skips, state.skip_entries, state.seen


def test_same_id_skipped_in_two_sources_is_counted_and_listed_for_each():
    """Ids like "1" or "train.jsonl:3" recur across sources: each source's skip counts."""
    skips, entries, _ = _stream_skips([[("1", "too_long", "srcA", "/d/a.jsonl:1"),
                                        ("1", "too_long", "srcB", "/d/b.jsonl:1")],
                                       [("1", "too_long", "srcA", "/d/a.jsonl:1")]])
    assert skips == Counter({("srcA", "too_long"): 1, ("srcB", "too_long"): 1})
    assert [(e["source"], e["file"], e["line"]) for e in entries] == [
        ("srcA", "/d/a.jsonl", 1), ("srcB", "/d/b.jsonl", 1)]


def test_checkpoint_holds_the_skips_of_every_rank_and_each_rank_resumes_from_them():
    """trainer_state.json is written by the main process: it must carry the skips met on
    rank 1 too, and a rank resuming from it must neither lose nor recount them."""
    from vldft.loader import merge_skip_state, seen_keys

    _, e0, s0 = _stream_skips([[("1", "too_long", "srcA", "/d/a.jsonl:1")]])  # rank 0
    _, e1, s1 = _stream_skips([[("1", "too_long", "srcB", "/d/b.jsonl:1"),  # rank 1
                                ("7", "image_corrupt", "srcA", "/d/a.jsonl:7")]])
    # what each rank hands to gather_object (rank 1 met srcA/1 in another epoch too)
    parts = [(sorted(s0, key=str), e0), (sorted(s1 | {("srcA", "1")}, key=str), e1 + e0)]
    state = json.loads(json.dumps(merge_skip_state(parts)))  # as trainer_state.json
    assert sorted(map(tuple, state["seen"])) == [("srcA", "1"), ("srcA", "7"), ("srcB", "1")]
    assert [(e["source"], e["id"]) for e in state["skip_entries"]] == [
        ("srcA", "1"), ("srcA", "7"), ("srcB", "1")]
    assert sorted((tuple(k), n) for k, n in state["skips"]) == [
        (("srcA", "image_corrupt"), 1), (("srcA", "too_long"), 1), (("srcB", "too_long"), 1)]
    # a resumed rank (any of them) meets rank 1's samples again: nothing new is recorded
    skips, entries, _ = _stream_skips([[("7", "image_corrupt", "srcA", "/d/a.jsonl:7"),
                                        ("1", "too_long", "srcB", "/d/b.jsonl:1")]],
                                      seen_keys(state), list(state["skip_entries"]))
    assert not skips and dedupe(entries) == entries == state["skip_entries"]


def test_checkpoint_of_an_older_version_with_plain_ids_still_resumes():
    """Checkpoints that stored ``seen`` as plain ids: an id a saved entry names takes its
    source; one without an entry (counts-only checkpoints) matches the id in any source."""
    from vldft.loader import seen_keys

    entry = {"stage": "encode", "source": "srcA", "reason": "too_long", "file": "/d/a.jsonl",
             "line": 1, "id": "1", "message": "m"}
    assert seen_keys({"seen": ["1"], "skip_entries": [entry]}) == {("srcA", "1")}
    keys = seen_keys({"seen": ["9"], "skips": [[["srcA", "too_long"], 1]]})
    assert keys == {"9"}
    skips, _, _ = _stream_skips([[("9", "too_long", "srcB", "/d/b.jsonl:9")]], keys)
    assert not skips


# -- line endings, byte order marks ------------------------------------------------------------
def test_lone_cr_line_endings_are_separate_rows_with_exact_offsets(tmp_path):
    """Old-Mac files (lines ended by a lone CR) read row by row, as in text mode; a bad byte's
    line and byte offset stay exact, whatever the mix of line endings."""
    row = b'{"a": 1}'
    data = row + b"\r" + b'{"a": "\xff"}\r\n' + row + b"\r" + row + b"\n" + row
    path = tmp_path / "mac.jsonl"
    path.write_bytes(data)
    rows = list(formats_mod.iter_json(path))
    assert [r[1] for r in rows] == [f"mac.jsonl:{n}" for n in range(1, 6)]
    bad = rows[1][2]
    assert isinstance(bad, DataError) and bad.offset == data.index(b"\xff")
    assert f"{path}:2:" in str(bad) and all(r[2] == {"a": 1} for r in rows[2:] + rows[:1])
    # a .json file that is really such JSONL: the same rows
    json_path = tmp_path / "mac.json"
    json_path.write_bytes(data)
    assert [r[1] for r in formats_mod.iter_json(json_path)] == [
        f"mac.json:{n}" for n in range(1, 6)]
    # U+2028 / U+0085 inside a row end no line (text mode never split there either)
    (tmp_path / "u.jsonl").write_text('{"a": "x\u2028y\x85z"}\n{"a": 1}\n', encoding="utf-8")
    assert len(list(formats_mod.iter_json(tmp_path / "u.jsonl"))) == 2


def test_json_file_that_is_jsonl_with_a_bom_is_read_line_by_line(tmp_path):
    """A .json file holding JSONL with a byte order mark and one bad byte: the other rows are
    read (as without the BOM), only the bad line is an error."""
    data = b"\xef\xbb\xbf" + b'{"a": 1}\n{"a": "\xff"}\n{"a": 2}\n'
    path = tmp_path / "rows.json"
    path.write_bytes(data)
    rows = list(formats_mod.iter_json(path))
    assert [r[2] for r in rows[::2]] == [{"a": 1}, {"a": 2}]
    assert isinstance(rows[1][2], DataError) and rows[1][2].offset == data.index(b"\xff")
    assert f"{path}:2:" in str(rows[1][2])


def test_two_rank_checkpoint_lists_the_samples_skipped_on_rank_1(tmp_path):
    """Two processes (gloo, torchrun), 16 rows of which 4 are over data.max_length, one step of
    8 rows per rank: checkpoint-1's trainer_state.json (written by rank 0) names all 4 skips,
    those rank 1 met included (the sampler's seed-0 order puts at least one on rank 1)."""
    import os
    import socket
    import subprocess
    import sys

    rows = tiny_demo_rows(16)
    for r in rows[1::4]:
        r["messages"][-1]["content"][-1]["text"] += " long" * 1500
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(port), "-m", "vldft.train", str(TINY_CONFIG),
         *_train_overrides(data, out, "data.overlong=skip", "data.group_by_length=false",
                           "train.save_every=1", "train.mixed_precision=no")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ids = [r["id"] for r in rows[1::4]]
    st = json.loads((out / "checkpoint-1/trainer_state.json").read_text())
    assert st["pos"] == {"epoch": 0, "consumed": 1}  # every row was met in step 1
    assert sorted(e["id"] for e in st["skip_entries"]) == ids
    assert sorted(map(tuple, st["seen"])) == [("train", i) for i in ids]
    assert st["skips"] == [[["train", "too_long"], 4]]
    assert json.loads((out / "summary.json").read_text())["skipped"] == {"train/too_long": 4}


def test_one_jsonl_reader_gives_every_caller_the_same_file_line_errors(tmp_path):
    """``iter_jsonl`` is the one line-numbered JSONL reader: the training reader
    (``load_jsonl``), every source format (``formats.iter_json``) and the local benchmark copies
    (``vldft.data.benchmarks``) report the same "file:line: ..." for the same broken line."""
    from vldft.data import iter_jsonl
    from vldft.data.benchmarks import LocalDataError, _records

    good = {"id": "a", "messages": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}]}
    lines = [json.dumps(good).encode(), b'{"id": "b", "messages": [', b"   ",
             json.dumps({**good, "id": "d"}).encode()[:-1] + b'\xff"}', json.dumps(good).encode()]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = list(iter_jsonl(path))
    assert [n for n, _ in got] == [1, 2, 4, 5]  # the blank line 3 is no row
    assert got[0][1] == got[3][1] == good  # (the reference: json.loads of the line itself)
    bad_json, bad_utf8 = got[1][1], got[2][1]
    assert isinstance(bad_json, DataError) and bad_json.reason == "bad_json"
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(lines[1])
    msg = e.value.msg.removesuffix(" at")
    assert str(bad_json) == f"{path}:2: invalid JSON ({msg} at column {e.value.colno})"
    assert isinstance(bad_utf8, DataError) and str(bad_utf8).startswith(
        f"{path}:4: not UTF-8 text: invalid byte 0xff at byte offset ")
    assert bad_utf8.offset == sum(len(x) + 1 for x in lines[:3]) + lines[3].index(b"\xff")
    with pytest.raises(DataError) as e_load:
        load_jsonl(path)
    assert str(e_load.value) == str(bad_json)
    rows = list(formats_mod.iter_json(path))
    assert [str(r[2]) for r in rows if isinstance(r[2], DataError)] == [str(bad_json),
                                                                        str(bad_utf8)]
    with pytest.raises(LocalDataError) as e_bench:
        _records(path)
    assert str(e_bench.value) == str(bad_json)
    path.write_bytes(b"\n".join([lines[0], lines[2], lines[4]]) + b"\n")
    assert [(where, rec["_key"]) for where, rec in _records(path)] == [
        (f"{path}:1", 0), (f"{path}:3", 2)]  # "_key": the line's index, as before


def test_split_placeholders_matches_a_regex_split():
    """``<image>`` splitting (string contents of every format): each placeholder an image part,
    the text between them text parts, empty text dropped; against ``re.split`` as reference."""
    import re

    from vldft.data import split_placeholders

    for text in ["", "<image>", "a", "<image>a", "a<image>", "<image><image>x", "a<image>b<image>",
                 "<imag>e <image> <IMAGE>"]:
        ref = []
        for i, chunk in enumerate(re.split(r"<image>", text)):
            ref += [{"type": "image"}] * (i > 0) + [{"type": "text", "text": chunk}] * bool(chunk)
        assert split_placeholders(text) == ref, text


def test_a_source_level_error_names_its_file_once(tmp_path):
    """An empty file's error: location and detail apart, so the skip report's
    'where: detail' line names the file once (it read '/x/empty.jsonl: /x/empty.jsonl: no rows')."""
    from vldft.data.formats import detect_format

    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError) as e:
        detect_format(path)
    assert (str(e.value), e.value.where, e.value.detail) == (f"{path}: no rows", str(path),
                                                             "no rows")


def test_missing_or_folder_image_says_which_and_where_relative_paths_resolve(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = [{"id": "a", "messages": [{"role": "user", "content": "<image>Q"},
                                     {"role": "assistant", "content": "A"}], "images": [img]}
            for img in ("imgs", "pics/x.png", str(tmp_path / "abs.png"))]
    path = tmp_path / "t.jsonl"
    messages = []
    for row in rows:
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(DataError) as e:
            load_jsonl(path)
        messages.append(str(e.value))
    assert "is a folder, not an image file" in messages[0]
    assert "image file not found" in messages[1] and f"resolves against {tmp_path}" in messages[1] \
        and "--image-root for vldft-data" in messages[1]
    assert "image_root" in messages[1]
    assert "image file not found" in messages[2] and "resolves against" not in messages[2]


def test_a_broken_json_line_is_named_without_a_doubled_word(tmp_path):
    """json's "Unterminated string starting at" followed by vldft's "at column" read "at at"."""
    from vldft.data import DataError, load_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "x\n')
    with pytest.raises(DataError) as e:
        load_jsonl(bad)
    assert "starting at column" in str(e.value) and "at at" not in str(e.value), str(e.value)
