"""Benchmark decontamination (vldft.data.decontam): planted duplicates of generated line
diagrams and test questions are dropped with the right reason, near misses are kept."""

from __future__ import annotations

import io
import json
import random

import datasets
import pytest
from PIL import Image, ImageDraw

from vldft.data import ImageBytes, Sample
from vldft.data.benchmarks import BENCHMARKS, SUITES, LocalDataError, embed_images, load_local
from vldft.data.decontam import (
    BANDS,
    HASH_DISTANCE,
    SUITE_WORDS,
    BenchmarkIndex,
    Match,
    benchmarks_for,
    decontaminate,
    image_key,
    normalise_question,
)


def diagram(seed: int) -> Image.Image:
    """A line diagram: white, 200-400 px, a polygon, maybe circles, point labels."""
    r = random.Random(seed)
    w, h = r.randint(200, 400), r.randint(200, 400)
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    pts = [(r.randint(10, w - 10), r.randint(10, h - 10)) for _ in range(r.randint(3, 6))]
    for i, p in enumerate(pts):
        d.line([p, pts[(i + 1) % len(pts)]], fill="black", width=r.choice([1, 2, 3]))
        d.text((p[0] + 3, p[1] + 3), r.choice("ABCDEFGH"), fill="black")
    for _ in range(r.randint(0, 2)):
        x, y, rad = r.randint(40, w - 40), r.randint(40, h - 40), r.randint(15, 60)
        d.ellipse([x - rad, y - rad, x + rad, y + rad], outline="black", width=2)
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png(seed: int) -> ImageBytes:
    return ImageBytes(encode(diagram(seed)), f"{seed}.png")


def resized(seed: int, scale: float) -> ImageBytes:
    im = diagram(seed)
    return ImageBytes(encode(im.resize((round(im.width * scale), round(im.height * scale)),
                                       Image.LANCZOS)))


def sample(sid: str, question: str, images: list) -> Sample:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return Sample(id=sid, messages=[
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": "Answer: 1"}]}],
        images=images, source="src", origin=f"train.jsonl:{sid}")


Q_GEOQA = ("As shown in the figure, AB is the diameter of circle O, point C is on circle O, "
           "angle BAC = 30.0, then the degree of angle ABC is ()")
Q_GEOQA_1 = "In triangle ABC, D and E are the midpoints of AB and AC, DE = 4.5, so BC is"
Q_VERSE = ("As shown in the figure, line a is parallel to line b and angle 1 is 50 degrees. "
           "What is the measure of angle 2?\nChoices:\nA:40°\nB:50°\nC:130°\nD:140°")


@pytest.fixture(scope="module")
def index() -> BenchmarkIndex:
    return BenchmarkIndex.build([
        ("geoqa", "0", Q_GEOQA, [png(0)]),
        ("geoqa", "1", Q_GEOQA_1, [png(1)]),
        ("geometry3k", "2401", "Find x.", [png(2)]),
        ("geometry3k", "2402", "Find x.", [png(3)]),
        ("geometry3k", "2403", "Find x.", [png(4)]),
        ("mathverse", "7", Q_VERSE, [png(5)]),
    ])


def test_benchmarks_for_suites_tasks_and_unknown():
    assert benchmarks_for("off") == []
    assert benchmarks_for("paper") == SUITES["paper"]
    assert benchmarks_for("geo") == list(BENCHMARKS)
    assert SUITE_WORDS == ("off", *SUITES)
    assert benchmarks_for(["mathvision_testmini", "geoqa", "mathvision"]) == ["mathvision",
                                                                               "geoqa"]
    assert benchmarks_for("wemath_testmini_reasoning,geometry3k") == ["wemath", "geometry3k"]
    with pytest.raises(ValueError, match=r"'mathvison'.*mathvision.*mathvision_testmini"):
        benchmarks_for(["geoqa", "mathvison"])


def test_normalise_question():
    assert normalise_question("In △ABC,  AB = 3.5;\nFind   x.") == "in △ abc ab = 3.5 find x"
    assert normalise_question("<image>\nFIND the right-angled side") == \
        "find the right angled side"
    assert normalise_question("<image1> x-2 = −3, 1,000 and 1/2") == "x - 2 = - 3 1,000 and 1/2"
    assert normalise_question("Choices: A. 30° B. 60°") == "choices a 30 ° b 60 °"


def test_image_key_exact_and_perceptual(tmp_path):
    im = diagram(7)
    path = tmp_path / "a.png"
    im.save(path)
    sha, h = image_key(path)
    assert image_key(ImageBytes(path.read_bytes())) == (sha, h)
    assert image_key(im)[0] == sha  # a PIL image: the SHA-256 of its PNG encoding
    sha_j, h_j = image_key(ImageBytes(encode(im, "JPEG", quality=75)))
    assert sha_j != sha and (h ^ h_j).bit_count() <= HASH_DISTANCE
    other = image_key(png(8))[1]
    assert (h ^ other).bit_count() > HASH_DISTANCE


def test_bands_cover_the_hash():
    """Pigeonhole: the bands split all 64 bits, so two hashes within HASH_DISTANCE agree to
    within one bit in at least one band (the only probes made)."""
    bits = [b for shift, width in BANDS for b in range(shift, shift + width)]
    assert sorted(bits) == list(range(64))
    assert 2 * len(BANDS) > HASH_DISTANCE


def test_planted_duplicates_dropped_and_near_misses_kept(index):
    assert len(index) == 6
    verse_options = ("As shown in the figure, line a is parallel to line b and angle 1 is 50 "
                     "degrees. What is the measure of angle 2? Options: (A) 40 (B) 50")
    samples = [
        sample("same-bytes", "What is the answer?", [png(0)]),
        sample("jpeg", "Solve it.", [ImageBytes(encode(diagram(1), "JPEG", quality=75))]),
        sample("half", "Solve it.", [resized(5, 0.5)]),
        sample("x1.7", "Find x.", [resized(2, 1.7)]),
        sample("grey", "Find x.", [ImageBytes(encode(diagram(3).convert("L")))]),
        sample("reworded", "  as SHOWN in the figure AB is the diameter of circle O; point C is "
               "on circle O, angle BAC = 30.0. Then the degree of angle ABC is:", [png(100)]),
        sample("contains", f"Look at the picture. {Q_GEOQA_1}? Explain step by step.",
               [png(101)]),
        sample("stem", verse_options, [png(102)]),
        # near misses, kept
        sample("other-diagram", "What is the answer?", [png(103)]),
        sample("stock", "Find x.", [png(104)]),
        sample("number", Q_GEOQA.replace("30.0", "35.0"), [png(105)]),
        sample("part-word", Q_GEOQA_1 + "land", [png(106)]),  # "... bc is" in "... bc island"
        sample("prefix-of-test", "As shown in the figure, AB is the diameter of circle O",
               [png(107)]),
        sample("text-only", "What is 2 + 2 in the decimal system, written as a number?", []),
    ]
    kept, dropped = decontaminate(samples, index, progress=False)
    assert [s.id for s in kept] == ["other-diagram", "stock", "number", "part-word",
                                    "prefix-of-test", "text-only"]
    got = [(d["id"], d["benchmark"], d["test_id"], d["reason"]) for d in dropped]
    assert got == [
        ("same-bytes", "geoqa", "0", "image_exact"),
        ("jpeg", "geoqa", "1", "image_similar"),
        ("half", "mathverse", "7", "image_similar"),
        ("x1.7", "geometry3k", "2401", "image_similar"),
        ("grey", "geometry3k", "2402", "image_similar"),
        ("reworded", "geoqa", "0", "question"),
        ("contains", "geoqa", "1", "question"),
        ("stem", "mathverse", "7", "question"),
    ]
    assert dropped[0] == {"source": "src", "id": "same-bytes", "origin": "train.jsonl:same-bytes",
                          "benchmark": "geoqa", "test_id": "0", "reason": "image_exact"}


def test_match_priority(index):
    """image_exact beats image_similar beats question, over all images of a sample."""
    assert index.match(Q_GEOQA_1, [resized(0, 0.5), png(1)]) == Match("geoqa", "1",
                                                                       "image_exact")
    assert index.match(Q_GEOQA_1, [png(110), resized(5, 1.7)]) == Match("mathverse", "7",
                                                                         "image_similar")
    assert index.match(Q_GEOQA_1, [png(110)]) == Match("geoqa", "1", "question")
    assert index.match("Find x.", [png(110)]) is None


def test_blank_images_match_only_exactly():
    blank = ImageBytes(encode(Image.new("RGB", (300, 200), "white")))
    index = BenchmarkIndex.build([("geoqa", "0", "", [blank])])
    other_blank = ImageBytes(encode(Image.new("RGB", (200, 200), (250, 250, 250)), "JPEG"))
    assert index.match("", [other_blank]) is None
    assert index.match("", [blank]) == Match("geoqa", "0", "image_exact")


def test_stock_question_counts_rows_with_different_images():
    """A question repeated with the same image (MathVerse's versions of one problem) stays
    specific; one repeated over 3 different images is a stock phrase."""
    q = "What is the perimeter of the shaded region in the figure shown below?"
    same = BenchmarkIndex.build([("mathverse", str(i), q, [png(0)]) for i in range(3)])
    assert same.match(q, [png(50)]) == Match("mathverse", "0", "question")
    stock = BenchmarkIndex.build([("mathverse", str(i), q, [png(i)]) for i in range(3)])
    assert stock.match(q, [png(50)]) is None


def _upstream_copy(root):
    """geoqa (test.jsonl + images/) and geometry3k (InterGPS test/<id>/) in upstream layout."""
    (root / "geoqa" / "images").mkdir(parents=True)
    lines = []
    for i, q in enumerate([Q_GEOQA, Q_GEOQA_1]):
        diagram(i).save(root / "geoqa" / "images" / f"{i}.png")
        lines.append(json.dumps({"subject": q, "choices": ["30°", "60°"], "label": 1,
                                 "image": f"images/{i}.png"}))
    (root / "geoqa" / "test.jsonl").write_text("\n".join(lines) + "\n")
    for pid, seed in (("2401", 2), ("2402", 3)):
        d = root / "geometry3k" / "test" / pid
        d.mkdir(parents=True)
        diagram(seed).save(d / "img_diagram.png")
        (d / "data.json").write_text(json.dumps({"id": int(pid), "problem_text": "Find x.",
                                                 "choices": ["1", "2"], "answer": "A"}))


def test_from_local_upstream_layouts(tmp_path):
    _upstream_copy(tmp_path)
    index = BenchmarkIndex.from_local(["geoqa", "geometry3k"], tmp_path, progress=False)
    assert len(index) == 4
    samples = [sample("a", "Solve.", [ImageBytes(encode(diagram(1), "JPEG", quality=75))]),
               sample("b", "Find x.", [str(tmp_path / "geometry3k/test/2402/img_diagram.png")]),
               sample("c", Q_GEOQA.upper(), [png(120)]),
               sample("d", "Find x.", [png(121)])]
    kept, dropped = decontaminate(samples, index, progress=False)
    assert [s.id for s in kept] == ["d"]
    assert [(d["benchmark"], d["test_id"], d["reason"]) for d in dropped] == [
        ("geoqa", "1", "image_similar"),  # no id column: the row number
        ("geometry3k", "2402", "image_exact"),
        ("geoqa", "0", "question")]


def test_an_unreadable_benchmark_image_does_not_stop_decontamination(tmp_path):
    """Evaluation refuses a benchmark image that is not one; decontamination reads what it
    can (an unreadable test image matches exactly only) and still indexes every row."""

    _upstream_copy(tmp_path)
    broken = next((tmp_path / "geometry3k").rglob("img_diagram.png"))
    broken.write_bytes(b"not an image")
    with pytest.raises(LocalDataError, match="cannot be read"):
        load_local(BENCHMARKS["geometry3k"], tmp_path)
    index = BenchmarkIndex.from_local(["geoqa", "geometry3k"], tmp_path, progress=False)
    assert len(index) == 4


def test_from_local_hub_parquet(tmp_path):
    """The layout ``python -m vldft.eval download`` writes: image bytes in the parquet."""
    img_dir = tmp_path / "src"
    img_dir.mkdir()
    rows = []
    for i, q in enumerate([Q_GEOQA, Q_GEOQA_1]):
        diagram(i).save(img_dir / f"{i}.png")
        rows.append({"subject": q, "choices": ["30°", "60°"], "label": 1,
                     "image": str(img_dir / f"{i}.png")})
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    out = tmp_path / "root" / "geoqa" / "test.parquet"
    out.parent.mkdir(parents=True)
    embed_images(ds).to_parquet(str(out))
    for f in img_dir.iterdir():  # the bytes in the table must be what is read
        f.unlink()
    index = BenchmarkIndex.from_local(["geoqa"], tmp_path / "root", progress=False)
    assert len(index) == 2
    assert index.match("Solve.", [resized(1, 1.7)]) == Match("geoqa", "1", "image_similar")


def test_from_local_missing_names_paths_and_command(tmp_path):
    _upstream_copy(tmp_path)
    with pytest.raises(LocalDataError) as e:
        BenchmarkIndex.from_local(["geoqa", "mathvision", "wemath"], tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "no local copy of mathvision, wemath" in msg
    assert str(tmp_path / "mathvision" / "testmini.parquet") in msg
    assert str(tmp_path / "wemath" / "testmini.json") in msg
    assert (f"python -m vldft.eval download --benchmarks mathvision,wemath --data-dir "
            f"{tmp_path}") in msg


def test_pil_images_and_string_content(index):
    """PIL images are matched without changing them (no draft on the caller's JPEG); a
    string content's text around ``<image>`` is the question; system turns are not."""
    im = Image.open(io.BytesIO(encode(diagram(1), "JPEG", quality=75)))
    size = im.size
    s = Sample(id="pil", messages=[{"role": "user", "content": "<image>Solve."},
                                   {"role": "assistant", "content": "1"}],
               images=[im], source="src")
    t = Sample(id="str", messages=[{"role": "user", "content": f"<image>{Q_GEOQA_1}"},
                                   {"role": "assistant", "content": "1"}],
               images=[png(130)], source="src")
    u = Sample(id="system", messages=[{"role": "system", "content": "Be brief. " + Q_GEOQA},
                                      {"role": "user", "content": "<image>Solve."},
                                      {"role": "assistant", "content": "1"}],
               images=[png(131)], source="src")
    kept, dropped = decontaminate([s, t, u], index, progress=False)
    assert [k.id for k in kept] == ["system"]
    assert [(d["id"], d["test_id"], d["reason"]) for d in dropped] == [
        ("pil", "1", "image_similar"), ("str", "1", "question")]
    assert im.size == size and im.load() is not None and im.size == size


def test_threshold_needs_both_hash_distance_and_correlation():
    """Two resized copies whose hashes moved by 6 and 8 bits are found (a distance <= 3 index
    would miss them); two different diagrams 6 bits apart (1 pair of 1.1M among 1,500
    generated ones) are rejected by the thumbnail correlation."""
    index = BenchmarkIndex.build([("geoqa", str(s), "", [png(s)]) for s in (12, 32, 1136)])
    for seed in (12, 32):
        far = (image_key(png(seed))[1] ^ image_key(resized(seed, 0.4))[1]).bit_count()
        assert 6 <= far <= HASH_DISTANCE
        assert index.match("", [resized(seed, 0.4)]) == Match("geoqa", str(seed),
                                                              "image_similar")
    close = (image_key(png(1136))[1] ^ image_key(png(1334))[1]).bit_count()
    assert close <= HASH_DISTANCE
    assert index.match("", [png(1334)]) is None
    assert index.stats["similar_rejected"] >= 1


def test_a_malformed_copy_or_an_emptied_weighted_source_is_a_data_error(tmp_path):
    """Training's data errors are one line (a DataError): a benchmark copy missing a key
    stopped start-up with a LocalDataError traceback, and a weighted source that decontamination
    emptied with a ValueError that blamed skipped rows only."""
    from conftest import demo_config

    from vldft.data import DataError
    from vldft.data.mix import mix, remove_benchmark_rows

    (tmp_path / "mathverse").mkdir()
    (tmp_path / "mathverse" / "testmini.json").write_text('[{"sample_index": "1"}]')
    cfg = demo_config("data.decontaminate=[mathverse]", f"train.eval_data_dir={tmp_path}")
    with pytest.raises(DataError, match=r"data.decontaminate: .*testmini\.json\[0\]: missing "
                                        r"key"):
        remove_benchmark_rows(cfg, {"train": []})
    with pytest.raises(DataError, match=r"weighted source\(s\) \['a'\] have no samples left "
                                        r"\(.*data.decontaminate"):
        mix({"a": [], "b": [sample("x", "q", [])]}, {"a": 1.0, "b": 1.0}, {}, 0)
