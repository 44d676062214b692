"""Video rows end to end on the CPU, each checked against a reference built by the test itself:
every row format reads a video (a file, a list of frames, a folder of frames; inline or from a
``videos`` list), mixed with image and text-only rows; the row errors (missing file, URL, empty
folder, corrupt file, placeholder count) name file:line and id; a real mp4 written here with
PyAV decodes to the frame count ``data.video`` asks for, with the content written; an overlong
video sample is shortened by whole frames with its answer intact; the start-up cache keeps
videos; a clip's own keys (qwen-vl-utils' fps / nframes / max_pixels ...) decode it as a run
with those data.video values would, and the keys vldft cannot honour are row errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vldft.collate import IGNORE, Collator, SampleError
from vldft.config import ModelConfig, SourceConfig, VideoSettings
from vldft.data import DataError, ImageBytes, Sample, sample_from_row
from vldft.data.formats import detect_format, read_source
from vldft.data.skips import SkipReport
from vldft.data.video import Video, decode

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 64  # frames written here are SIDE x SIDE; the bright column moves STEP px per frame
STEP, COL = 6, 8
CLIP_FRAMES, CLIP_FPS = 8, 4  # the mp4: 8 frames at 4 fps (2 seconds)


def column_frame(i: int, step: int = STEP) -> np.ndarray:
    """Black, with a white column COL px wide starting at x = 4 + step * i."""
    assert 4 + step * i + COL <= SIDE
    a = np.zeros((SIDE, SIDE, 3), np.uint8)
    a[:, 4 + step * i: 4 + step * i + COL] = 255
    return a


def column_center(i: int, width: int, step: int = STEP) -> float:
    """Where frame i's column center lies after resizing SIDE px to ``width`` px."""
    return (4 + step * i + COL / 2) * width / SIDE - 0.5


def centers(frames: torch.Tensor) -> list[float]:
    """The brightness-weighted x center of each decoded frame ([T, 3, H, W])."""
    profile = frames.float().mean(dim=(1, 2))  # [T, W]
    x = torch.arange(profile.shape[1], dtype=torch.float32)
    return [float((p * x).sum() / p.sum()) for p in profile]


def write_clip(path: Path, n: int = CLIP_FRAMES, fps: int = CLIP_FPS) -> Path:
    """An mpeg4 .mp4 of ``n`` column frames (PyAV, no decord involved)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(column_frame(i), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: Path, n: int, names: str = "f{}.png", step: int = STEP) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / names.format(i) for i in range(n)]
    for i, p in enumerate(paths):
        Image.fromarray(column_frame(i, step)).save(p)
    return paths


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """clip.mp4, frames/ (6 PNGs), pic.png, empty/ and bad.mp4 (random bytes)."""
    root = tmp_path_factory.mktemp("media")
    write_clip(root / "clip.mp4")
    write_frames(root / "frames", 6)
    Image.fromarray(column_frame(0)).save(root / "pic.png")
    (root / "empty").mkdir()
    (root / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return root


U, A = "user", "assistant"
QUESTION, ANSWER = "Which way does the bar move?", "To the right."


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read(path: Path, fmt: str = "auto", on_error: str = "raise", report=None,
         verify: bool = True) -> list[Sample]:
    return read_source(SourceConfig(path=str(path), format=fmt), path.parent, on_error, report,
                       verify_images=verify)


def msg_row(sid: str, video_part: dict, **extra) -> dict:
    return {"id": sid, "messages": [
        {"role": U, "content": [video_part, {"type": "text", "text": QUESTION}]},
        {"role": A, "content": ANSWER}], **extra}


def video_then_text(sample: Sample) -> bool:
    """The user turn is exactly [video, text QUESTION] and the answer is ANSWER."""
    user, answer = sample.messages[0]["content"], sample.messages[-1]["content"]
    return ([p["type"] for p in user] == ["video", "text"] and user[1]["text"].strip() == QUESTION
            and answer == [{"type": "text", "text": ANSWER}])


# -- (1) every format reads a video row ----------------------------------------------------------
def test_messages_rows_take_a_file_a_frame_list_a_folder_or_the_videos_list(media, tmp_path):
    frames = sorted(p.name for p in (media / "frames").iterdir())
    path = write_rows(tmp_path / "m.jsonl", [
        msg_row("file", {"type": "video", "video": str(media / "clip.mp4")}),
        msg_row("file-url", {"type": "video", "video": f"file://{media / 'clip.mp4'}"}),
        msg_row("list", {"type": "video", "video": [str(media / "frames" / f) for f in frames]}),
        msg_row("folder", {"type": "video", "video": str(media / "frames")}),
        msg_row("pool", {"type": "video"}, videos=[str(media / "clip.mp4")]),
        msg_row("pool-url-part", {"type": "video_url",
                                  "video_url": {"url": str(media / "clip.mp4")}}),
    ])
    samples = read(path)
    assert [s.id for s in samples] == ["file", "file-url", "list", "folder", "pool",
                                       "pool-url-part"]
    assert all(video_then_text(s) and len(s.videos) == 1 and not s.images for s in samples)
    by_id = {s.id: s.videos[0] for s in samples}
    for sid in ("file", "file-url", "pool", "pool-url-part"):
        assert by_id[sid].file == media / "clip.mp4" and by_id[sid].frames == []
    want = [media / "frames" / f"f{i}.png" for i in range(6)]
    assert by_id["list"].file is None and by_id["list"].frames == want
    assert by_id["folder"].file is None and by_id["folder"].frames == want


def test_sharegpt_llava_and_normalized_rows_read_videos(media, tmp_path):
    clip = str(media / "clip.mp4")
    sharegpt = write_rows(tmp_path / "sg.jsonl", [
        {"id": "sg", "conversations": [{"from": "human", "value": f"<video>{QUESTION}"},
                                       {"from": "gpt", "value": ANSWER}], "videos": [clip]}])
    llava = write_rows(tmp_path / "llava.jsonl", [
        # LLaVA-Video-178K writes "<image>" for the clip; "<video>" also works; none: prepended
        {"id": "img-mark", "video": clip, "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": ANSWER}]},
        {"id": "vid-mark", "video": str(media / "frames"), "conversations": [
            {"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": ANSWER}]},
        {"id": "no-mark", "video": clip, "conversations": [
            {"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]}])
    normalized = write_rows(tmp_path / "norm.jsonl", [
        {"id": "n", "messages": [{"role": U, "content": [{"type": "video"},
                                                         {"type": "text", "text": QUESTION}]},
                                 {"role": A, "content": [{"type": "text", "text": ANSWER}]}],
         "videos": [clip]}])
    assert [detect_format(p) for p in (sharegpt, llava, normalized)] == [
        "sharegpt", "llava", "normalized"]
    (sg,) = read(sharegpt)
    assert video_then_text(sg) and sg.videos[0].file == media / "clip.mp4"
    llava_rows = read(llava)
    assert [s.id for s in llava_rows] == ["img-mark", "vid-mark", "no-mark"]
    for s in llava_rows:  # the clip is the row's only medium, placed before the question
        assert video_then_text(s) and not s.images and len(s.videos) == 1, s
    assert llava_rows[1].videos[0].frames == [media / "frames" / f"f{i}.png" for i in range(6)]
    (n,) = read(normalized)
    assert video_then_text(n) and n.videos[0].file == media / "clip.mp4"


def test_image_video_and_text_rows_mix_in_one_file_and_one_batch(media):
    # relative paths resolve against the file's folder
    path = write_rows(media / "mix.jsonl", [
        {"id": "img", "messages": [{"role": U, "content": f"<image>{QUESTION}"},
                                   {"role": A, "content": "An image."}], "images": ["pic.png"]},
        msg_row("vid", {"type": "video", "video": "clip.mp4"}),
        {"id": "txt", "messages": [{"role": U, "content": "Hi"}, {"role": A, "content": "Hello"}]},
        {"id": "both", "messages": [{"role": U, "content": f"<image><video>{QUESTION}"},
                                    {"role": A, "content": ANSWER}],
         "images": ["pic.png"], "videos": ["frames"]},
    ])
    samples = read(path)
    assert [(s.id, len(s.images), len(s.videos)) for s in samples] == [
        ("img", 1, 0), ("vid", 0, 1), ("txt", 0, 0), ("both", 1, 1)]
    assert [p["type"] for p in samples[3].messages[0]["content"]] == ["image", "video", "text"]
    # one padded batch of all four on the tiny Qwen2-VL: both pixel tensors, one grid per item
    from vldft.adapters import load_adapter

    torch.manual_seed(0)
    a = load_adapter(ModelConfig(family="qwen2_vl", tiny=True))
    coll = Collator(a, 1024, video=VideoSettings(max_frames=4, min_pixels=28 * 28,
                                                 max_pixels=56 * 56))
    batch = coll([coll.encode(s) for s in samples])
    assert batch["image_grid_thw"].shape[0] == 2 and batch["video_grid_thw"].shape[0] == 2
    n_video = (batch["input_ids"] == a.video_token_id).sum(1).tolist()
    merge = a.processor.video_processor.merge_size
    per_video = [int(g.prod()) // merge**2 for g in batch["video_grid_thw"]]
    assert n_video == [0, per_video[0], 0, per_video[1]] and min(per_video) > 0


# -- (2) row errors ----------------------------------------------------------------------------
def error_of(tmp_path: Path, row: dict, verify: bool = False) -> DataError:
    path = write_rows(tmp_path / "e.jsonl", [{"id": "ok", "messages": [
        {"role": U, "content": "Hi"}, {"role": A, "content": "Hello"}]}, row])
    with pytest.raises(DataError) as info:
        read(path, verify=verify)
    e = info.value
    assert f"{path}:2" in str(e) and f"id {row['id']}" in str(e), str(e)
    return e


@pytest.mark.parametrize(("ref", "reason", "says"), [
    ("nope.mp4", "video_missing", "video file not found"),
    ("https://example.com/clip.mp4", "video_missing", "URL"),
    ("EMPTY", "video_missing", "holds no frame images"),
    (["frames/f0.png", "frames/missing.png"], "video_missing", "missing.png"),
])
def test_missing_videos_are_row_errors(media, tmp_path, ref, reason, says):
    ref = str(media / "empty") if ref == "EMPTY" else ref
    ref = [str(media / f) for f in ref] if isinstance(ref, list) else ref
    e = error_of(tmp_path, msg_row("v1", {"type": "video", "video": ref}))
    assert e.reason == reason and says in str(e), str(e)


@pytest.mark.parametrize("row", [
    {"messages": [{"role": U, "content": f"<video><video>{QUESTION}"},
                  {"role": A, "content": ANSWER}], "videos": ["clip.mp4"]},
    {"messages": [{"role": U, "content": QUESTION}, {"role": A, "content": ANSWER}],
     "videos": ["clip.mp4"]},
    {"conversations": [{"from": "human", "value": f"<video>{QUESTION}"},
                       {"from": "gpt", "value": ANSWER}], "videos": ["clip.mp4", "clip.mp4"]},
], ids=["two-marks-one-video", "no-mark", "sharegpt-one-mark-two-videos"])
def test_placeholder_and_video_counts_must_agree(media, row):
    path = write_rows(media / "count.jsonl", [{"id": "c", **row}])
    with pytest.raises(DataError) as info:
        read(path)
    assert info.value.reason == "video_count" and f"{path}:1" in str(info.value)


def test_normalized_row_counts_and_llava_rows_with_image_and_video():
    with pytest.raises(DataError) as info:
        sample_from_row({"messages": [{"role": U, "content": [{"type": "video"}] * 2},
                                      {"role": A, "content": ANSWER}], "videos": ["x.mp4"]},
                        "f.jsonl:3", Path("/"))
    assert info.value.reason == "video_count"
    from vldft.data.chat import llava_row

    with pytest.raises(DataError, match="both 'image' and 'video'"):
        llava_row({"image": "a.png", "video": "b.mp4", "conversations": [
            {"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]}, "x")


def test_corrupt_video_is_a_row_error_or_a_counted_skip(media, tmp_path):
    rows = [msg_row("good", {"type": "video", "video": str(media / "clip.mp4")}),
            msg_row("broken", {"type": "video", "video": str(media / "bad.mp4")}),
            {"id": "txt", "messages": [{"role": U, "content": "Hi"},
                                       {"role": A, "content": "Hello"}]}]
    path = write_rows(tmp_path / "c.jsonl", rows)
    assert [s.id for s in read(path, verify=False)] == ["good", "broken", "txt"]  # not opened
    with pytest.raises(DataError) as info:
        read(path)
    e = info.value
    assert e.reason == "video_corrupt"
    assert f"{path}:2" in str(e) and "id broken" in str(e) and "bad.mp4" in str(e), str(e)
    report = SkipReport()
    assert [s.id for s in read(path, on_error="skip", report=report)] == ["good", "txt"]
    assert report.count(reason="video_corrupt") == 1 and report.total == 1
    (entry,) = report.entries
    assert entry["reason"] == "video_corrupt" and "bad.mp4" in json.dumps(entry)
    # the same clip reaching the collator unchecked: a video_corrupt SampleError naming it
    from vldft.adapters import load_adapter

    a = load_adapter(ModelConfig(family="qwen2_vl", tiny=True))
    unchecked = read(path, verify=False)[1]
    with pytest.raises(SampleError) as info:
        Collator(a, 512).encode(unchecked)
    assert info.value.reason == "video_corrupt" and "bad.mp4" in str(info.value)
    assert "sample broken" in str(info.value)


def test_the_data_pipeline_reports_corrupt_videos_with_on_error(media):
    """``data.on_error`` through the training set's reader (``read_sources``)."""
    from conftest import demo_config

    from vldft.data.mix import read_sources

    path = write_rows(media / "pipe.jsonl", [
        msg_row("good", {"type": "video", "video": "clip.mp4"}),
        msg_row("broken", {"type": "video", "video": "bad.mp4"})])
    src = f"data.sources=[{{path: {path}, name: vids}}]"
    with pytest.raises(DataError) as info:
        read_sources(demo_config("data.train_files=[]", src, "data.on_error=raise"))
    assert info.value.reason == "video_corrupt" and f"{path}:2" in str(info.value)
    per_source, skips = read_sources(demo_config("data.train_files=[]", src,
                                                 "data.on_error=skip"))
    assert [s.id for s in per_source["vids"]] == ["good"]
    assert skips.count("vids", "video_corrupt") == 1


# -- (3) decoding a real mp4 -------------------------------------------------------------------
@pytest.mark.parametrize(("fps", "max_frames", "want"), [
    (4.0, 32, list(range(8))),  # the clip's own rate: every frame
    (2.0, 32, [0, 2, 5, 7]),  # half the rate: 4 frames spread over the clip
    (4.0, 4, [0, 2, 5, 7]),  # capped by max_frames
])
def test_an_mp4_decodes_at_the_configured_rate_with_its_content(media, fps, max_frames, want):
    settings = VideoSettings(fps=fps, max_frames=max_frames, min_frames=2,
                             min_pixels=28 * 28, max_pixels=SIDE * SIDE)
    # reference indices: n = frames / source fps * fps (capped), spread evenly, ends kept
    n = min(max_frames, int(CLIP_FRAMES / CLIP_FPS * fps))
    assert want == [round(x) for x in np.linspace(0, CLIP_FRAMES - 1, n)]
    dec = decode(Video(file=media / "clip.mp4"), settings, unit=28)
    t, c, h, w = dec.frames.shape
    assert (t, c) == (len(want), 3) and dec.frames.dtype == torch.uint8
    assert h % 28 == 0 and w % 28 == 0 and h * w <= SIDE * SIDE
    assert dec.indices == want and dec.total == CLIP_FRAMES and dec.fps == CLIP_FPS
    got = centers(dec.frames)
    assert all(b > a + 1 for a, b in zip(got, got[1:], strict=False)), got  # moves right
    for k, i in enumerate(want):  # and is where frame i drew it (mpeg4 is lossy: 1.5 px)
        assert abs(got[k] - column_center(i, w)) < 1.5, (k, got[k], column_center(i, w))


def test_frames_and_folders_decode_in_order_capped_and_even(tmp_path):
    from vldft.data.video import frame_files

    folder = tmp_path / "frames"
    write_frames(folder, 7, "frame{}.png")
    settings = VideoSettings(max_frames=32, min_pixels=28 * 28, max_pixels=SIDE * SIDE)
    # a folder's frames in natural order: f2 before f10 (a plain sort puts f10 second)
    write_frames(tmp_path / "ten", 11, "f{}.png", step=4)
    (tmp_path / "ten" / "notes.txt").write_text("not a frame")
    assert [p.name for p in frame_files(tmp_path / "ten")] == [f"f{i}.png" for i in range(11)]
    dec = decode(Video(frames=frame_files(tmp_path / "ten")), settings, unit=28)
    assert dec.frames.shape[0] == 12  # 11 frames, made even by repeating the last
    got = centers(dec.frames)
    assert all(b > a + 1 for a, b in zip(got[:11], got[1:11], strict=False)), got
    assert got[11] == pytest.approx(got[10])
    # a cap: 7 frames at max_frames=4 keep 0, 2, 4, 6 (ends kept, spread evenly)
    capped = VideoSettings(max_frames=4, min_pixels=28 * 28, max_pixels=SIDE * SIDE)
    dec = decode(Video(frames=frame_files(folder)), capped, unit=28)
    w = dec.frames.shape[3]
    assert dec.frames.shape[0] == 4
    got = centers(dec.frames)
    assert all(abs(got[k] - column_center(i, w)) < 1.0 for k, i in enumerate((0, 2, 4, 6))), got
    # encoded bytes (parquet / HF datasets) decode to the same frames as the files
    blobs = Video(frames=[ImageBytes(p.read_bytes(), p.name) for p in frame_files(folder)])
    assert torch.equal(decode(blobs, capped, unit=28).frames, dec.frames)


@pytest.mark.parametrize(("cap", "want"), [(3, 2), (5, 4), (7, 6)])
def test_an_odd_frame_cap_takes_as_many_frames_from_a_folder_as_from_a_file(media, cap, want):
    """Qwen's families join 2 frames per temporal patch: qwen-vl-utils floors an odd cap for a
    file (smart_nframes); a frame list or folder takes the same count, never one above the cap
    (3 frames padded to 4 had 288 video tokens beside the file's 144), and plan agrees."""
    from vldft.data.video import frame_files, plan

    settings = VideoSettings(fps=4.0, max_frames=cap, min_frames=2, min_pixels=28 * 28,
                             max_pixels=SIDE * SIDE)
    file, folder = Video(file=media / "clip.mp4"), Video(frames=frame_files(media / "frames"))
    for clip in (file, folder):
        assert decode(clip, settings, unit=28).frames.shape[0] == want
        assert plan(clip, settings, unit=28)[0] == want
    three = Video(frames=frame_files(media / "frames")[:3])  # fewer than the cap, odd: padded
    assert decode(three, VideoSettings(max_frames=32), unit=28).frames.shape[0] == 4


# -- (4) an overlong video sample is shortened by frames ---------------------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_overlong_video_sample_is_shortened_by_whole_frames(family, tmp_path):
    from vldft.adapters import load_adapter

    torch.manual_seed(0)
    a = load_adapter(ModelConfig(family=family, tiny=True))
    frames = write_frames(tmp_path / "fr", 8)
    settings = VideoSettings(max_frames=8, min_pixels=28 * 28, max_pixels=SIDE * SIDE)
    sample = sample_from_row(msg_row("long", {"type": "video"}, videos=[[str(f) for f in frames]]),
                             "x.jsonl:1", tmp_path)
    merge = a.processor.video_processor.merge_size
    full = Collator(a, 4096, video=settings).encode(sample)
    assert not full.shortened and int(full.extras["video_grid_thw"][0, 0]) == 4  # 8 frames
    # a limit a few tokens short of the full sample: fewer frames, not a cut
    limit = len(full.input_ids) - 3
    enc = Collator(a, limit, video=settings).encode(sample)
    assert enc.shortened and not enc.truncated and len(enc.input_ids) <= limit
    grid = enc.extras["video_grid_thw"]
    assert int(grid[0, 0]) < 4 and tuple(grid[0, 1:].tolist()) == tuple(
        full.extras["video_grid_thw"][0, 1:].tolist())
    n_pad = int((enc.input_ids == a.video_token_id).sum())
    assert n_pad == int(grid.prod()) // merge**2
    assert enc.extras["pixel_values_videos"].shape[0] == int(grid.prod())
    # the trained tokens are the answer and end-of-turn exactly (tokenized on their own)
    trained = enc.input_ids[enc.labels != IGNORE].tolist()
    assert trained == a.tokenizer.encode(ANSWER + a.end_of_turn, add_special_tokens=False)
    assert (enc.labels[enc.input_ids == a.video_token_id] == IGNORE).all()
    if family == "qwen3_vl":  # one "<t seconds>" timestamp per temporal patch left
        text = a.tokenizer.decode(enc.input_ids)
        assert len(re.findall(r"<[\d.]+ seconds>", text)) == int(grid[0, 0])
    # one token more than 2 frames leave: the estimate (1 frame) is below 2, and 2 frames are
    # tried all the same, then the end-of-turn is truncated (all 8 frames were kept and the
    # sample cut inside its video: video_cut)
    two_frames = VideoSettings(max_frames=2, min_pixels=28 * 28, max_pixels=SIDE * SIDE)
    whole_two = Collator(a, 4096, video=two_frames).encode(sample)
    two = len(whole_two.input_ids)
    enc = Collator(a, two - 1, video=settings).encode(sample)
    assert getattr(enc, "reason", None) is None, enc
    assert enc.shortened and enc.truncated and int(enc.extras["video_grid_thw"][0, 0]) == 1
    assert len(enc.input_ids) == two - 1 and (enc.labels != IGNORE).any()
    # a limit that not even 2 frames meet: the 2-frame video is whole and the answer after it
    # is cut (skipped: nothing left to train); a limit inside the video: skipped, never cut
    first_trained = int((whole_two.labels != IGNORE).nonzero()[0])
    skipped = Collator(a, first_trained, video=settings).encode(sample)
    assert getattr(skipped, "reason", None) == "truncated_empty", skipped
    inside = int((full.input_ids == a.video_token_id).nonzero()[0]) + 2
    skipped = Collator(a, inside, video=settings).encode(sample)
    assert getattr(skipped, "reason", None) == "video_cut", skipped  # its own code, not images'
    assert "cannot be shortened" in skipped.message and "frames" in skipped.message, skipped


# -- (5) the start-up cache keeps videos --------------------------------------------------------
def test_rowstore_round_trip_keeps_video_files_and_frames(media):
    from vldft.data import rowstore

    png = (media / "frames/f1.png").read_bytes()
    sample = Sample("s", [{"role": U, "content": [{"type": "image"}, {"type": "video"},
                                                  {"type": "video"}, {"type": "text",
                                                                      "text": QUESTION}]},
                          {"role": A, "content": [{"type": "text", "text": ANSWER}]}],
                    [media / "pic.png"], "a", "k", "src", "f.jsonl:4",
                    videos=[Video(file=media / "clip.mp4", name="clip"),
                            Video(frames=[media / "frames/f0.png", ImageBytes(png, "f1.png")],
                                  name="two")])
    row, blobs = rowstore.encode(sample)
    back = rowstore.decode(row, blobs, "src")
    assert (back.id, back.messages, back.images, back.answer, back.kind, back.source,
            back.origin) == (sample.id, sample.messages, sample.images, "a", "k", "src",
                             "f.jsonl:4")
    assert len(back.videos) == 2
    assert back.videos[0].file == media / "clip.mp4" and back.videos[0].name == "clip"
    assert back.videos[1].file is None and back.videos[1].name == "two"
    f0, f1 = back.videos[1].frames
    assert f0 == media / "frames/f0.png"
    assert isinstance(f1, ImageBytes) and f1.data == png and f1.name == "f1.png"


def test_startup_cache_keeps_videos_and_their_lengths_follow_data_video(media, tmp_path,
                                                                        monkeypatch):
    """A second start reads the set from the cache: the same videos and lengths; another
    ``data.video`` gives other lengths (the lengths key holds it), as a fresh estimate does."""
    from conftest import demo_config

    from vldft.adapters import load_adapter
    from vldft.data.cache import training_set
    from vldft.data.mix import build_training_set

    monkeypatch.setenv("VLDFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLDFT_NO_CACHE", raising=False)
    path = write_rows(media / "cached.jsonl", [
        msg_row("file", {"type": "video", "video": "clip.mp4"}),
        msg_row("folder", {"type": "video", "video": "frames"}),
        {"id": "img", "messages": [{"role": U, "content": f"<image>{QUESTION}"},
                                   {"role": A, "content": ANSWER}], "images": ["pic.png"]}])
    over = ["data.train_files=[]", f"data.sources=[{{path: {path}, name: vids}}]",
            "data.heldout_file=null", "data.video.min_pixels=784", "data.video.max_pixels=4096"]
    cfg = demo_config(*over, "data.video.max_frames=8")
    adapter = load_adapter(cfg.model)
    lines: list[str] = []
    first = training_set(cfg, adapter, lines.append)
    again = training_set(cfg, adapter, lines.append)
    assert "built" in lines[0] and "cached" in lines[1], lines
    want = build_training_set(cfg, adapter)  # no cache at all
    for data in (first, again):
        assert [s.id for s in data.samples] == [s.id for s in want.samples]
        assert list(data.lengths) == list(want.lengths)
        assert [[(v.file, v.frames) for v in s.videos] for s in data.samples] == [
            [(v.file, v.frames) for v in s.videos] for s in want.samples]
    by_id = {s.id: s for s in again.samples}
    assert by_id["file"].videos[0].file == media / "clip.mp4"
    assert by_id["folder"].videos[0].frames == [media / "frames" / f"f{i}.png" for i in range(6)]
    fewer = demo_config(*over, "data.video.max_frames=2")
    cached = training_set(fewer, adapter, lines.append)
    fresh = build_training_set(fewer, adapter)
    assert list(cached.lengths) == list(fresh.lengths) != list(want.lengths)


def test_the_mixture_table_counts_video_rows_and_clips_apart_from_images(media, tmp_path,
                                                                          monkeypatch):
    """Per source: rows with images, rows with a video and their clips, text-only rows (a row
    with both media counts in both), the same built fresh or from the start-up cache, printed
    and in data_summary.json's ``sources`` (video rows were counted as ``images``)."""
    from conftest import demo_config, write_tiny_data

    from vldft.adapters import load_adapter
    from vldft.data.cache import training_set
    from vldft.data.mix import build_training_set, format_table
    from vldft.loader import data_summary

    monkeypatch.setenv("VLDFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLDFT_NO_CACHE", raising=False)
    path = write_rows(media / "table.jsonl", [
        {"id": "img", "messages": [{"role": U, "content": f"<image>{QUESTION}"},
                                   {"role": A, "content": ANSWER}], "images": ["pic.png"]},
        msg_row("file", {"type": "video", "video": "clip.mp4"}),
        msg_row("folder", {"type": "video", "video": "frames"}),
        {"id": "both", "messages": [{"role": U, "content": f"<image><video><video>{QUESTION}"},
                                    {"role": A, "content": ANSWER}],
         "images": ["pic.png"], "videos": ["frames", "clip.mp4"]},
        {"id": "txt", "messages": [{"role": U, "content": "Hi"}, {"role": A, "content": "Hello"}]}])
    pics = write_tiny_data(tmp_path / "pics.jsonl", 2)
    cfg = demo_config("data.train_files=[]", "data.heldout_file=null",
                      f"data.sources=[{{path: {path}, name: vids}}, {{path: {pics}, name: pics}}]",
                      "data.video.min_pixels=784", "data.video.max_pixels=4096",
                      "data.video.max_frames=4")
    adapter = load_adapter(cfg.model)
    keys = ("source", "read", "used", "images", "videos", "clips", "text_only")
    want = [dict(zip(keys, ("vids", 5, 5, 2, 3, 4, 1), strict=True)),
            dict(zip(keys, ("pics", 2, 2, 2, 0, 0, 0), strict=True))]
    lines: list[str] = []
    for data in (build_training_set(cfg, adapter), training_set(cfg, adapter, lines.append),
                 training_set(cfg, adapter, lines.append)):
        assert [{k: r[k] for k in keys} for r in data.table] == want, data.table
        assert data_summary(data, {}, [])["sources"] == data.table
        head, vids, pics_row = (re.split(r"\s{2,}", line.strip())  # "auto: messages"
                                for line in format_table(data.table).splitlines())
        assert head == ["source", "format", "read", "used", "images", "videos", "clips",
                        "text_only", "tokens"]
        assert vids[2:8] == ["5", "5", "2", "3", "4", "1"] and pics_row[2:8] == [
            "2", "2", "2", "0", "0", "0"]
    assert "built" in lines[0] and "cached" in lines[1], lines
    # a mixture without videos prints no video columns (data_summary.json still has them)
    assert "clips" not in format_table(data.table[1:]) and data.table[1]["clips"] == 0

@pytest.mark.parametrize("fps", [2.0, 4.0])
def test_the_clip_times_reach_the_model(media, fps):
    """The frames' times in the source: Qwen2.5-VL's seconds per temporal patch (2 frames /
    the sampled rate) and Qwen3-VL's ``<t seconds>`` (the mean time of each frame pair)."""
    from vldft.adapters import load_adapter

    settings = VideoSettings(fps=fps, max_frames=32, min_frames=2, min_pixels=28 * 28,
                             max_pixels=SIDE * SIDE)
    sample = sample_from_row(msg_row("t", {"type": "video"}, videos=[str(media / "clip.mp4")]),
                             "x.jsonl:1", media)
    # reference: the frames taken (evenly spread, ends kept) and their times at the source's rate
    n = int(CLIP_FRAMES / CLIP_FPS * fps)
    times = [round(x) / CLIP_FPS for x in np.linspace(0, CLIP_FRAMES - 1, n)]
    torch.manual_seed(0)
    a = load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))
    enc = Collator(a, 4096, video=settings).encode(sample)
    assert enc.extras["second_per_grid_ts"].tolist() == pytest.approx([2 / fps])
    a = load_adapter(ModelConfig(family="qwen3_vl", tiny=True))
    enc = Collator(a, 4096, video=settings).encode(sample)
    text = a.tokenizer.decode(enc.input_ids)
    stamps = [float(t) for t in re.findall(r"<([\d.]+) seconds>", text)]
    want = [(times[i] + times[i + 1]) / 2 for i in range(0, n, 2)]
    assert stamps == pytest.approx(want, abs=0.051)


# -- (6) per-clip settings: a video part's / videos entry's own fps, frames and pixels ----------
RUN = VideoSettings(min_pixels=28 * 28, max_pixels=SIDE * SIDE)  # a run's data.video (fps 2)
# per-clip keys (qwen-vl-utils' names) -> the data.video a run would need for the same frames
CLIP = {"fps": 4.0, "max_frames": 6, "max_pixels": 2 * 28 * 28}
CLIP_RUN = VideoSettings(fps=4.0, max_frames=6, min_pixels=28 * 28, max_pixels=2 * 28 * 28)


def clip_rows(media: Path) -> dict[str, tuple[str, dict]]:
    """One row per way of giving per-clip keys: id -> (format, row)."""
    clip = str(media / "clip.mp4")
    sharegpt = {"conversations": [{"from": "human", "value": f"<video>{QUESTION}"},
                                  {"from": "gpt", "value": ANSWER}],
                "videos": [{"video": clip, **CLIP}]}
    return {
        "part": ("messages", msg_row("part", {"type": "video", "video": clip, **CLIP})),
        "url-part": ("messages", msg_row("url-part", {"type": "video_url", "video_url": {
            "url": f"file://{clip}"}, **CLIP})),
        "pool-part": ("messages", msg_row("pool-part", {"type": "video", **CLIP}, videos=[clip])),
        "entry": ("messages", msg_row("entry", {"type": "video"},
                                      videos=[{"video": clip, **CLIP}])),
        # a table's struct column gives every key, null where absent: nulls are not keys
        "nulls": ("messages", msg_row("nulls", {"type": "video", "video": clip, "image": None,
                                                "text": None, "nframes": None, **CLIP})),
        "normalized": ("normalized", {"id": "normalized", "messages": [
            {"role": U, "content": [{"type": "video", **CLIP}, {"type": "text", "text": QUESTION}]},
            {"role": A, "content": [{"type": "text", "text": ANSWER}]}], "videos": [clip]}),
        "sharegpt": ("sharegpt", {"id": "sharegpt", **sharegpt}),
    }


@pytest.fixture(scope="module")
def qwen25():
    from vldft.adapters import load_adapter

    torch.manual_seed(0)
    return load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_encoding_a_clip_raises_no_per_frame_cap_warning(media, family, monkeypatch):
    """transformers' Qwen video processors warn on every run that their default resize lacks
    qwen-vl-utils' per-frame pixel cap; vldft's frames come resized by that policy and the
    processor's resize is off, so the warning only alarmed: the reference setting is passed,
    and the tokens are the same."""
    import importlib

    from vldft.adapters import load_adapter

    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(family=family, tiny=True))
    module = importlib.import_module(type(adapter.processor.video_processor).__module__)
    said = []
    monkeypatch.setattr(module.logger, "warning_once", lambda msg, *a, **k: said.append(msg))
    sample = sample_from_row(msg_row("v", {"type": "video"}, videos=[str(media / "clip.mp4")]),
                             "x.jsonl:1", media)
    enc = Collator(adapter, 4096, video=RUN).encode(sample)
    assert not [m for m in said if "per-frame pixel cap" in m], said
    real = type(adapter).video_kwargs

    def without_the_setting(self, videos):
        kw = real(self, videos)
        kw.get("videos_kwargs", {}).pop("cap_pixels_per_frame", None)
        return kw

    monkeypatch.setattr(type(adapter), "video_kwargs", without_the_setting)
    assert torch.equal(Collator(adapter, 4096, video=RUN).encode(sample).input_ids, enc.input_ids)
    if hasattr(adapter.processor.video_processor, "cap_pixels_per_frame"):
        assert [m for m in said if "per-frame pixel cap" in m]  # the warning it silenced


@pytest.mark.parametrize("sid", ["part", "url-part", "pool-part", "entry", "nulls", "normalized",
                                 "sharegpt"])
def test_per_clip_keys_decode_as_a_run_with_those_settings(media, tmp_path, qwen25, sid):
    """A clip's fps / max_frames / max_pixels give the frames, sizes and tokens that a run
    whose data.video has those values gives the same clip without keys (the reference), in
    every format; the length estimate follows them too."""
    from vldft.data.mix import estimate_length

    fmt, row = clip_rows(media)[sid]
    (sample,) = read(write_rows(tmp_path / "c.jsonl", [row]), fmt)
    assert video_then_text(sample) and sample.videos[0].file == media / "clip.mp4"
    assert sample.videos[0].options == CLIP
    plain = sample_from_row(msg_row("plain", {"type": "video"}, videos=[str(media / "clip.mp4")]),
                            "x.jsonl:1", media)
    assert plain.videos[0].options == {}
    # frames: as decode gives them with the reference settings (6 of 8 at 4 fps, 28 x 28)
    got = Collator(qwen25, 4096, video=RUN).load_video(sample.videos[0], sample.id)
    want = decode(plain.videos[0], CLIP_RUN, unit=28)
    assert tuple(got.frames.shape) == (6, 3, 28, 28) and torch.equal(got.frames, want.frames)
    assert got.indices == want.indices and got.fps == want.fps
    # encoded: the same tokens and pixels as the reference run, other than the run's own
    enc = Collator(qwen25, 4096, video=RUN).encode(sample)
    ref = Collator(qwen25, 4096, video=CLIP_RUN).encode(plain)
    base = Collator(qwen25, 4096, video=RUN).encode(plain)
    assert torch.equal(enc.input_ids, ref.input_ids) and torch.equal(enc.labels, ref.labels)
    for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(enc.extras[key], ref.extras[key]), key
    assert enc.extras["video_grid_thw"].tolist() != base.extras["video_grid_thw"].tolist()
    assert estimate_length(sample, qwen25, None, RUN) == len(enc.input_ids)
    assert estimate_length(plain, qwen25, None, RUN) == len(base.input_ids)


def test_nframes_is_an_exact_count_for_files_frame_lists_and_fixed_count_families(media,
                                                                                   tmp_path):
    """``nframes`` = min_frames = max_frames: 4 frames of the 8-frame file (at any fps) and of
    the 6-frame folder; LLaVA-OneVision (which samples exactly max_frames) takes 4 too, and
    its length estimate agrees."""
    from vldft.adapters import load_adapter
    from vldft.data.mix import estimate_length

    path = write_rows(tmp_path / "n.jsonl", [
        msg_row("file", {"type": "video", "video": "clip.mp4", "nframes": 4}),
        msg_row("folder", {"type": "video", "video": "frames", "nframes": 4, "max_pixels": 3136})])
    (tmp_path / "clip.mp4").symlink_to(media / "clip.mp4")
    (tmp_path / "frames").symlink_to(media / "frames")
    file, folder = read(path)
    assert file.videos[0].options == {"min_frames": 4, "max_frames": 4}
    four = VideoSettings(min_frames=4, max_frames=4, min_pixels=28 * 28, max_pixels=3136)
    for s in (file, folder):
        plain = Video(file=s.videos[0].file, frames=s.videos[0].frames)
        got = decode(s.videos[0], s.videos[0].settings(RUN), unit=28)
        assert got.frames.shape[0] == 4 and torch.equal(got.frames,
                                                        decode(plain, four, unit=28).frames)
    torch.manual_seed(0)
    ov = load_adapter(ModelConfig(family="llava_onevision", tiny=True))
    run = VideoSettings(max_frames=8)
    dec = Collator(ov, 8192, video=run).load_video(folder.videos[0], folder.id)
    assert dec.frames.shape[0] == 4
    enc = Collator(ov, 8192, video=run).encode(folder)
    assert estimate_length(folder, ov, None, run) == len(enc.input_ids)
    odd = VideoSettings(max_frames=5)  # exactly that many, as for a file (not padded to 6)
    for clip in (Video(frames=folder.videos[0].frames), Video(file=file.videos[0].file)):
        assert ov.load_video(clip, odd).frames.shape[0] == 5
        plain = Sample(id="odd", messages=folder.messages, videos=[clip], source="s")
        assert estimate_length(plain, ov, None, odd) == len(
            Collator(ov, 8192, video=odd).encode(plain).input_ids)
    assert ov.video_token_estimate(folder.videos[0], run) < ov.video_token_estimate(
        Video(frames=folder.videos[0].frames), run)


def test_a_one_frame_video_file_decodes_as_that_frame_twice(tmp_path, qwen25, caplog):
    """qwen-vl-utils asks for at least 2 frames and falls back to torchvision's removed
    ``read_video`` on a 1-frame file: vldft reads that frame itself, repeated to a temporal
    patch, without qwen-vl-utils' "use torchvision as default" warning; the length estimate
    agrees with the encoding, and a fixed count repeats it."""
    import logging

    from vldft.data.mix import estimate_length
    from vldft.data.video import plan

    one = write_clip(tmp_path / "one.mp4", n=1)
    settings = VideoSettings(min_pixels=28 * 28, max_pixels=SIDE * SIDE)
    with caplog.at_level(logging.WARNING):
        dec = decode(Video(file=one), settings, unit=28)
    assert "torchvision" not in caplog.text, caplog.text
    t, _, h, w = dec.frames.shape
    assert t == 2 and torch.equal(dec.frames[0], dec.frames[1])
    assert dec.indices == [0, 0] and dec.total == 1 and dec.fps == CLIP_FPS
    assert abs(centers(dec.frames)[0] - column_center(0, w)) < 1.5
    assert plan(Video(file=one), settings, unit=28) == (t, h, w)
    assert decode(Video(file=one), settings, unit=28, nframes=4).frames.shape[0] == 4
    odd = VideoSettings(min_pixels=28 * 28, max_pixels=SIDE * SIDE, max_frames=5)
    assert decode(Video(file=one), odd, unit=28, nframes=5).frames.shape[0] == 5 == plan(
        Video(file=one), odd, unit=28, fixed=True)[0]  # exactly as asked, as plan counts
    (sample,) = read(write_rows(tmp_path / "one.jsonl", [
        msg_row("one", {"type": "video", "video": "one.mp4"})]))
    enc = Collator(qwen25, 8192, video=settings).encode(sample)
    assert estimate_length(sample, qwen25, None, settings) == len(enc.input_ids)


def test_a_clip_bound_beyond_the_runs_other_bound_moves_it():
    run = VideoSettings(min_frames=4, max_frames=32, min_pixels=28 * 28, max_pixels=4096)
    assert Video(options={"max_frames": 2}).settings(run).min_frames == 2
    assert Video(options={"min_pixels": 8192}).settings(run).max_pixels == 8192
    assert Video(options={"max_pixels": 392}).settings(run).min_pixels == 392
    assert Video().settings(run) is run  # no keys: the run's settings, untouched


REFUSED_KEYS = [
    ({"video_start": 1.0}, "'video_start' is not supported (vldft reads whole clips"),
    ({"video_end": 1.5}, "'video_end' is not supported"),
    ({"total_pixels": 100352}, "'total_pixels' is not supported (write max_tokens"),
    ({"resized_height": 56, "resized_width": 56}, "'resized_height' is not supported"),
    ({"sample_fps": 1.0}, "'sample_fps' is not supported"),
    ({"speed": 2}, "'speed' is not supported (per-clip keys: fps, min_frames"),
    ({"fps": -1}, "'fps': -1 is not a number > 0"),
    ({"fps": "2"}, "'fps': '2' is not a number > 0"),
    ({"max_frames": 1}, "'max_frames': 1 is not an integer >= 2"),
    ({"max_pixels": 1.5}, "'max_pixels': 1.5 is not an integer >= 1"),
    ({"min_frames": 8, "max_frames": 4}, "'min_frames' (8) is larger than 'max_frames' (4)"),
    ({"min_pixels": 4096, "max_pixels": 784}, "'min_pixels' (4096) is larger than 'max_pixels'"),
    ({"nframes": 5}, "'nframes': 5 is odd"),
    ({"nframes": 4, "fps": 1.0}, "'nframes' and 'fps' together"),
]


@pytest.mark.parametrize(("keys", "says"), REFUSED_KEYS,
                         ids=["-".join(keys) for keys, _ in REFUSED_KEYS])
def test_a_per_clip_key_vldft_cannot_honour_is_a_row_error(media, tmp_path, keys, says):
    e = error_of(tmp_path, msg_row("v1", {"type": "video", "video": str(media / "clip.mp4"),
                                          **keys}))
    assert e.reason == "video_option" and says in str(e) and "clip.mp4" in str(e), str(e)


def test_per_clip_key_errors_are_counted_skips_and_entries_may_not_contradict_parts(media,
                                                                                    tmp_path):
    clip = str(media / "clip.mp4")
    path = write_rows(tmp_path / "s.jsonl", [
        msg_row("good", {"type": "video", "video": clip, "fps": 1.0}),
        msg_row("segment", {"type": "video", "video_start": 0.5}, videos=[clip]),
        msg_row("clash", {"type": "video", "fps": 1.0}, videos=[{"video": clip, "fps": 2.0}]),
        msg_row("same", {"type": "video", "fps": 1.0}, videos=[{"video": clip, "fps": 1.0}]),
        msg_row("no-source", {"type": "video"}, videos=[{"fps": 1.0}])])
    report = SkipReport()
    samples = read(path, on_error="skip", report=report)
    assert [(s.id, s.videos[0].options) for s in samples] == [("good", {"fps": 1.0}),
                                                              ("same", {"fps": 1.0})]
    assert report.count(reason="video_option") == 2 and report.count(reason="bad_row") == 1
    got = [(e["line"], e["id"], e["reason"]) for e in report.entries]
    assert got == [(2, "segment", "video_option"), (3, "clash", "video_option"),
                   (5, "no-source", "bad_row")]
    assert "'video_start' is not supported" in report.entries[0]["message"]
    assert ("'fps' is 2.0 in the videos entry but 1.0 in the video part"
            in report.entries[1]["message"])


def test_the_startup_cache_keeps_per_clip_settings(media, tmp_path, monkeypatch):
    """A cached Sample carries its clips' options (rowstore round trip) and decodes, and is
    length-estimated, as the uncached one."""
    from conftest import demo_config

    from vldft.adapters import load_adapter
    from vldft.data import rowstore
    from vldft.data.cache import training_set
    from vldft.data.mix import build_training_set

    png = (media / "frames/f1.png").read_bytes()
    sample = Sample("s", [{"role": U, "content": [{"type": "video"}, {"type": "video"}]},
                          {"role": A, "content": [{"type": "text", "text": ANSWER}]}],
                    videos=[Video(file=media / "clip.mp4", name="c", options=CLIP),
                            Video(frames=[ImageBytes(png, "f1.png")], name="f"),
                            ])
    back = rowstore.decode(*rowstore.encode(sample), "src")
    assert [v.options for v in back.videos] == [CLIP, {}]
    monkeypatch.setenv("VLDFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VLDFT_NO_CACHE", raising=False)
    path = write_rows(media / "clip_keys.jsonl", [
        msg_row("keys", {"type": "video", "video": "clip.mp4", **CLIP}),
        msg_row("plain", {"type": "video", "video": "clip.mp4"})])
    cfg = demo_config("data.train_files=[]", f"data.sources=[{{path: {path}, name: vids}}]",
                      "data.heldout_file=null", "data.video.min_pixels=784",
                      "data.video.max_pixels=4096")
    adapter = load_adapter(cfg.model)
    lines: list[str] = []
    training_set(cfg, adapter, lines.append)
    cached = training_set(cfg, adapter, lines.append)
    fresh = build_training_set(cfg, adapter)
    assert "cached" in lines[1] and list(cached.lengths) == list(fresh.lengths)
    assert len(set(cached.lengths)) == 2  # the clip's keys change its length
    coll = Collator.from_config(adapter, cfg)
    for s, f in zip(cached.samples, fresh.samples, strict=True):
        assert s.id == f.id and s.videos[0].options == f.videos[0].options
        assert torch.equal(coll.encode(s).extras["pixel_values_videos"],
                           coll.encode(f).extras["pixel_values_videos"])
