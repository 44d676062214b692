"""Video through ``vldft.eval``'s model class: lmms-eval's video parts become vldft video parts,
and clips are decoded with the ``data.video`` settings of the run the checkpoint came from
(model_args override them), as in training."""

import pytest
import yaml
from PIL import Image

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")

from lmms_eval.protocol import ChatMessages  # noqa: E402

from vldft.adapters import FAMILIES, build_tiny  # noqa: E402
from vldft.collate import Collator  # noqa: E402
from vldft.config import ConfigError, VideoSettings  # noqa: E402
from vldft.config import saved_video_settings as video_settings  # noqa: E402
from vldft.data import sample_from_row  # noqa: E402
from vldft.eval.model import VldftLMM, to_vldft_messages  # noqa: E402
from vldft.heldout import generate_messages  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_offline", "one_thread")


def _frames(folder, n=6):
    folder.mkdir(parents=True)
    for i in range(n):
        im = Image.new("RGB", (56, 56), "white")
        im.paste((0, 0, 0), (4 + 6 * i, 20, 14 + 6 * i, 30))
        im.save(folder / f"f{i}.png")
    return folder


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory):
    """A tiny Qwen2.5-VL saved as ``<run>/final`` beside the run's ``config.yaml``."""
    run = tmp_path_factory.mktemp("run")
    model, processor = build_tiny("qwen2_5_vl", 3136, 3136)
    model.save_pretrained(run / "final")
    processor.save_pretrained(run / "final")
    cfg = {"model": {"family": "qwen2_5_vl"},
           "data": {"video": {"fps": 4.0, "max_frames": 4, "min_pixels": 3136,
                              "max_pixels": 3136}}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run / "final"


def test_video_settings_come_from_the_run_and_model_args_win(run_ckpt, tmp_path):
    got = video_settings(str(run_ckpt))
    assert (got.fps, got.max_frames, got.min_pixels) == (4.0, 4, 3136)
    got = video_settings(str(run_ckpt), given={"max_frames": "2", "fps": "1"})
    assert (got.fps, got.max_frames, got.min_pixels) == (1.0, 2, 3136)
    assert video_settings(str(tmp_path)) == VideoSettings()  # no run: the defaults
    with pytest.raises(Exception, match="max_frames"):
        video_settings(str(run_ckpt), given={"max_frames": "1"})
    # a --config that includes another file reads the included data.video (it fell back to the
    # defaults), and a misspelt key is refused as training refuses it (it was ignored)
    (tmp_path / "base.yaml").write_text("data: {video: {max_frames: 6, fps: 3.0}}\n")
    (tmp_path / "child.yaml").write_text("include: base.yaml\ntrain: {lr: 1.0e-5}\n")
    got = video_settings(str(tmp_path), tmp_path / "child.yaml")
    assert (got.fps, got.max_frames) == (3.0, 6)
    (tmp_path / "typo.yaml").write_text("data: {video: {maxframes: 2}}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: data\.video\.maxframes: unknown key"):
        video_settings(str(tmp_path), tmp_path / "typo.yaml")


def test_lmms_eval_video_parts_are_decoded_as_training_decodes_them(run_ckpt, tmp_path):
    clip = _frames(tmp_path / "clip")
    lm = VldftLMM(pretrained=str(run_ckpt))
    with pytest.raises(ValueError, match="video_fps"):  # unknown model_args list the video keys
        VldftLMM(pretrained=str(run_ckpt), video_speed="2")
    chat = ChatMessages(messages=[{"role": "user", "content": [
        {"type": "video", "url": str(clip)}, {"type": "text", "text": "Which way?"}]}])
    messages, images, videos = to_vldft_messages(chat)
    assert messages[0]["content"][0] == {"type": "video"} and images == []
    assert len(videos) == 1 and len(videos[0].frames) == 6  # a folder: its frames, in order

    dec = lm.adapter.load_video(videos[0], lm.video)
    assert dec.frames.shape[0] == 4  # the run's data.video.max_frames, not the default 32
    # the same clip through the training collator with the run's settings: identical frames
    row = {"messages": [{"role": "user", "content": [{"type": "video"},
                                                     {"type": "text", "text": "Which way?"}]},
                        {"role": "assistant", "content": "right"}], "videos": [str(clip)]}
    sample = sample_from_row(row, "x", tmp_path)
    adapter = FAMILIES["qwen2_5_vl"](*build_tiny("qwen2_5_vl", 3136, 3136))
    train_dec = Collator(adapter, video=lm.video).load_video(sample.videos[0], sample.id)
    assert (train_dec.frames == dec.frames).all()

    texts = generate_messages(lm.adapter, [(messages, images, [dec])], 4)
    assert len(texts) == 1 and isinstance(texts[0], str)
