"""The benchmark harness (bench/common.py) and the synthetic Qwen2.5-VL samples (bench/qwen.py)
that every bench script builds on: tables, MFU, timing, out-of-memory, child processes."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import qwen  # noqa: E402


def test_markdown_table_pads_short_rows_and_prints_values() -> None:
    table = common.markdown_table(["a", "b", "c"], [(1, 2.5, "x"), ("failed", "oom")], list)
    assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | 2.5 | x |",
                                  "| failed | oom |  |"]


def test_mfu_rounds_and_needs_a_peak() -> None:
    assert common.mfu(3e12, 2.0, 1.0) == 1.5
    assert common.mfu(1e12, 3.0, 1.0) == 0.3333
    assert common.mfu(1e12, 3.0, 1.0, digits=None) == pytest.approx(1 / 3, rel=1e-12)
    assert common.mfu(1e12, 3.0, None) is None and common.mfu(1e12, 0.0, 1.0) is None
    assert common.fmt_mfu({"mfu": 0.3161}) == "31.6%" and common.fmt_mfu({"mfu": None}) == "-"


def test_stopwatch_oom_guard_and_save_result(tmp_path) -> None:
    with common.Stopwatch("cpu") as clock:
        sum(range(10_000))
    assert clock.wall > 0 and clock.cpu >= 0

    def boom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail")

    assert common.oom_guard(lambda: 7) == (7, None)
    assert common.oom_guard(boom, limit=20) == (None, "CUDA out of memory. ")
    result: dict = {"rows": []}
    common.save_result(tmp_path / "r.json", result, t0=0.0)
    assert json.loads((tmp_path / "r.json").read_text())["wall_s"] == result["wall_s"] > 0


def test_run_child_reads_the_marked_result_line(capsys) -> None:
    common.child_result({"x": 1})
    assert capsys.readouterr().out == common.RESULT_MARKER + '{"x": 1}\n'
    line = common.RESULT_MARKER + json.dumps({"ok": True})
    out = common.run_child([sys.executable, "-c", f"print('noise'); print({line!r})"])
    assert out["ok"] and out["wall_s"] >= 0
    with pytest.raises(common.ChildFailed, match="exit 3: bad"):
        common.run_child([sys.executable, "-c", "import sys; sys.stderr.write('bad'); "
                                                "sys.exit(3)"])


def test_random_sample_lays_out_the_image_block() -> None:
    config = qwen.qwen25vl_small_config()
    g = torch.Generator().manual_seed(0)
    s = qwen.random_sample(config, 30, 10, (4, 6), g, at=3, id_hi=100)
    ids, mm = s["input_ids"], s["mm_token_type_ids"][0]
    assert ids.shape == (40,) and mm.shape == (40,)
    assert ids[3] == config.vision_start_token_id and ids[10] == config.vision_end_token_id
    assert (ids[4:10] == config.image_token_id).all() and mm.tolist() == [0] * 4 + [1] * 6 + [
        0] * 30
    assert (s["labels"][:30] == qwen.IGNORE).all() and torch.equal(s["labels"][30:], ids[30:])
    assert s["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    assert s["image_grid_thw"].tolist() == [[1, 4, 6]]
    text = qwen.random_sample(config, 5, 5, None, torch.Generator().manual_seed(0), at=3,
                              id_hi=100)
    assert set(text) == {"input_ids", "labels", "mm_token_type_ids"}
    same_draw = torch.randint(0, 100, (10,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(text["input_ids"], same_draw)  # the ids first, from the same generator


@pytest.mark.parametrize("freeze, factor", [((), 6.0), (("vision",), 4.0),
                                            (("projector",), 4.0),
                                            (("vision", "projector"), 2.0)])
def test_the_projectors_flops_follow_what_is_trained(freeze, factor):
    """The merger's FLOP factor: 6 when it and the vision tower train (forward, input and weight
    gradients), 4 when only one does (no weight gradients, or no input gradient: nothing
    trained before it, the shipped recipe's freeze: [vision]), 2 when neither does."""
    from vldft_step import micro_stats

    from vldft.adapters import load_adapter
    from vldft.config import ModelConfig

    model = load_adapter(ModelConfig(tiny=True)).model
    batch = {"image_grid_thw": torch.tensor([[1, 4, 4]]), "input_ids": torch.zeros(1, 40),
             "labels": torch.full((1, 40), -100)}
    terms = common.qwen_flop_terms(model, [40], 16, 0, 1.0, 1.0)
    rest = terms["total"] - terms["vision_linear"] - terms["projector_linear"]
    vision = 2.0 if "vision" in freeze else 6.0
    want = rest + vision * terms["vision_linear"] + factor * terms["projector_linear"]
    assert micro_stats(batch, [40], model, list(freeze))["flops"] == pytest.approx(want)


@pytest.mark.parametrize("freeze, lora, want", [
    ((), None, dict(vision=6, projector=6, text=6, lm_head=6)),
    (("vision",), None, dict(vision=2, projector=4, text=6, lm_head=6)),
    (("vision", "language"), None, dict(vision=2, projector=4, text=4, lm_head=4)),
    (("vision", "projector"), None, dict(vision=2, projector=2, text=6, lm_head=6)),
    ((), ["language"], dict(vision=2, projector=2, text=4, lm_head=4)),
    (("vision",), ["language", "projector"], dict(vision=2, projector=4, text=4, lm_head=4)),
    ((), ["vision", "language"], dict(vision=4, projector=4, text=4, lm_head=4)),
])
def test_flop_factors_follow_what_is_trained(freeze, lora, want):
    """f = 6 for a trained part that needs input gradients, 4 for a trained part with nothing
    trained before it (the merger under freeze: [vision]) or a frozen / LoRA part that passes
    gradients on (forward + input gradients: a frozen language model after a trained merger,
    LoRA's base weights), 2 for a frozen part with nothing trained before it."""
    from vldft_step import flop_factors

    assert flop_factors(list(freeze), lora) == {k: float(v) for k, v in want.items()}


def test_a_lora_language_model_counts_its_text_linear_4x():
    """micro_stats with LoRA on the language model: text linear and lm_head terms at 4 instead
    of 6, a frozen vision tower and merger forward only; attention unchanged."""
    from vldft_step import micro_stats

    from vldft.adapters import load_adapter
    from vldft.config import ModelConfig

    model = load_adapter(ModelConfig(tiny=True)).model
    labels = torch.full((1, 40), -100)
    labels[0, 30:] = 1
    batch = {"image_grid_thw": torch.tensor([[1, 4, 4]]), "input_ids": torch.zeros(1, 40),
             "labels": labels}
    t = common.qwen_flop_terms(model, [40], 16, 10, 1.0, 1.0, 1.0, 1.0)  # 10 targets
    want = (t["text_attention"] + 2 * t["vision_linear"] + 2 * t["projector_linear"]
            + 4 * t["text_linear"] + 4 * t["lm_head_targets"])
    assert micro_stats(batch, [40], model, [], ["language"])["flops"] == pytest.approx(want)
