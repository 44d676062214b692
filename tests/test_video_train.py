"""A mixed image + video + text-only JSONL trains through the kit's own loop (``vldft.train.main``)
on the tiny Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision, packed and unpacked: every sample is
encoded (none skipped), the loss is finite and falls, and the summary counts what happened."""

import json
import math

import pytest
from conftest import demo_config, tiny_demo_rows
from PIL import Image

from vldft.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(folder, i: int, n: int = 4):
    folder.mkdir(parents=True)
    for t in range(n):
        im = Image.new("RGB", (56, 56), "white")
        x = 6 + 8 * t if i % 2 else 40 - 8 * t
        im.paste((0, 0, 0), (x, 22, x + 10, 32))
        im.save(folder / f"{t:02d}.png")
    return folder


@pytest.fixture(scope="module")
def mixed_jsonl(tmp_path_factory):
    """12 video rows (frame folders), 12 image rows (the demo's), 4 text-only rows, shuffled."""
    tmp = tmp_path_factory.mktemp("mixed")
    rows = []
    for i in range(12):
        clip = _clip(tmp / f"clip{i}", i)
        rows.append({"id": f"v{i}", "messages": [
            {"role": "user", "content": [{"type": "video"},
                                         {"type": "text", "text": "Which way does it move?"}]},
            {"role": "assistant", "content": "right" if i % 2 else "left"}],
            "videos": [str(clip)], "answer": "right" if i % 2 else "left"})
    rows += tiny_demo_rows(12)
    rows += [{"id": f"t{i}", "messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                          {"role": "assistant", "content": str(i + 1)}]}
             for i in range(4)]
    order = [rows[i] for i in sorted(range(len(rows)), key=lambda i: (i * 7) % len(rows))]
    path = tmp / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in order))
    return path


CASES = [("qwen2_5_vl", False), ("qwen2_5_vl", True), ("qwen3_vl", False), ("qwen3_vl", True),
         ("llava_onevision", False), ("llava_onevision", True)]


@pytest.mark.parametrize("family,packing", CASES, ids=[f"{f}-{'packed' if p else 'padded'}"
                                                       for f, p in CASES])
def test_mixed_image_video_text_trains(family, packing, mixed_jsonl, tmp_path):
    out = tmp_path / "run"
    overrides = [f"model.family={family}", "model.min_pixels=null", "model.max_pixels=null",
                 f"data.train_files=[{mixed_jsonl}]", "data.heldout_file=null",
                 "data.video.max_frames=4", "data.video.min_pixels=3136",
                 "data.video.max_pixels=3136", f"train.output_dir={out}", "train.max_steps=6",
                 "train.micro_batch_size=4", "train.log_every=1", "loss.name=sft",
                 "loss.sft_warmup_steps=0", "train.lr=3e-3", "train.eval_max_samples=0",
                 "train.save_every=0"]
    if family.startswith("qwen"):
        overrides[1:3] = ["model.min_pixels=12544", "model.max_pixels=12544"]
    if packing:
        overrides += ["data.packing=true", "data.pack_tokens=1024"]
    train_main(demo_config(*overrides))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == {} and summary["read_skips"] == {}
    assert summary["truncated"] == 0
    losses = [json.loads(x)["ce"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if '"ce"' in x and '"step"' in x]
    assert losses and all(math.isfinite(v) for v in losses)
    assert min(losses[-2:]) < losses[0]
    mix = json.loads((out / "data_summary.json").read_text())
    assert "mixed" in json.dumps(mix)
    (row,) = mix["sources"]  # video rows are not counted as image rows
    assert (row["used"], row["images"], row["videos"], row["clips"], row["text_only"]) == (
        28, 12, 12, 12, 4), row
