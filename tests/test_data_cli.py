"""``python -m vldft.datatool`` (``vldft-data``): convert round trips, validate exit codes, inspect
output."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from PIL import Image

from vldft.config import SourceConfig
from vldft.data import ImageBytes, Sample, load_jsonl, open_image
from vldft.data.formats import read_source
from vldft.data.skips import SkipReport
from vldft.datatool import histogram, main, parse_columns, sample_to_row


def _png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def _llava(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "imgs" / "a.png")
    f = tmp_path / "llava.json"
    f.write_text(json.dumps([
        {"id": "l1", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "l2", "conversations": [{"from": "human", "value": "Hi"},
                                       {"from": "gpt", "value": "Hello."}]},
        {"id": "bad", "image": "missing.png", "conversations": [
            {"from": "human", "value": "<image>x"}, {"from": "gpt", "value": "y"}]}]))
    return f


def test_convert_round_trip_paths(tmp_path, capsys):
    src = _llava(tmp_path)
    out = tmp_path / "out" / "train.jsonl"
    args = ["convert", "--format", "llava", str(src), str(out),
            "--image-root", str(tmp_path / "imgs")]
    assert main(args) == 1  # a row was dropped and --on-error skip was not given
    assert main([*args, "--on-error", "skip"]) == 0  # dropping it accepted
    printed = capsys.readouterr().out
    assert "wrote 2 samples (1 with images: 1 image; 1 text-only)" in printed
    assert "image_missing" in printed and "(id bad)" in printed
    skipped = json.loads((out.parent / "train.skipped.json").read_text())
    assert [(e["id"], e["reason"]) for e in skipped["entries"]] == [("bad", "image_missing")]
    original = read_source(SourceConfig(path=str(src), format="llava",
                                        image_root=str(tmp_path / "imgs")), tmp_path,
                           on_error="skip", report=SkipReport())
    again = load_jsonl(out)
    assert [(s.id, s.messages, s.answer) for s in again] == \
        [(s.id, s.messages, s.answer) for s in original]
    assert [[p.resolve() for p in s.images] for s in again] == \
        [[p.resolve() for p in s.images] for s in original]
    row = json.loads(out.read_text().splitlines()[0])
    assert row["images"][0] == str((tmp_path / "imgs" / "a.png").resolve())  # outside out/


def test_convert_hf_bytes_become_png_files(tmp_path, capsys):
    from datasets import Dataset, Features, List, Value
    from datasets import Image as HFImage

    colors = [(255, 0, 0), (0, 0, 255)]
    feats = Features({"pics": List(HFImage()), "prob": Value("string"), "ans": Value("string")})
    ds = Dataset.from_dict({"pics": [[{"bytes": _png_bytes(c), "path": None}] for c in colors],
                            "prob": ["Color?", "And now?"], "ans": ["red", "blue"]},
                           features=feats)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    out = tmp_path / "conv.jsonl"
    assert main(["convert", "--format", "hf", str(tmp_path / "d.parquet"), str(out),
                 "--columns", "q=prob,a=ans,img=pics",
                 "--prompt-template", "{question} One word."]) == 0
    samples = load_jsonl(out)
    assert [s.answer for s in samples] == ["red", "blue"]
    assert samples[0].messages[0]["content"] == [{"type": "image"},
                                                 {"type": "text", "text": "Color? One word."}]
    assert samples[1].images == [tmp_path / "conv_images" / "000001_0.png"]
    for s, c in zip(samples, colors, strict=True):
        assert open_image(s.images[0]).convert("RGB").getpixel((5, 5)) == c
    row = json.loads(out.read_text().splitlines()[0])
    assert row["images"] == ["conv_images/000000_0.png"]  # relative to the output's folder


def test_convert_pil_images_written_as_png(tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 0)).save(jpeg, format="JPEG")
    s = Sample("x", [], [Image.new("RGB", (4, 4), (1, 2, 3)), ImageBytes(jpeg.getvalue())])
    row = sample_to_row(s, tmp_path / "imgs", tmp_path, 7)
    assert row["images"] == ["imgs/000007_0.png", "imgs/000007_1.png"]
    assert Image.open(tmp_path / "imgs/000007_0.png").getpixel((0, 0)) == (1, 2, 3)
    assert Image.open(tmp_path / "imgs/000007_1.png").format == "PNG"


def test_parse_columns():
    assert parse_columns("q=problem, a=answer,img=images,id=pid") == {
        "question": "problem", "answer": "answer", "images": "images", "id": "pid"}
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_columns("problem")


def _config(tmp_path: Path, rows: list[dict]) -> Path:
    Image.new("RGB", (32, 32), (0, 128, 0)).save(tmp_path / "g.png")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"family": "qwen2_5_vl", "tiny": True},
           "data": {"train_files": ["d.jsonl"], "max_length": 256},
           "train": {"output_dir": "run"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


GOOD = {"id": "g1", "images": ["g.png"], "messages": [
    {"role": "user", "content": "<image>Color?"}, {"role": "assistant", "content": "Green."}]}
TEXT = {"id": "t1", "messages": [{"role": "user", "content": "1+1?"},
                                 {"role": "assistant", "content": "2"}]}


def test_validate_exit_codes(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    good = _config(tmp_path / "a", [GOOD, TEXT])
    assert main(["validate", str(good)]) == 0
    report = json.loads((tmp_path / "a" / "run" / "validation.json").read_text())
    assert report["ok"] is True and report["rows"] == {"d": 2}
    assert "validation: OK" in capsys.readouterr().out
    (tmp_path / "b").mkdir()
    bad = _config(tmp_path / "b", [GOOD, {**TEXT, "messages": TEXT["messages"][:1]}])
    assert main(["validate", str(bad), "data.max_length=300", "--max-samples", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "no_assistant" in out and "d.jsonl:2 (id t1)" in out
    assert main(["validate", str(bad), "data.nope=1"]) == 2  # config error
    assert "data.nope: unknown key" in capsys.readouterr().err


def test_inspect_prints_trained_tokens_and_writes_html(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    cfg = _config(tmp_path / "x", [GOOD, TEXT])
    html = tmp_path / "view.html"
    assert main(["inspect", str(cfg), "--n", "2", "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "[[Green.<|im_end|>]]" in out and "[[2<|im_end|>]]" in out
    assert "<|image_pad|>x4" in out and "'image': 4" in out
    assert "token lengths of 2 samples" in out and "#" in out and "truncated" not in out
    page = html.read_text()
    assert page.count('<img src="data:image/png;base64,') == 1
    assert '<span class="train">Green.&lt;|im_end|&gt;</span>' in page
    assert '<span class="image">&lt;|image_pad|&gt;\u00d74</span>' in page


def test_output_paths_are_made_or_refused_before_the_work(tmp_path, capsys):
    """inspect --html into a folder that does not exist yet writes there (it was a traceback
    after every sample had been encoded); an output that cannot be written is one error line
    before any row is read."""
    (tmp_path / "x").mkdir()
    cfg = _config(tmp_path / "x", [GOOD, TEXT])
    html = tmp_path / "new" / "deeper" / "view.html"
    assert main(["inspect", str(cfg), "--n", "1", "--html", str(html)]) == 0
    assert html.read_text().startswith("<!doctype html>")
    (tmp_path / "file").write_text("")
    src = _llava(tmp_path)
    for out, said in ((tmp_path / "file" / "o.jsonl", "its folder cannot be made"),
                      (tmp_path, "a folder; give a file name")):
        capsys.readouterr()
        assert main(["convert", "--format", "llava", str(src), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: OUT {out}: {said}") and err.count("\n") == 1, err
    assert main(["inspect", str(cfg), "--html", str(tmp_path / "file" / "v.html")]) == 2
    assert "--html" in capsys.readouterr().err


def test_inspect_counts_truncated_and_skipped_samples(tmp_path, capsys):
    """The histogram's samples and the rest: truncated ones counted, skipped ones (not in the
    histogram) counted by source and reason (they were left out silently)."""
    cfg = _config(tmp_path, [GOOD, TEXT])
    assert main(["inspect", str(cfg), "--n", "0", "data.max_length=70"]) == 0
    out = capsys.readouterr().out
    assert "token lengths of 2 samples" in out and "truncated to data.max_length: 1 of these 2" \
        in out and "skipped" not in out, out
    assert main(["inspect", str(cfg), "--n", "0", "data.max_length=40"]) == 0
    out = capsys.readouterr().out
    assert "token lengths of 0 samples" in out, out
    assert "skipped while encoding (not in the histogram): 2 samples: 1 d/image_cut (" in out, out
    # a picture that cannot be decoded is counted as such, not a traceback
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "d.jsonl").write_text(json.dumps({**GOOD, "images": ["bad.png"]}) + "\n"
                                      + json.dumps(TEXT) + "\n")
    assert main(["inspect", str(cfg), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "token lengths of 1 samples" in out and "1 d/image_corrupt" in out, out


def test_inspect_counts_samples_shortened_by_frames(tmp_path, capsys):
    """A video sample over data.max_length is decoded again with fewer frames, as in training
    (``video_shortened``): inspect counts such samples, as it counts truncated ones, and marks
    the ones it shows."""
    (tmp_path / "frames").mkdir()  # 16 frames: at the default video pixels, over max_length
    for i in range(16):
        Image.new("RGB", (32, 32), (0, 10 * i, 0)).save(tmp_path / "frames" / f"{i}.png")
    long = {"id": "v1", "videos": ["frames"], "messages": [
        {"role": "user", "content": "<video>Which way?"}, {"role": "assistant", "content": "Left"}]}
    cfg = _config(tmp_path, [GOOD, long, TEXT])
    assert main(["inspect", str(cfg), "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "token lengths of 3 samples" in out and "skipped" not in out, out
    assert "shortened by frames to fit data.max_length: 1 of these 3 samples" in out, out
    marked = [line for line in out.splitlines() if "videos shortened by frames" in line]
    assert len(marked) == 1 and marked[0].startswith("--- d / v1 "), out
    counts = ast.literal_eval(marked[0].split("frames): ", 1)[1])  # video pads apart from prompt
    assert counts["video"] > counts["prompt"] and counts["image"] == 0, counts
    page = tmp_path / "view.html"  # the clip as training decodes it: a strip of timed frames
    assert main(["inspect", str(cfg), "--n", "3", "data.max_length=4096", "data.video.fps=4",
                 "--html", str(page)]) == 0
    assert "shortened" not in capsys.readouterr().out
    clips = re.findall(r'<div class="clip".*?</div>', page.read_text())
    assert len(clips) == 1 and clips[0].count("<figure>") == 16, clips
    assert "<figcaption>0.00 s</figcaption>" in clips[0] and "3.75 s" in clips[0]
    assert page.read_text().count("<figure>") == 16  # the image and text rows show no strip


def test_histogram():
    text = histogram([1, 1, 1, 5, 10], bins=3, width=6)
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].split()[-1] == "3" and "######" in lines[0]
    assert histogram([]) == "(no values)"


def test_help_runs_as_module():
    res = subprocess.run([sys.executable, "-m", "vldft.datatool", "convert", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--columns" in res.stdout and "--image-root" in res.stdout


def test_validate_no_encode_checks_files_without_the_model(tmp_path, capsys):
    """--no-encode is the file-only check: it must run where the checkpoint is not at hand."""
    cfg_path = _config(tmp_path, [GOOD, TEXT])
    cfg = yaml.safe_load(cfg_path.read_text())
    (tmp_path / "empty-checkpoint").mkdir()  # the path exists, holds no model
    cfg["model"] = {"family": "qwen2_5_vl", "name_or_path": str(tmp_path / "empty-checkpoint")}
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(cfg_path), "--no-encode"]) == 0
    assert "validation: OK" in capsys.readouterr().out
    # encoding needs the checkpoint: a clear error naming the key and the path, no traceback
    assert main(["validate", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "model.name_or_path: cannot load" in err and "empty-checkpoint" in err


# -- convert: videos -----------------------------------------------------------------------------
def _data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_convert_keeps_videos_frames_and_per_clip_settings(tmp_path, capsys, one_thread):
    """A messages source with a video file beside an image, a frame list given as bytes (data
    URIs: written out as PNG files, as images are), a frame folder, clips with their own fps /
    max_frames / max_pixels and nframes, and a text-only row converts to a file that reads back
    to the same samples (the reference: the source read directly): messages, images, each
    clip's file or frame pixels, its options and its decoded frames; ``validate`` on it finds
    nothing, and the summary counts the videos."""
    import numpy as np
    from test_video import ANSWER, QUESTION, msg_row, write_clip, write_frames

    from vldft.adapters import load_adapter
    from vldft.config import ModelConfig, VideoSettings

    src_dir = tmp_path / "src"
    src_dir.mkdir()
    write_clip(src_dir / "clip.mp4")
    frames = write_frames(src_dir / "frames", 6)
    Image.new("RGB", (32, 32), (0, 128, 0)).save(src_dir / "pic.png")
    clip = {"fps": 4.0, "max_frames": 6, "max_pixels": 2 * 28 * 28}
    rows = [
        {**msg_row("file", {"type": "video", "video": "clip.mp4"}), "images": ["pic.png"]},
        msg_row("bytes", {"type": "video", "video": [_data_uri(f) for f in frames[:4]]}),
        msg_row("folder", {"type": "video", "video": "frames", "nframes": 4}),
        msg_row("part-keys", {"type": "video", "video": "clip.mp4", **clip}),
        msg_row("entry-keys", {"type": "video"}, videos=[{"video": "clip.mp4", "fps": 1.0}]),
        {"id": "text", "messages": [{"role": "user", "content": "1+1?"},
                                    {"role": "assistant", "content": "2"}]}]
    rows[0]["messages"][0]["content"].insert(1, {"type": "image"})
    src = src_dir / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "train.jsonl"
    assert main(["convert", "--format", "messages", str(src), str(out)]) == 0
    # rows, as the mixture table counts them, and the files they hold (the row with a clip and
    # an image counts in both)
    assert ("wrote 6 samples (1 with images: 1 image; 5 with video: 5 clips; 1 text-only)"
            in capsys.readouterr().out)

    original = read_source(SourceConfig(path=str(src), format="messages"), tmp_path)
    again = load_jsonl(out)
    assert [(s.id, s.messages, s.answer) for s in again] == \
        [(s.id, s.messages, s.answer) for s in original]
    assert again[1].messages[-1]["content"] == [{"type": "text", "text": ANSWER}]
    assert QUESTION in again[0].messages[0]["content"][2]["text"]
    assert [[p.resolve() for p in s.images] for s in again] == \
        [[p.resolve() for p in s.images] for s in original]
    run = VideoSettings(min_pixels=28 * 28, max_pixels=64 * 64)
    qwen = load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))
    for a, b in zip(again, original, strict=True):
        assert len(a.videos) == len(b.videos), a.id
        for va, vb in zip(a.videos, b.videos, strict=True):
            assert va.options == vb.options, a.id
            assert (va.file is None) == (vb.file is None), a.id
            if vb.file is not None:
                assert va.file.resolve() == vb.file.resolve()
            else:
                assert [np.asarray(open_image(f).convert("RGB")).tolist() for f in va.frames] \
                    == [np.asarray(open_image(f).convert("RGB")).tolist() for f in vb.frames]
            got, want = qwen.load_video(va, run), qwen.load_video(vb, run)
            assert torch_equal(got.frames, want.frames) and got.indices == want.indices, a.id
    by_id = {s.id: s for s in again}
    assert by_id["part-keys"].videos[0].options == clip
    assert by_id["entry-keys"].videos[0].options == {"fps": 1.0}
    assert by_id["folder"].videos[0].options == {"min_frames": 4, "max_frames": 4}
    # the written rows: paths relative to the output's folder (or absolute outside it), the
    # bytes frames as PNG files under <stem>_images/, options in a videos entry object
    written = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert written["file"]["videos"] == [str((src_dir / "clip.mp4").resolve())]
    assert written["bytes"]["videos"] == [[f"train_images/000001_v0_{j:04d}.png"
                                           for j in range(4)]]
    assert written["part-keys"]["videos"] == [{"video": str((src_dir / "clip.mp4").resolve()),
                                               **clip}]
    assert "videos" not in written["text"]
    assert main(["validate", str(out)]) == 0
    assert "validation: OK" in capsys.readouterr().out


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_convert_drops_a_video_whose_frame_does_not_decode(tmp_path, capsys):
    from test_video import msg_row, write_frames

    frames = write_frames(tmp_path / "frames", 4)
    data = frames[2].read_bytes()
    frames[2].write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(msg_row("cut", {"type": "video", "video": "frames"})) + "\n"
                   + json.dumps(msg_row("ok", {"type": "video", "video": [str(f) for f in
                                                                          frames[:2]]})) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(src), str(out), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 samples (0 with images: 0 images; 1 with video: 1 clip; 0 text-only)" in printed
    skipped = json.loads((tmp_path / "out.skipped.json").read_text())
    assert [(e["id"], e["reason"]) for e in skipped["entries"]] == [("cut", "video_corrupt")]
    assert "f2.png" in skipped["entries"][0]["message"]
    assert [s.id for s in load_jsonl(out)] == ["ok"]
