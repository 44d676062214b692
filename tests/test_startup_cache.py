"""The start-up cache (``vldft.data.cache``): a second start reads nothing and gives the very
set ``build_training_set`` gives (samples, order, lengths, table, skips, decontamination);
whatever changes rows or lengths invalidates it; a broken cache is rebuilt; two ranks build
it once."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_DATA, demo_config
from PIL import Image, ImageDraw

from vldft.adapters import load_adapter
from vldft.data import ImageBytes, cache_key
from vldft.data import cache as cache_mod
from vldft.data.cache import training_set
from vldft.data.mix import build_training_set
from vldft.loader import data_summary


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("VLDFT_CACHE_DIR", str(d))
    monkeypatch.delenv("VLDFT_NO_CACHE", raising=False)
    return d


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(demo_config().model)


def _png(i: int) -> bytes:
    img = Image.new("RGB", (40 + 4 * i, 36), "white")
    ImageDraw.Draw(img).ellipse([4, 4, 20 + i, 30], fill=(30 * i % 255, 90, 160))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_sources(root: Path) -> tuple[Path, Path]:
    """A JSONL source with image files (one corrupt image, one bad line: two skips) and a
    parquet source with embedded images and a text-only row."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:8]]
    (root / "img").mkdir(exist_ok=True)
    for k, r in enumerate(rows):
        shutil.copy(DEMO_DATA.parent / r["images"][0], root / f"img/{k}.png")
        r["images"] = [f"img/{k}.png"]
    (root / "img/3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [json.dumps(r) for r in rows]
    lines.insert(5, "{not json")
    jsonl = root / "a.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    table = pa.table({
        "id": [f"p{i}" for i in range(6)],
        "question": [f"How many dots are there? ({i})" for i in range(6)],
        "answer": [str(i % 4 + 1) for i in range(6)],
        "images": [[] if i == 2 else [{"bytes": _png(i), "path": f"p{i}.png"}]
                   for i in range(6)]})
    parquet = root / "b.parquet"
    pq.write_table(table, parquet)
    return jsonl, parquet


def config(root: Path, *extra: str, cap: int = 4, b: str = ""):
    """Source a (weight 2) and source b (weight 1, ``cap`` rows; ``b``: more of its keys)."""
    jsonl, parquet = root / "a.jsonl", root / "b.parquet"
    return demo_config(
        "data.train_files=[]", "data.on_error=skip", "data.heldout_file=null",
        f"data.sources=[{{path: {jsonl}, name: a, weight: 2}}, "
        f"{{path: {parquet}, name: b, weight: 1, max_samples: {cap}{b}}}]", *extra)


def fields(s) -> tuple:
    images = [(type(i).__name__, (i.data, i.name) if isinstance(i, ImageBytes) else i)
              for i in s.images]
    return s.id, s.messages, images, s.answer, s.kind, s.source, s.origin


def assert_same(got, want) -> None:
    assert [fields(s) for s in got.samples] == [fields(s) for s in want.samples]
    assert got.lengths == want.lengths
    assert got.has_image == want.has_image
    assert got.table == want.table
    assert got.skips.to_dict() == want.skips.to_dict()
    assert got.skips.summary() == want.skips.summary()
    assert got.decontamination == want.decontamination
    assert got.choices == want.choices
    assert json.dumps(data_summary(got, {}, [])) == json.dumps(data_summary(want, {}, []))


def start(cfg, adapter) -> tuple:
    lines: list[str] = []
    data = training_set(cfg, adapter, lines.append)
    return data, "\n".join(lines)


def test_a_second_start_reads_nothing_and_gives_the_same_set(tmp_path, adapter, monkeypatch):
    make_sources(tmp_path / "src")
    cfg = config(tmp_path / "src")
    want = build_training_set(cfg, adapter)
    assert want.skips.total == 2 and {r["source"] for r in want.table} == {"a", "b"}
    first, log = start(cfg, adapter)
    assert "training set: built in" in log
    assert_same(first, want)

    def no_reading(cfg):
        raise AssertionError("a cache hit read the sources")

    monkeypatch.setattr(cache_mod, "read_sources", no_reading)
    again, log = start(cfg, adapter)
    assert "training set: cached (key" in log and "lengths estimated" not in log
    assert_same(again, want)
    # DataLoader workers get the samples pickled: the mapped file is opened again
    assert [fields(s) for s in pickle.loads(pickle.dumps(again.samples))] == \
        [fields(s) for s in want.samples]


def test_mixing_fields_reuse_the_rows_and_length_fields_only_reestimate(tmp_path, adapter,
                                                                        monkeypatch):
    make_sources(tmp_path / "src")
    plain, _ = start(config(tmp_path / "src"), adapter)
    # weights, caps and the seed change the mixture, not the rows; pixel bounds the lengths
    for cfg in (config(tmp_path / "src", "train.seed=3", cap=5),
                config(tmp_path / "src", b=", min_pixels: 3136, max_pixels: 3136")):
        with monkeypatch.context() as m:
            m.setattr(cache_mod, "read_sources", lambda cfg: pytest.fail("rows read again"))
            data, log = start(cfg, adapter)
        assert "cached" in log and "lengths estimated" in log, log
        assert_same(data, build_training_set(cfg, adapter))
    assert data.table[1]["tokens"] < plain.table[1]["tokens"]  # fewer image tokens in b


@pytest.mark.parametrize("change", ["touch_source", "source_field", "touch_image",
                                    "add_missing_image", "lose_bad_image"])
def test_what_changes_rows_invalidates(tmp_path, adapter, change):
    src = tmp_path / "src"
    jsonl, parquet = make_sources(src)
    start(config(src), adapter)
    extra: list[str] = []
    if change == "touch_source":
        st = parquet.stat()
        os.utime(parquet, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "source_field":
        extra = ["data.sources[0].system=Answer briefly."]
    elif change == "touch_image":  # an image file the rows name: checked on every hit
        (src / "img/1.png").write_bytes(_png(7))
    elif change == "add_missing_image":  # a skipped row's missing image appears
        rows = jsonl.read_text().splitlines()
        row = json.loads(rows[0])
        row["images"], row["id"] = ["img/new.png"], "late"
        jsonl.write_text("\n".join(rows + [json.dumps(row)]) + "\n")
        start(config(src), adapter)  # the row is skipped (image_missing) and cached so
        (src / "img/new.png").write_bytes(_png(3))
    elif change == "lose_bad_image":
        (src / "img/3.png").unlink()  # a skipped row's bad image goes missing: stale too
    cfg = config(src, *extra)
    data, log = start(cfg, adapter)
    assert "training set: built in" in log, log
    if change in ("touch_image", "add_missing_image", "lose_bad_image"):
        assert "stale" in log
    assert_same(data, build_training_set(cfg, adapter))


@pytest.mark.parametrize("damage", ["truncate_rows", "garbage_meta", "delete_lengths",
                                    "garbage_lengths", "empty_dir"])
def test_a_broken_cache_is_rebuilt_not_trusted(tmp_path, adapter, cache_dir, damage):
    make_sources(tmp_path / "src")
    cfg = config(tmp_path / "src")
    start(cfg, adapter)
    want = build_training_set(cfg, adapter)  # (damaging a file in place under a live mapping
    # of it would crash that mapping's reader: the cache itself only ever renames)
    (where,) = [d for d in cache_dir.iterdir() if not d.name.startswith(".")]
    if damage == "truncate_rows":
        with open(where / "rows.arrow", "r+b") as f:
            f.truncate((where / "rows.arrow").stat().st_size // 2)
    elif damage == "garbage_meta":
        (where / "meta.json").write_text("{")
    elif damage == "delete_lengths":
        for f in where.glob("lengths-*.npy"):
            f.unlink()
    elif damage == "garbage_lengths":
        for f in where.glob("lengths-*.npy"):
            f.write_bytes(b"nonsense")
    else:
        shutil.rmtree(where)
        where.mkdir()
    data, log = start(cfg, adapter)
    if damage in ("delete_lengths", "garbage_lengths"):
        assert "cached" in log and f"{len(set(data.samples.index))} lengths estimated" in log
    else:
        assert "rebuilding" in log and "built in" in log
    assert_same(data, want)
    assert not [d for d in cache_dir.iterdir() if d.name.startswith(".")]  # no leftovers


def test_decontamination_is_cached_with_its_report(tmp_path, adapter, monkeypatch):
    """data.decontaminate: its drops and report come from the cache, and the benchmark copies'
    files are part of the key (vldft.data.decontam itself: tests/test_decontam.py)."""
    make_sources(tmp_path / "src")
    bench = tmp_path / "bench"
    (bench / "geometry3k").mkdir(parents=True)
    (bench / "geometry3k/test.parquet").write_bytes(b"a copy")
    calls = []

    def fake_remove(cfg, per_source):  # what mix.remove_benchmark_rows returns, in small
        calls.append(1)
        dropped = [s for s in per_source["a"] if s.id.endswith(("1", "4"))]
        per_source["a"] = [s for s in per_source["a"] if s not in dropped]
        entries = [{"source": "a", "id": s.id, "origin": s.origin, "benchmark": "geometry3k",
                    "test_id": "7", "reason": "same_image"} for s in dropped]
        return {"benchmarks": ["geometry3k"], "benchmark_dir": str(bench), "test_rows": 2,
                "dropped": len(entries), "by_benchmark": {"geometry3k": len(entries)},
                "by_reason": {"same_image": len(entries)}, "by_source": {"a": len(entries)},
                "entries": entries}

    monkeypatch.setattr(cache_mod, "remove_benchmark_rows", fake_remove)
    monkeypatch.setattr(cache_key, "benchmark_names", lambda setting: ["geometry3k"])
    cfg = config(tmp_path / "src", "data.decontaminate=[geometry3k]",
                 f"train.eval_data_dir={bench}")
    first, log = start(cfg, adapter)
    assert "built" in log and first.decontamination["dropped"] == 2
    assert first.table[0]["decontaminated"] == 2 and first.table[0]["read"] == 7
    assert not {s.id for s in first.samples} & {e["id"] for e in first.decontamination["entries"]}
    again, log = start(cfg, adapter)
    assert "cached" in log and len(calls) == 1
    assert_same(again, first)
    (bench / "geometry3k/test.parquet").write_bytes(b"a new copy")
    _, log = start(cfg, adapter)
    assert "built" in log and len(calls) == 2


def test_no_cache_env_and_uncacheable_sources_build_in_memory(tmp_path, adapter, cache_dir,
                                                             monkeypatch):
    make_sources(tmp_path / "src")
    cfg = config(tmp_path / "src")
    monkeypatch.setenv("VLDFT_NO_CACHE", "1")
    data, log = start(cfg, adapter)
    assert "cache off: VLDFT_NO_CACHE=1" in log and not cache_dir.exists()
    assert_same(data, build_training_set(cfg, adapter))
    monkeypatch.delenv("VLDFT_NO_CACHE")

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod, "write_rows", full)  # a full disk: built in memory, said so
    data, log = start(cfg, adapter)
    assert "not cached: cannot write" in log and "No space left" in log
    assert_same(data, build_training_set(cfg, adapter))
    assert not list(cache_dir.iterdir())  # the half-written folder is gone


def test_the_content_digest_follows_the_rows_not_the_cache_or_their_folder(tmp_path, adapter):
    """What a checkpoint records of the samples' content (``content_digest``) is the same read
    from the cache's stored keys as computed from samples built in memory, and the same for a
    copy of the data in another folder (image paths count as the rows write them); an answer
    edited to the same length, or an image reference swapped, changes it."""
    from vldft.data.formats import image_roots
    from vldft.data.rowstore import SampleTable, content_digest

    def digest(root: Path) -> str:
        cfg = config(root)
        data, _ = start(cfg, adapter)
        assert isinstance(data.samples, SampleTable)
        built = content_digest(build_training_set(cfg, adapter).samples, image_roots(cfg))
        assert content_digest(data.samples, image_roots(cfg)) == built
        return built

    jsonl, _ = make_sources(tmp_path / "src")
    first = digest(tmp_path / "src")
    shutil.copytree(tmp_path / "src", tmp_path / "moved")
    assert digest(tmp_path / "moved") == first
    lines = jsonl.read_text().splitlines()
    row = json.loads(lines[0])
    part = row["messages"][-1]["content"][0]
    assert part["text"].endswith("Answer: 1")
    part["text"] = part["text"][:-1] + "2"
    jsonl.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    answer = digest(tmp_path / "src")
    row = json.loads(lines[0])
    row["images"] = ["img/1.png"]  # the diagram of another row, the same size
    jsonl.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    swapped = digest(tmp_path / "src")
    parquet = tmp_path / "src" / "b.parquet"  # an embedded image replaced under its own name
    table = pq.read_table(parquet).to_pylist()
    other = io.BytesIO()
    Image.new("RGB", (40, 36), "black").save(other, format="PNG")  # the size of _png(0)
    table[0]["images"][0]["bytes"] = other.getvalue()
    pq.write_table(pa.Table.from_pylist(table), parquet)
    assert len({first, answer, swapped, digest(tmp_path / "src")}) == 4


# -- two ranks ---------------------------------------------------------------------------------
def _rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    builds = []
    real = cache_mod.build_rows
    cache_mod.build_rows = lambda *a: (builds.append(1), real(*a))[1]
    data = training_set(config(Path(root)), load_adapter(demo_config().model), lambda *a: None)
    Path(out, f"{rank}.json").write_text(json.dumps({
        "builds": len(builds), "ids": [s.id for s in data.samples], "lengths": data.lengths,
        "table": data.table}))
    dist.destroy_process_group()


def test_two_ranks_build_it_once_and_a_new_process_reuses_it(tmp_path, adapter):
    import torch.multiprocessing as mp
    from test_distributed import free_port

    make_sources(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path / "src"), str(out)), nprocs=2)
    r0, r1 = (json.loads((out / f"{r}.json").read_text()) for r in (0, 1))
    assert (r0["builds"], r1["builds"]) == (1, 0)
    assert r0 == {**r1, "builds": 1}
    cfg = config(tmp_path / "src")
    data, log = start(cfg, adapter)  # another process, the same key
    assert "cached" in log and "lengths estimated" not in log
    assert [s.id for s in data.samples] == r0["ids"] and data.lengths == r0["lengths"]
    assert_same(data, build_training_set(cfg, adapter))


def test_every_row_skipped_gives_the_empty_set_built_and_cached(tmp_path, adapter):
    """A source whose rows are all skipped: the cached set is empty, with the skips, as the
    in-memory build gives it (it failed reading a lengths file no row needed); training then
    stops with its 'no training samples' message and the skip table."""
    (tmp_path / "bad.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": []}\n')
    cfg = demo_config("data.train_files=[]", "data.on_error=skip", "data.heldout_file=null",
                      f"data.sources=[{{path: {tmp_path / 'bad.jsonl'}, name: bad}}]")
    want = build_training_set(cfg, adapter)
    assert not want.samples and want.skips.total == 2
    for expect in ("training set: built in", "training set: cached (key"):
        got, log = start(cfg, adapter)
        assert expect in log, log
        assert_same(got, want)


def test_the_training_log_counts_appended_options_built_or_cached(tmp_path, adapter):
    """Rows whose options were appended after the question (or were in it already) are counted
    in the training log, the same from a built set and from the cache."""
    from vldft.loader import describe_data

    rows = [{"id": "a", "question": "Which?", "choices": ["1", "2"], "answer": "A"},
            {"id": "b", "question": "Which?\nA. 1\nB. 2", "choices": ["1", "2"], "answer": "B"},
            {"id": "c", "question": "How many?", "answer": "3"}]
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = demo_config("data.train_files=[]", "data.heldout_file=null", "train.eval_every=0",
                      f"data.sources=[{{path: {f}, format: text_math}}]")
    texts = []
    for _ in range(2):  # built, then from the cache
        data, log = start(cfg, adapter)
        assert data.choices == {"appended": 1, "in_question": 1}
        texts.append(describe_data(data, 0, tmp_path / "data_summary.json"))
    assert "[vldft] training set: cached (key" in log, log  # the second start read the cache
    for text in texts:
        assert "[vldft] note: 1 rows read had their options appended after the question" in text
        assert "1 rows read list their options in the question already" in text
