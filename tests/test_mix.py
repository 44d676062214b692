"""Source mixing and length-grouped batching."""

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import DEMO_DATA, demo_config

from vldft.adapters import load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig
from vldft.data import DataError, Sample, load_jsonl
from vldft.data.mix import (
    LengthGroupedSampler,
    RandomBatchSampler,
    estimate_length,
    mix,
)


def _turn(role, text):
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _samples(prefix, n):
    return [Sample(f"{prefix}{i}", [_turn("user", "q"), _turn("assistant", "a")]) for i in range(n)]


def test_union_without_weights_and_caps():
    per = {"a": _samples("a", 10), "b": _samples("b", 4)}
    out = mix(per, {"a": None, "b": None}, {"a": None, "b": None}, seed=0)
    assert [s.id for s in out] == [s.id for s in per["a"] + per["b"]]
    capped = mix(per, {"a": None, "b": None}, {"a": 3, "b": None}, seed=0)
    assert Counter(s.id[0] for s in capped) == {"a": 3, "b": 4}
    assert len({s.id for s in capped}) == 7  # a seeded subset, no repeats


def test_weights_resample_to_the_requested_shares_reproducibly():
    per = {"a": _samples("a", 90), "b": _samples("b", 10)}
    out = mix(per, {"a": 1.0, "b": 1.0}, {"a": None, "b": None}, seed=1)
    counts = Counter(s.id[0] for s in out)
    assert counts == {"a": 50, "b": 50}  # b up-sampled 5x, a down-sampled to 50 distinct
    assert Counter(s.id for s in out if s.id[0] == "b") == {f"b{i}": 5 for i in range(10)}
    assert len({s.id for s in out if s.id[0] == "a"}) == 50
    again = mix(per, {"a": 1.0, "b": 1.0}, {"a": None, "b": None}, seed=1)
    other = mix(per, {"a": 1.0, "b": 1.0}, {"a": None, "b": None}, seed=2)
    assert [s.id for s in again] == [s.id for s in out]
    assert [s.id for s in other] != [s.id for s in out]


def test_length_grouped_sampler_is_a_permutation_with_pure_modality_batches():
    lengths = [(i * 37) % 101 for i in range(200)]
    has_image = [i % 3 == 0 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, has_image, batch_size=8, seed=0)
    batches = list(sampler)
    sampler.set_position(1)
    again = list(sampler)
    assert len(batches) == len(sampler) == 9 + 17  # ceil(67/8) image + ceil(133/8) text
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(200)) and batches != again  # reshuffled per epoch
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert all(1 <= len(b) <= 8 for b in batches)

    def padding(groups):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in groups)

    import random

    rand = list(range(200))
    random.Random(0).shuffle(rand)
    assert padding(batches) < padding([rand[k:k + 8] for k in range(0, 200, 8)]) / 3


@pytest.mark.parametrize("make", [
    lambda: RandomBatchSampler(50, batch_size=4, seed=3),
    lambda: LengthGroupedSampler([i % 7 for i in range(50)], [i % 2 == 0 for i in range(50)],
                                 batch_size=4, seed=3)])
def test_epoch_order_depends_only_on_seed_and_epoch_and_skip_resumes_it(make):
    """What resume relies on: a fresh sampler set to (epoch, skip) yields exactly the batches
    an uninterrupted one yields after its first ``skip`` batches of that epoch."""
    a, b = make(), make()
    a.set_position(2)
    full = list(a)
    assert sorted(i for batch in full for i in batch) == list(range(50))
    b.set_position(2, skip=5)
    assert list(b) == full[5:]
    a.set_position(3)
    assert list(a) != full
    assert len(a) == len(full)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "llava_onevision"])
def test_estimated_length_matches_the_encoded_length(family):
    """Exact, one- and two-answer samples alike: LLaVA-1.5's template has no end-of-turn
    token and the collator appends one per answer, which the estimate missed (packed rows went
    over data.pack_tokens by a token per answer)."""
    import dataclasses

    adapter = load_adapter(ModelConfig(family=family, tiny=True))
    coll = Collator(adapter, max_length=1024)
    samples = load_jsonl(DEMO_DATA)[:5]
    first = samples[0]
    samples.append(dataclasses.replace(first, id="two", messages=[
        *first.messages, {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]))
    for s in samples:
        assert estimate_length(s, adapter) == len(coll.encode(s).input_ids), s.id


def test_per_source_pixel_bounds_change_the_image_tokens(tmp_path):
    """A source's max_pixels overrides the model's: fewer image tokens for that source only,
    in the collator and in the length estimate alike."""
    from vldft.data.mix import build_training_set

    demo = DEMO_DATA
    cfg = demo_config(
        "data.train_files=[]", "model.min_pixels=3136", "model.max_pixels=12544",
        f"data.sources=[{{path: {demo}, name: big, max_samples: 2}}, "
        f"{{path: {demo}, name: small, max_samples: 2, max_pixels: 3136}}]")
    adapter = load_adapter(cfg.model)
    data = build_training_set(cfg, adapter)
    coll = Collator.from_config(adapter, cfg)  # the pixel bounds training encodes with
    counts = {}
    for s, est in zip(data.samples, data.lengths, strict=True):
        enc = coll.encode(s)
        assert len(enc.input_ids) == est
        counts[s.source] = int((enc.input_ids == adapter.image_token_id).sum())
    assert counts == {"big": 16, "small": 4}


def test_the_log_warns_of_a_source_without_samples_and_notes_a_repeated_one(tmp_path):
    """The mixture table shows 'used 0' and 'used' above 'read'; the log says both in words:
    a source whose every row was skipped (unweighted sources: a weighted one without samples
    is an error), and a 1-row source repeated by its weight."""
    from vldft.data.mix import build_training_set
    from vldft.loader import describe_data

    lines = DEMO_DATA.read_text().splitlines()
    (tmp_path / "images").symlink_to(DEMO_DATA.parent / "images")
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    (tmp_path / "one.jsonl").write_text(lines[0] + "\n")
    (tmp_path / "many.jsonl").write_text("\n".join(lines[:9]) + "\n")

    def described(*sources: str):
        cfg = demo_config("data.train_files=[]", "data.on_error=skip", "data.heldout_file=null",
                          "data.sources=[" + ", ".join(sources) + "]")
        data = build_training_set(cfg, load_adapter(cfg.model))
        text = describe_data(data, 0, tmp_path / "data_summary.json")
        return {r["source"]: (r["read"], r["used"]) for r in data.table}, text

    used, text = described(f"{{path: {tmp_path / 'bad.jsonl'}, name: bad}}",
                           f"{{path: {tmp_path / 'many.jsonl'}, name: many}}")
    assert used == {"bad": (0, 0), "many": (9, 9)}, used
    assert " auto: normalized " in text, text  # the format it detected, not just "auto"
    assert "[vldft] warning: source 'bad' gives no samples (0 read without error" in text
    assert "'many'" not in text and "repeated" not in text
    used, text = described(f"{{path: {tmp_path / 'one.jsonl'}, name: one, weight: 1}}",
                           f"{{path: {tmp_path / 'many.jsonl'}, name: many, weight: 1}}")
    assert used == {"one": (1, 5), "many": (9, 5)}, used  # 10 samples, half each
    assert "[vldft] note: source 'one' is repeated: 1 rows give 5 samples (5.0x" in text
    assert "[vldft] note: source 'many' is subsampled: 5 of its 9 rows are used" in text
    assert "the other 4 are not trained" in text and "warning" not in text


def test_the_repeated_note_counts_the_rows_left_after_decontamination(tmp_path):
    """6 rows read, 1 decontaminated, 11 samples: 5 rows give 11 (2.2x); the note said "6 rows
    give 11 samples (1.8x)" while the subsampled note already took the dropped rows out."""
    from types import SimpleNamespace

    from vldft.data.skips import SkipReport
    from vldft.loader import describe_data

    row = {"source": "geo", "format": "hf", "read": 6, "decontaminated": 1, "used": 11,
           "images": 11, "text_only": 0, "tokens": 999}
    data = SimpleNamespace(table=[row, {**row, "source": "sub", "used": 3}],
                           skips=SkipReport())
    text = describe_data(data, 0, tmp_path / "data_summary.json")
    assert "source 'geo' is repeated: 5 rows give 11 samples (2.2x" in text, text
    assert "source 'sub' is subsampled: 3 of its 5 rows are used" in text, text
    # max_samples 100 of 306 rows, weighted to 244 samples: 100 distinct rows, repeated (it
    # said "244 of its 306 rows are used ... the other 62 are not trained")
    capped = {**row, "source": "mv", "read": 306, "decontaminated": 0, "used": 244,
              "max_samples": 100}
    text = describe_data(SimpleNamespace(table=[capped], skips=SkipReport()), 0,
                         tmp_path / "data_summary.json")
    assert ("source 'mv' is repeated: 100 rows give 244 samples (2.4x, by its weight); "
            "max_samples keeps 100 of its 306 rows, the other 206 are not trained") in text, text


def test_data_image_root_is_the_image_root_of_sources_without_their_own(tmp_path):
    """``data.image_root`` (documented as the base of relative image paths) also serves the
    sources of ``data.sources`` that set none (it served ``train_files`` only: a source's
    relative images were looked for beside its file); a source's own root and a hub source's
    download keep theirs."""
    from vldft.data.mix import read_sources

    rows = [json.loads(r) for r in DEMO_DATA.read_text().splitlines()[:3]]
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = f"data.sources=[{{path: {tmp_path / 'rows' / 'd.jsonl'}}}]"
    with pytest.raises(DataError, match="image_root"):  # relative to the file's folder
        read_sources(demo_config("data.train_files=[]", src, "data.heldout_file=null"))
    cfg = demo_config("data.train_files=[]", src, "data.heldout_file=null",
                      f"data.image_root={DEMO_DATA.parent}")
    per_source, _ = read_sources(cfg)
    assert [len(v) for v in per_source.values()] == [3]
    assert all(Path(s.images[0]).parent == DEMO_DATA.parent / "images"
               for s in per_source["d"]), per_source["d"][0].images
    own = demo_config("data.train_files=[]", "data.heldout_file=null", "data.image_root=/x",
                      f"data.sources=[{{path: {tmp_path / 'rows' / 'd.jsonl'}, "
                      f"image_root: {tmp_path}}}, "
                      "{name: h, hub: org/set}]").data.all_sources()
    assert [s.image_root for s in own] == [str(tmp_path), None]
