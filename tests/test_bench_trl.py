"""Pure parts of bench/train_vs_trl.py (summaries, slopes) and of bench/qwen.py (padding, the 3B
config); the TRL runs themselves are exercised by ``python bench/train_vs_trl.py --dry-run``
(about a minute, not in CI)."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import qwen  # noqa: E402
import train_vs_trl as tvt  # noqa: E402


def test_pad_batch_pads_every_per_token_tensor() -> None:
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[-100, 6, 7]]),
             "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "mm_token_type_ids": torch.tensor([[0, 1, 0]]),
             "image_grid_thw": torch.tensor([[1, 2, 2]]), "pixel_values": torch.zeros(4, 6)}
    out = qwen.pad_batch(batch, 5, pad_id=9)
    assert out["input_ids"].tolist() == [[5, 6, 7, 9, 9]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]
    assert out["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0]]
    assert out["image_grid_thw"] is batch["image_grid_thw"]
    assert out["pixel_values"] is batch["pixel_values"]
    with pytest.raises(ValueError, match="4 tokens > 3"):
        qwen.pad_batch({"input_ids": torch.zeros(1, 4, dtype=torch.long)}, 3, 0)


def test_qwen25vl_3b_config_matches_the_released_architecture() -> None:
    tc = qwen.qwen25vl_3b_config().text_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.intermediate_size, tc.vocab_size) == (
        2048, 36, 11008, 151936)
    assert tc.rope_parameters["mrope_section"] == [16, 24, 24]


def _runs():
    runs = []
    for seq, (v, t) in {512: (1.0, 3.0), 1024: (2.0, 6.0), 2048: (4.0, 12.0)}.items():
        for fw, step, rss in (("vldft", v, 1.0 + seq / 1000), ("trl", t, 2.0 + seq / 500)):
            runs.append({"seq_len": seq, "framework": fw, "step_times": [step, step],
                         "cpu_times": [2 * step], "losses": [0.5], "optimizer": "AdamW",
                         "peak_rss_gib": rss, "train_rss_gib": rss - 1})
    return runs


def test_summaries_ratios_and_slopes() -> None:
    tokens = {512: 500, 1024: 1000, 2048: 2000}
    rows = tvt.summarise(_runs(), tokens)
    assert [(r["seq_len"], r["framework"]) for r in rows][:2] == [(512, "vldft"), (512, "trl")]
    q = {r["seq_len"]: r for r in tvt.ratios(rows)}
    assert q[1024]["tokens_per_s_ratio"] == pytest.approx(3.0, rel=1e-3)  # rounded rates
    assert q[1024]["cpu_s_ratio"] == pytest.approx(3.0)
    assert q[2048]["peak_rss_ratio"] == pytest.approx(3.048 / 6.096, abs=1e-3)
    fits = {s["framework"]: s for s in tvt.slopes(rows, tokens)}
    assert fits["vldft"]["step_s"]["per_1k_tokens"] == pytest.approx(2.0)
    assert fits["trl"]["step_s"]["per_1k_tokens"] == pytest.approx(6.0)
    assert fits["trl"]["step_s"]["r2"] == pytest.approx(1.0)
