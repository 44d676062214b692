"""An image part's own keys (qwen-vl-utils' ``{"type": "image", "image": ..., "max_pixels": ...}``):
``min_pixels`` / ``max_pixels`` bound that image as a source's ``min_pixels`` / ``max_pixels``
would (the reference: the same image without keys, encoded with a source whose bounds are those
values), in training, the length estimate and held-out generation, for Qwen families; keys vldft
cannot honour (``resized_*``, unknown keys, invalid values, pixel bounds for LLaVA families) are
``image_option`` errors naming the key, never silently dropped; rows without keys are as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import record_generate
from PIL import Image

from vldft.adapters import load_adapter
from vldft.collate import Collator, Encoded, SampleError
from vldft.config import ModelConfig, SourceConfig
from vldft.data import REASONS, DataError, Sample, load_jsonl
from vldft.data.formats import read_source
from vldft.data.mix import estimate_length
from vldft.data.skips import SkipReport

pytestmark = pytest.mark.usefixtures("one_thread")

U, A = "user", "assistant"
QUESTION, ANSWER = "What is drawn?", "A red bar."


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """big.png (200 x 150: over the tiny Qwen's max_pixels) and small.png (30 x 30: under its
    min_pixels), both with content (a gradient) so resizing shows in the pixels."""
    root = tmp_path_factory.mktemp("imgs")
    for name, size in (("big.png", (200, 150)), ("small.png", (30, 30))):
        im = Image.new("RGB", size)
        im.putdata([(x * 255 // size[0], y * 255 // size[1], 80)
                    for y in range(size[1]) for x in range(size[0])])
        im.save(root / name)
    return root


@pytest.fixture(scope="module")
def qwen25():
    torch.manual_seed(0)
    return load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))


def part_row(sid: str, part: dict, **extra) -> dict:
    return {"id": sid, "messages": [
        {"role": U, "content": [part, {"type": "text", "text": QUESTION}]},
        {"role": A, "content": ANSWER}], **extra}


def read(path: Path, fmt: str = "messages", on_error: str = "raise", report=None):
    return read_source(SourceConfig(path=str(path), format=fmt), path.parent, on_error, report)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_with_keys(images: Path, keys: dict) -> dict[str, tuple[str, dict]]:
    """One row per way of giving an image part its keys: id -> (format, row)."""
    big = str(images / "big.png")
    return {
        "inline": ("messages", part_row("inline", {"type": "image", "image": big, **keys})),
        "url": ("messages", part_row("url", {"type": "image_url", "image_url": {"url": big},
                                             **keys})),
        "pool": ("messages", part_row("pool", {"type": "image", **keys}, images=[big])),
        # a table's struct column gives every key, null where absent: nulls are not keys
        "nulls": ("messages", part_row("nulls", {"type": "image", "image": big, "text": None,
                                                 "video": None, **keys})),
        "normalized": ("normalized", {"id": "normalized", "images": [big], "messages": [
            {"role": U, "content": [{"type": "image", **keys},
                                    {"type": "text", "text": QUESTION}]},
            {"role": A, "content": [{"type": "text", "text": ANSWER}]}]}),
        "sharegpt": ("sharegpt", {"id": "sharegpt", "images": [big], "messages": [
            {"role": U, "content": [{"type": "image", **keys},
                                    {"type": "text", "text": QUESTION}]},
            {"role": A, "content": ANSWER}]}),
    }


def same_encoding(a: Encoded, b: Encoded) -> bool:
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            and torch.equal(a.extras["pixel_values"], b.extras["pixel_values"])
            and torch.equal(a.extras["image_grid_thw"], b.extras["image_grid_thw"]))


def image_tokens(enc: Encoded, adapter) -> int:
    return int((enc.input_ids == adapter.image_token_id).sum())


# -- honoured: Qwen families -------------------------------------------------------------------
@pytest.mark.parametrize("sid", ["inline", "url", "pool", "nulls", "normalized", "sharegpt"])
def test_per_image_max_pixels_encodes_as_a_source_with_that_max_pixels(images, tmp_path, qwen25,
                                                                       sid):
    fmt, row = rows_with_keys(images, {"max_pixels": 6272})[sid]
    (sample,) = read(write_rows(tmp_path / "k.jsonl", [row]), fmt)
    assert sample.images[0] == images / "big.png"
    (plain,) = read(write_rows(tmp_path / "p.jsonl", [
        part_row("plain", {"type": "image"}, images=[str(images / "big.png")])]))
    assert plain.messages[0]["content"][0] == {"type": "image"}  # no keys: as before
    got = Collator(qwen25, 1024).encode(sample)
    ref = Collator(qwen25, 1024, pixels={plain.source: (None, 6272)}).encode(plain)
    base = Collator(qwen25, 1024).encode(plain)
    assert same_encoding(got, ref)
    assert image_tokens(got, qwen25) == image_tokens(ref, qwen25) <= 6272 // 28 ** 2
    assert image_tokens(got, qwen25) < image_tokens(base, qwen25)
    assert estimate_length(sample, qwen25) == len(got.input_ids)
    # a source's own bounds are under the image's: the image's key wins for its bound
    src = Collator(qwen25, 1024, pixels={sample.source: (None, 28 * 28 * 12)}).encode(sample)
    assert same_encoding(src, ref)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_each_image_of_a_sample_gets_its_own_bounds(images, tmp_path, family):
    """Three images, one with max_pixels, one with min_pixels (an upscale), one without: each
    image's grid and pixels are the ones a single-image sample gives with a source of that
    bound, and the length estimate agrees."""
    torch.manual_seed(0)
    a = load_adapter(ModelConfig(family=family, tiny=True))
    lo, hi = a.max_pixels // 2, a.max_pixels // 2
    big, small = str(images / "big.png"), str(images / "small.png")
    row = {"id": "three", "images": [big, small, big], "messages": [
        {"role": U, "content": [{"type": "image", "max_pixels": hi},
                                {"type": "image", "min_pixels": lo},
                                {"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": A, "content": ANSWER}]}
    (sample,) = read(write_rows(tmp_path / "three.jsonl", [row]))
    got = Collator(a, 4096).encode(sample)
    refs = []
    for img, px in ((big, (None, hi)), (small, (lo, None)), (big, None)):
        (one,) = read(write_rows(tmp_path / "one.jsonl", [
            part_row("one", {"type": "image"}, images=[img])]))
        refs.append(Collator(a, 4096, pixels={one.source: px} if px else None).encode(one))
    grids = torch.cat([r.extras["image_grid_thw"] for r in refs])
    assert torch.equal(got.extras["image_grid_thw"], grids)
    assert torch.equal(got.extras["pixel_values"],
                       torch.cat([r.extras["pixel_values"] for r in refs]))
    assert image_tokens(got, a) == sum(image_tokens(r, a) for r in refs)
    counts = [image_tokens(r, a) for r in refs]
    assert counts[0] < counts[2]  # the big image held to hi, below the model's bound
    (plain,) = read(write_rows(tmp_path / "one.jsonl", [
        part_row("one", {"type": "image"}, images=[small])]))
    assert counts[1] > image_tokens(Collator(a, 4096).encode(plain), a)  # scaled up to lo
    assert estimate_length(sample, a) == len(got.input_ids)


def test_an_image_bound_beyond_the_sources_other_bound_moves_it(qwen25):
    """As a clip's keys do: an image's min_pixels above the source's (or the model's)
    max_pixels raises that max with it, an image's max_pixels below their min lowers it."""
    from vldft.data import image_bounds

    def msgs(*parts):
        return [{"role": U, "content": list(parts)}, {"role": A, "content": []}]

    img = {"type": "image"}
    assert image_bounds(msgs(img, img), 2, (100, 900)) == [(100, 900), (100, 900)]
    assert image_bounds(msgs({**img, "min_pixels": 2000}, img), 2, (None, 1000)) == [
        (2000, 2000), (None, 1000)]
    assert image_bounds(msgs({**img, "max_pixels": 500}), 1, (3000, None)) == [(500, 500)]
    assert image_bounds(msgs({**img, "max_pixels": 500}), 1) == [(None, 500)]
    assert image_bounds(msgs({**img, "min_pixels": 50, "max_pixels": 500}), 1, (100, 900)) == [
        (50, 500)]
    assert qwen25._bounds((qwen25.max_pixels * 2, None)) == (qwen25.max_pixels * 2,) * 2
    assert qwen25._bounds((None, qwen25.min_pixels // 2)) == (qwen25.min_pixels // 2,) * 2
    assert qwen25._bounds(None) == (qwen25.min_pixels, qwen25.max_pixels)


def test_held_out_generation_and_the_cache_keep_per_image_bounds(images, tmp_path, qwen25,
                                                                  monkeypatch):
    """Held-out generation loads the image with its own bounds (the processor input equals the
    reference source's), and the start-up cache's row store keeps the keys."""
    from vldft.data import rowstore
    from vldft.heldout import generate

    fmt, row = rows_with_keys(images, {"max_pixels": 6272})["inline"]
    (sample,) = read(write_rows(tmp_path / "k.jsonl", [row]), fmt)
    back = rowstore.decode(*rowstore.encode(sample), sample.source)
    assert back.messages == sample.messages and back.messages[0]["content"][0] == {
        "type": "image", "max_pixels": 6272}
    seen = record_generate(monkeypatch, qwen25.model)
    generate(qwen25, [sample], 4, torch.device("cpu"))
    (plain,) = read(write_rows(tmp_path / "p.jsonl", [
        part_row("plain", {"type": "image"}, images=[str(images / "big.png")])]))
    ref = Collator(qwen25, 1024, pixels={plain.source: (None, 6272)}).encode(plain)
    assert torch.equal(seen[0]["image_grid_thw"], ref.extras["image_grid_thw"])
    assert torch.equal(seen[0]["pixel_values"], ref.extras["pixel_values"])


def test_convert_keeps_per_image_keys(images, tmp_path):
    from vldft.datatool import main

    fmt, row = rows_with_keys(images, {"min_pixels": 784, "max_pixels": 6272})["inline"]
    src = write_rows(tmp_path / "in.jsonl", [row])
    out = tmp_path / "out.jsonl"
    assert main(["convert", "--format", fmt, str(src), str(out), "--image-root",
                 str(images)]) == 0
    (again,) = load_jsonl(out)
    (original,) = read(src, fmt)
    assert again.messages == original.messages
    assert again.messages[0]["content"][0] == {"type": "image", "min_pixels": 784,
                                               "max_pixels": 6272}


# -- refused ---------------------------------------------------------------------------------
REFUSED = [
    ({"resized_height": 56, "resized_width": 56}, "'resized_height' is not supported (vldft "
                                                  "does not force an image size"),
    ({"resized_width": 56}, "'resized_width' is not supported"),
    ({"detail": "high"}, "'detail' is not supported (per-image keys: min_pixels, max_pixels)"),
    ({"max_pixels": -1}, "'max_pixels': -1 is not an integer >= 1"),
    ({"min_pixels": "big"}, "'min_pixels': 'big' is not an integer >= 1"),
    ({"min_pixels": 4096, "max_pixels": 784}, "'min_pixels' (4096) is larger than 'max_pixels'"),
]


def test_the_reason_is_documented():
    assert "image_option" in REASONS


@pytest.mark.parametrize(("keys", "says"), REFUSED, ids=["-".join(k) for k, _ in REFUSED])
@pytest.mark.parametrize("sid", ["inline", "pool", "normalized", "sharegpt"])
def test_a_per_image_key_vldft_cannot_honour_is_a_row_error(images, tmp_path, keys, says, sid):
    fmt, row = rows_with_keys(images, keys)[sid]
    path = write_rows(tmp_path / "r.jsonl", [row])
    with pytest.raises(DataError) as e:
        read(path, fmt)
    assert e.value.reason == "image_option", str(e.value)
    assert str(e.value).startswith(f"{path}:1 (id {sid}): message 0: image part: per-image key")
    assert says in str(e.value), str(e.value)


def test_per_image_key_errors_are_counted_skips_and_other_rows_are_unchanged(images, tmp_path):
    big = str(images / "big.png")
    path = write_rows(tmp_path / "s.jsonl", [
        part_row("plain", {"type": "image", "image": big}),
        part_row("resized", {"type": "image", "image": big, "resized_height": 56}),
        part_row("bounded", {"type": "image", "image": big, "max_pixels": 6272}),
        part_row("unknown", {"type": "image", "speed": 2}, images=[big]),
        {"id": "text", "messages": [{"role": U, "content": "1+1?"}, {"role": A, "content": "2"}]}])
    report = SkipReport()
    samples = read(path, on_error="skip", report=report)
    assert [s.id for s in samples] == ["plain", "bounded", "text"]
    assert samples[0].messages[0]["content"] == [{"type": "image"},
                                                 {"type": "text", "text": QUESTION}]
    assert report.count(reason="image_option") == 2
    got = [(e["line"], e["id"], e["reason"]) for e in report.entries]
    assert got == [(2, "resized", "image_option"), (4, "unknown", "image_option")]
    assert "'resized_height' is not supported" in report.entries[0]["message"]
    assert "'speed' is not supported" in report.entries[1]["message"]


def test_llava_families_refuse_per_image_pixel_bounds_when_encoding(images, tmp_path):
    """LLaVA families resize every image to the tower's size: a sample whose image part has
    min / max_pixels is an ``image_option`` error (a counted skip in training), a sample
    without keys encodes as before."""
    torch.manual_seed(0)
    llava = load_adapter(ModelConfig(family="llava", tiny=True))
    fmt, row = rows_with_keys(images, {"max_pixels": 6272})["inline"]
    (sample,) = read(write_rows(tmp_path / "k.jsonl", [row]), fmt)
    with pytest.raises(SampleError) as e:
        Collator(llava, 2048).encode(sample)
    assert e.value.reason == "image_option" and "min_pixels / max_pixels" in str(e.value)
    plain = Sample("plain", [{**sample.messages[0], "content": [
        {"type": "image"}, *sample.messages[0]["content"][1:]]}, sample.messages[1]],
        sample.images)
    assert isinstance(Collator(llava, 2048).encode(plain), Encoded)


def test_hugging_face_chat_template_rows_read_and_a_wrong_index_is_refused(images, tmp_path):
    """Rows as Hugging Face's chat-template datasets write them (every part a struct of
    ``type`` / ``text`` / ``index``: an image ``{"index": 0, "text": null}``, a text part
    ``{"index": null}``) read like plain placeholders; an index that is not the entry the part
    takes is an ``image_option`` error, not a silent swap."""
    def row(sid: str, index: int) -> dict:
        user_parts = [{"type": "image", "index": index, "text": None},
                      {"type": "text", "index": None, "text": QUESTION}]
        return {"id": sid, "images": [str(images / "big.png")], "messages": [
            {"role": U, "content": user_parts},
            {"role": A, "content": [{"type": "text", "index": None, "text": ANSWER}]}]}

    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps(row("ok", 0)) + "\n" + json.dumps(row("bad", 1)) + "\n")
    plain = part_row("plain", {"type": "image"}, images=[str(images / "big.png")])
    (path.parent / "plain.jsonl").write_text(json.dumps(plain) + "\n")
    (reference,) = read(path.parent / "plain.jsonl")
    # auto: read as `messages`; `normalized`: as a file whose first 50 rows are plain would be
    for fmt in ("auto", "normalized"):
        report = SkipReport()
        (sample,) = read(path, fmt, "skip", report)
        assert (sample.messages, sample.images) == (reference.messages, reference.images)
        assert report.total == 1 and "image_option" in report.summary(), fmt
        assert "index 1, but it is the row's image 0" in report.summary()
    # the index counts the row's image parts: a second image is index 1, and so is one after
    # an inline image part (messages format)
    two = row("two", 1)
    two["messages"][0]["content"].insert(0, {"type": "image", "index": 0, "text": None})
    two["images"].insert(0, str(images / "small.png"))
    inline = row("inline", 1)
    inline["messages"][0]["content"].insert(0, {"type": "image", "index": None, "text": None,
                                                "image": str(images / "small.png")})
    for fmt, r in (("auto", two), ("normalized", two), ("auto", inline)):
        path.write_text(json.dumps(r) + "\n")
        (sample,) = read(path, fmt)
        assert [str(i) for i in sample.images] == [str(images / "small.png"),
                                                   str(images / "big.png")], (fmt, r["id"])


@pytest.mark.parametrize("family", ["llava", "llava_onevision"])
def test_llava_held_out_scoring_refuses_per_image_bounds_before_any_model_work(
        images, tmp_path, family, monkeypatch):
    """A held-out file is scored whole or refused, as a missing image refuses it (``load_jsonl``):
    a row whose image part has min / max_pixels, for a family without pixel bounds, is an
    ``image_option`` error naming file:line, id and key, raised before the model runs, from
    the loss pass, generation and the CLI (before the checkpoint loads); never silently
    scored without its key."""
    from vldft import heldout

    big = str(images / "big.png")
    path = write_rows(tmp_path / "heldout.jsonl", [
        part_row("plain", {"type": "image"}, images=[big], answer="1"),
        part_row("keyed", {"type": "image", "max_pixels": 6272}, images=[big], answer="1")])
    samples = load_jsonl(path)
    said = (f"{path}:2 (id keyed): message 0: image part: per-image key 'max_pixels' is not "
            f"supported by model family {family!r}")
    torch.manual_seed(0)
    a = load_adapter(ModelConfig(family=family, tiny=True))

    def no_model_work(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(a, "hidden_states", no_model_work)
    monkeypatch.setattr(a.model, "generate", no_model_work)
    for run in (lambda: heldout.score_part(a, Collator(a), samples, max_new_tokens=2),
                lambda: heldout.generate(a, samples, 2, torch.device("cpu"))):
        with pytest.raises(DataError) as e:
            run()
        assert e.value.reason == "image_option" and str(e.value).startswith(said), str(e.value)
    convs = [(s.messages[:1], s.images) for s in samples]
    with pytest.raises(ValueError, match=f"conversation 1: .*'max_pixels'.*{family!r}"):
        heldout.generate_messages(a, convs, 2)
    # the CLI: refused from the checkpoint's config.json, before the model loads
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": family}))
    monkeypatch.setattr("vldft.adapters.load_adapter", no_model_work)
    with pytest.raises(DataError) as e:
        heldout.main([str(ckpt), str(path), "--controls", "none"])
    assert e.value.reason == "image_option" and str(e.value).startswith(said), str(e.value)
    # without the keyed row, the same file scores
    monkeypatch.undo()
    (plain,) = [s for s in samples if s.id == "plain"]
    res = heldout.combine([heldout.score_part(a, Collator(a), [plain], max_new_tokens=2)])
    assert (res["n"], res["n_scored_ce"], res["n_skipped"]) == (1, 1, 0)


def test_qwen_held_out_scoring_keeps_per_image_bounds(images, tmp_path, qwen25):
    """The check leaves families with pixel bounds alone: the keyed row is scored."""
    from vldft import heldout

    path = write_rows(tmp_path / "heldout.jsonl", [
        part_row("keyed", {"type": "image", "max_pixels": 6272},
                 images=[str(images / "big.png")], answer="1")])
    res = heldout.combine([heldout.score_part(qwen25, Collator(qwen25, 1024), load_jsonl(path),
                                              max_new_tokens=2)])
    assert (res["n"], res["n_scored_ce"], res["n_skipped"]) == (1, 1, 0)


def test_training_refuses_a_llava_held_out_file_with_per_image_bounds_before_the_model_loads(
        images, tmp_path, monkeypatch):
    """``vldft.train`` checks ``data.heldout_file`` as the held-out CLI does: the keyed row is a
    data error naming file:line, id and key before any model loads (not at the first held-out
    evaluation, steps into the run)."""
    from conftest import TINY_CONFIG

    import vldft.train

    path = write_rows(tmp_path / "heldout.jsonl", [
        part_row("plain", {"type": "image"}, images=[str(images / "big.png")], answer="1"),
        part_row("keyed", {"type": "image", "min_pixels": 3136},
                 images=[str(images / "big.png")], answer="1")])

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(vldft.train, "load_model", no_model)
    with pytest.raises(SystemExit, match=rf"data error: {path}:2 \(id keyed\): .*per-image key "
                                         r"'min_pixels' is not supported by model family 'llava'"):
        vldft.train.cli([str(TINY_CONFIG), "model.family=llava", "model.min_pixels=null",
                         "model.max_pixels=null", f"data.heldout_file={path}",
                         f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
                         "loss.sft_warmup_steps=1"])
