"""The tiny model uses time: trained through the kit's own loop (``train.main``, with
``configs/video_demo.yaml``) on clips whose answer is in the order of their frames
(``vldft.data.synth_video``), it is far above chance on held-out clips, far above what any one
frame allows, and at chance when the frames are frozen (the middle one for the whole clip) or
shuffled (``python -m vldft.heldout --controls frozen_frame,shuffled_frames``).
"""

from __future__ import annotations

import pytest
from conftest import ROOT

from vldft.data.synth_video import write_split
from vldft.heldout import main as heldout_cli

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 300
CHANCE = 0.5  # two answers, balanced
ONE_FRAME_BEST = 0.64  # the best guess from any single frame (test_synth_video.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SFT from random init on 640 clips of 4 frames (56 px: 8 video tokens), 80 held out.
    Measured on a 2-core CPU (~65 s of training): data + training seeds 0-3 all reach 100%
    held-out at 300 steps (loss leaves its plateau at step 150-225); at 200 steps seed 1 was
    still at 61%. Under the controls: frozen_frame 40-59%, shuffled_frames 46-50%."""
    from vldft.config import load_config
    from vldft.train import main

    tmp = tmp_path_factory.mktemp("time")
    train = write_split(tmp / "data", "train", 640, seed=0)
    heldout = write_split(tmp / "data", "heldout", 80, seed=1)
    cfg = load_config(ROOT / "configs/video_demo.yaml", [
        f"data.train_files=[{train}]", f"data.heldout_file={heldout}",
        f"train.output_dir={tmp / 'run'}", f"train.max_steps={STEPS}", "train.log_every=50"])
    return main(cfg), heldout


def test_learns_a_time_only_answer_far_above_chance(trained):
    summary, _ = trained
    accuracy = summary["heldout"]["accuracy"]
    assert accuracy >= 0.85 and accuracy >= ONE_FRAME_BEST + 0.2, summary["heldout"]


def test_frozen_or_shuffled_frames_fall_to_chance(trained, capsys):
    """``python -m vldft.heldout`` on the saved checkpoint (its run's config.yaml gives the
    frame settings): the real clips score what the run reported; one frozen frame or the frames
    out of order score chance (80 clips, 2 answers: ~50%)."""
    summary, heldout = trained
    results = heldout_cli([summary["checkpoint"], str(heldout), "--controls",
                           "frozen_frame,shuffled_frames"])
    assert results["videos"]["accuracy"] == pytest.approx(summary["heldout"]["accuracy"])
    for control in ("frozen_frame", "shuffled_frames"):
        acc = results[control]["accuracy"]
        assert acc <= CHANCE + 0.15 and acc <= results["videos"]["accuracy"] - 0.25, (control,
                                                                                     acc)
    printed = capsys.readouterr().out
    assert "real videos: accuracy" in printed and "control, shuffled_frames: accuracy" in printed
