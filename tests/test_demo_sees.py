"""The tiny demo model reads the picture: trained through the kit's own loop (``train.main``)
on a question whose answer is in the image only, it is far above chance on held-out images,
and back at chance when the images are blank or belong to other samples; lmms-eval's evaluator
scores the saved checkpoint as the run did.

What made the difference (measured, docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu): the
demo's shapes used to be 3 px outlines. Nearly every 14 px patch was plain background, training
turned the image tokens into one constant vector (between-image spread 0.1% of their norm) and
the model answered the majority class for every image; filled shapes keep the spread at ~50%.
"""

from __future__ import annotations

import pytest
from conftest import DEMO_HELDOUT, demo_config

from vldft.data import load_jsonl
from vldft.data.synth import SHAPES, write_split
from vldft.heldout import control_samples
from vldft.heldout import main as heldout_cli

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 500
CHANCE = 1 / len(SHAPES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SFT from random init on 640 filled-shape diagrams (64 px -> 4 image tokens). Measured
    on a busy 2-core CPU: 58% held-out after 150 steps (192 rows), 62-73% after 300."""
    from vldft.train import main

    tmp = tmp_path_factory.mktemp("sees")
    # <data>/geo_demo/heldout.jsonl: what lmms-eval's vldft_geo_heldout reads with --data-dir
    data = tmp / "data" / "geo_demo"
    train = write_split(data, "train", 640, seed=0, size=64, kinds=("shape",))
    heldout = write_split(data, "heldout", 60, seed=1, size=64, kinds=("shape",))
    pixels = 56 * 56
    summary = main(demo_config(
        f"data.train_files=[{train}]", f"data.heldout_file={heldout}",
        f"train.output_dir={tmp / 'run'}", "loss.name=sft", "loss.sft_warmup_steps=0",
        f"train.max_steps={STEPS}", "train.lr=4e-3", "train.eval_max_samples=60",
        f"model.min_pixels={pixels}", f"model.max_pixels={pixels}", "train.log_every=50"))
    return summary, heldout


def test_learns_an_image_only_question_far_above_chance(trained):
    summary, _ = trained
    assert summary["heldout"]["accuracy"] >= 0.6, summary["heldout"]  # chance: 1/3


def test_without_the_right_image_it_falls_to_chance(trained, capsys):
    """`python -m vldft.heldout` (what `make demo` runs) on the saved checkpoint, reloaded with
    from_pretrained: the real images score what the run reported; blank or shuffled ones are
    at chance (60 rows, 3 classes: ~33%; a blank image gets one fixed answer)."""
    summary, heldout = trained
    results = heldout_cli([summary["checkpoint"], str(heldout), "--controls", "blank,shuffled"])
    assert results["images"]["accuracy"] == pytest.approx(summary["heldout"]["accuracy"])
    for control in ("blank", "shuffled"):
        acc = results[control]["accuracy"]
        assert acc <= CHANCE + 0.15 and acc <= results["images"]["accuracy"] - 0.2, (control, acc)
    printed = capsys.readouterr().out
    assert "control, blank images: accuracy" in printed and "shuffled images" in printed


def test_lmms_eval_scores_the_saved_checkpoint_as_the_run_did(trained, tmp_path, hf_offline):
    """Learning is visible through lmms-eval's evaluator too (vldft's model class, the
    ``vldft_geo_heldout`` task on the same 60 held-out rows): its generation, answer extraction
    and scoring give the run's own held-out accuracy, far above chance, and every logged sample
    rescores the same with the shared scorer."""
    pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")
    import json

    from vldft.eval.run import evaluate
    from vldft.scoring import score

    summary, heldout = trained
    out = tmp_path / "eval"
    evaluate(summary["checkpoint"], ["vldft_geo_heldout"], out,
             data_dir=heldout.parent.parent, batch_size=20, max_new_tokens=64)
    acc = json.loads((out / "results.json").read_text())["metrics"][0]["value"]
    logs = [json.loads(x) for x in (out / "samples_vldft_geo_heldout.jsonl").read_text()
            .splitlines()]
    assert len(logs) == 60
    for r in logs:
        extracted, ok = score(r["response"], r["target"])
        assert (r["extracted"], r["accuracy"]) == (extracted, float(ok)), r
    assert acc == pytest.approx(sum(r["accuracy"] for r in logs) / len(logs))
    print(f"lmms-eval held-out accuracy {acc:.3f}, the run's {summary['heldout']['accuracy']:.3f}")
    assert acc >= 0.6, logs[:5]  # chance: 1/3
    assert acc == pytest.approx(summary["heldout"]["accuracy"]), logs[:5]


def test_control_samples_replace_every_image():
    rows = load_jsonl(DEMO_HELDOUT)[:12]
    blank = control_samples(rows, "blank")
    shuffled = control_samples(rows, "shuffled", seed=3)
    for before, b, s in zip(rows, blank, shuffled, strict=True):
        assert b.messages == before.messages and b.answer == before.answer
        assert b.images[0].getextrema() == ((255, 255), (255, 255), (255, 255))
        assert s.images != before.images
    assert sorted(map(str, (s.images[0] for s in shuffled))) == sorted(
        map(str, (r.images[0] for r in rows)))
    with pytest.raises(ValueError, match="unknown image control"):
        control_samples(rows, "upside_down")


def test_shuffled_images_go_to_a_sample_with_as_many_images():
    """A mixed set: images move only between samples with the same number of images (a
    one-image sample got a text row's none, and a text row got an image it has no placeholder
    for); a text row and a sample with no partner keep theirs, and ``unshuffled`` counts the
    latter."""
    import dataclasses

    from vldft.heldout import unshuffled

    base = load_jsonl(DEMO_HELDOUT)[:5]
    rows = [*base[:3], dataclasses.replace(base[3], images=[]),  # text only
            dataclasses.replace(base[4], images=base[4].images * 2)]  # the only two-image one
    for seed in range(5):
        shuffled = control_samples(rows, "shuffled", seed=seed)
        assert [len(s.images) for s in shuffled] == [len(r.images) for r in rows]
        assert all(s.images != r.images for s, r in zip(shuffled[:3], rows[:3], strict=True))
        assert shuffled[3:] == rows[3:]
        assert sorted(str(s.images[0]) for s in shuffled[:3]) == sorted(
            str(r.images[0]) for r in rows[:3])
    assert unshuffled(rows) == 1 and unshuffled(rows[:3]) == 0 and unshuffled(rows[:1]) == 1
