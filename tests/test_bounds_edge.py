"""Pixel bounds at their edges (Qwen families): a source's ``min_pixels`` above the model's
``max_pixels`` (the max moves up to it: min == max), min == max at a value that is no multiple of
the token's area, an image part's ``min_pixels`` over a source's lower ``max_pixels``, and a model
whose own bounds are equal. qwen-vl-utils' resize (the reference: its ``smart_resize``, the
policy of Qwen's pipelines) may then land above the maximum; the encoded image must be exactly
that size (the processor never resizes it again), so the length estimate (packing, length
grouping) equals the encoded length. (With min == max at no multiple of the token's area no size
meets both bounds: qwen-vl-utils lands above them for an upscale, below for a downscale.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import record_generate
from PIL import Image
from qwen_vl_utils import smart_resize

from vldft.adapters import load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig
from vldft.data import load_jsonl
from vldft.data.mix import estimate_length

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(100, 37), (333, 500), (1000, 1000)]  # (width, height)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """One image per size in ``SIZES``, with content (a pattern), named ``{w}x{h}.png``."""
    root = tmp_path_factory.mktemp("edge")
    for w, h in SIZES:
        im = Image.new("RGB", (w, h))
        im.putdata([((7 * x) % 256, (5 * y) % 256, (x * y) % 256)
                    for y in range(h) for x in range(w)])
        im.save(root / f"{w}x{h}.png")
    return root


@pytest.fixture(scope="module")
def adapters():
    made = {}

    def get(family: str, lo: int | None = None, hi: int | None = None):
        if (family, lo, hi) not in made:
            torch.manual_seed(0)
            made[family, lo, hi] = load_adapter(ModelConfig(family=family, tiny=True,
                                                            min_pixels=lo, max_pixels=hi))
        return made[family, lo, hi]
    return get


def one_image_sample(images: Path, size: tuple[int, int], part: dict | None = None):
    w, h = size
    row = {"id": f"{w}x{h}", "images": [f"{w}x{h}.png"], "messages": [
        {"role": "user", "content": [{"type": "image", **(part or {})},
                                     {"type": "text", "text": "What is drawn?"}]},
        {"role": "assistant", "content": "A pattern."}]}
    path = images / f"row_{w}x{h}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (sample,) = load_jsonl(path)
    return sample


def expected_hw(adapter, size: tuple[int, int], lo: int, hi: int) -> tuple[int, int]:
    """(height, width) qwen-vl-utils resizes an image of ``size`` to within (lo, hi); a side it
    floors to 0 (a thin image under a small maximum) is one unit, as the processor keeps it."""
    factor = adapter.patch_size * 2
    h, w = smart_resize(size[1], size[0], factor=factor, min_pixels=lo, max_pixels=hi)
    return max(h, factor), max(w, factor)


def check_encoding(adapter, sample, images: Path, size, lo: int, hi: int, pixels=None) -> None:
    """The sample's one image is encoded at qwen-vl-utils' size for (lo, hi), its pixels those
    of the plain processor on the image resized to that size, and the length estimate equals
    the encoded length."""
    h, w = expected_hw(adapter, size, lo, hi)
    patch = adapter.patch_size
    enc = Collator(adapter, 100_000, pixels={sample.source: pixels} if pixels else None
                   ).encode(sample)
    assert enc.extras["image_grid_thw"].tolist() == [[1, h // patch, w // patch]], (size, lo, hi)
    n_pad = int((enc.input_ids == adapter.image_token_id).sum())
    assert n_pad == (h // patch) * (w // patch) // 4
    assert estimate_length(sample, adapter, pixels) == len(enc.input_ids), (size, lo, hi)
    with Image.open(images / f"{size[0]}x{size[1]}.png") as im:
        resized = im.convert("RGB").resize((w, h))
    text = adapter.render(sample.messages)
    ref = adapter.processor(text=[text], images=[resized], return_tensors="pt",
                            images_kwargs={"size": {"shortest_edge": h * w,
                                                    "longest_edge": h * w}})
    assert torch.equal(enc.extras["pixel_values"], ref["pixel_values"])
    assert torch.equal(enc.input_ids, ref["input_ids"][0])


def not_a_multiple(value: int, unit: int) -> int:
    return value + unit * unit // 3 if value % (unit * unit) == 0 else value


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_a_source_min_above_the_model_max_encodes_at_qwen_vl_utils_size(images, adapters,
                                                                         family, size):
    a = adapters(family)
    unit = a.patch_size * 2
    for m in (not_a_multiple(a.max_pixels * 2, unit), not_a_multiple(a.max_pixels + 1, unit),
              20_000):
        assert m % (unit * unit)
        assert a._bounds((m, None)) == (m, m)  # the model's max moves up to the source's min
        for pixels in ((m, None), (m, m)):
            check_encoding(a, one_image_sample(images, size), images, size, m, m, pixels)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_equal_bounds_within_the_models_encode_at_qwen_vl_utils_size(images, adapters, family,
                                                                    size):
    a = adapters(family)
    unit = a.patch_size * 2
    m = not_a_multiple((a.min_pixels + a.max_pixels) // 2, unit)
    assert a.min_pixels < m < a.max_pixels
    check_encoding(a, one_image_sample(images, size), images, size, m, m, (m, m))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_an_image_min_above_the_sources_max_encodes_at_qwen_vl_utils_size(images, adapters,
                                                                         family, size):
    """The per-image path: the image part's min_pixels over a source max below it (and over
    the model's max), alone or with an equal max_pixels."""
    a = adapters(family)
    unit = a.patch_size * 2
    m = not_a_multiple(a.max_pixels * 2, unit)
    for part, pixels in (({"min_pixels": m}, (None, a.max_pixels // 2)),
                         ({"min_pixels": m}, None),
                         ({"min_pixels": m, "max_pixels": m}, (a.min_pixels, a.max_pixels))):
        sample = one_image_sample(images, size, part)
        check_encoding(a, sample, images, size, m, m, pixels)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_a_model_with_equal_bounds_encodes_and_generates_at_qwen_vl_utils_size(images, adapters,
                                                                              size, monkeypatch):
    """model.min_pixels == model.max_pixels (no source bounds): training and held-out
    generation both give the image qwen-vl-utils' size."""
    from vldft.heldout import generate

    m = not_a_multiple(5000, 28)
    a = adapters("qwen2_5_vl", m, m)
    assert (a.min_pixels, a.max_pixels) == (m, m)
    sample = one_image_sample(images, size)
    check_encoding(a, sample, images, size, m, m)
    seen = record_generate(monkeypatch, a.model)
    generate(a, [sample], 2, torch.device("cpu"))
    h, w = expected_hw(a, size, m, m)
    assert seen[0]["image_grid_thw"].tolist() == [[1, h // 14, w // 14]]


def test_a_side_qwen_vl_utils_floors_to_zero_is_one_unit(images, adapters):
    """100 x 37 under an equal 2560 (Qwen3-VL, 32 px unit): qwen-vl-utils floors the height to 0
    and its fetch_image fails; vldft keeps one unit, and the estimate counts it."""
    from qwen_vl_utils import fetch_image

    a = adapters("qwen3_vl")
    assert smart_resize(37, 100, factor=32, min_pixels=2560, max_pixels=2560)[0] == 0
    with pytest.raises(ValueError):
        fetch_image({"image": str(images / "100x37.png"), "min_pixels": 2560,
                     "max_pixels": 2560}, image_patch_size=16)
    assert expected_hw(a, (100, 37), 2560, 2560) == (32, 64)
    check_encoding(a, one_image_sample(images, (100, 37)), images, (100, 37), 2560, 2560,
                   (2560, 2560))
