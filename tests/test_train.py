"""The training loop end to end on tiny models: normalisation, checkpoints, reload, learning."""

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from vldft.adapters import load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig, load_config
from vldft.data import load_jsonl
from vldft.train import ObjectiveModule, accumulate_gradients, build_optimizer, main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data/geo_demo/train.jsonl"


def _tiny(family="qwen2_5_vl", seed=0):
    torch.manual_seed(seed)
    return load_adapter(ModelConfig(family=family, tiny=True, min_pixels=None, max_pixels=None))


def _grads(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["sft", "dft"])
def test_batch4_accum1_equals_batch1_accum4(objective):
    """Global token normalisation: the same 4 samples (different lengths, one text-only) give
    the same gradients as one micro-batch of 4 or four micro-batches of 1 (1e-6 relative)."""
    adapter = _tiny()
    adapter.model.to(torch.float64)
    samples = load_jsonl(DEMO)[:3]
    text_only = load_jsonl(ROOT / "data/geo_demo/train.jsonl")[3]
    text_only.messages[0]["content"] = [p for p in text_only.messages[0]["content"]
                                        if p["type"] == "text"]
    text_only.images = []
    samples.append(text_only)
    coll = Collator(adapter, max_length=512)
    enc = [coll.encode(s) for s in samples]
    assert len({len(e.input_ids) for e in enc}) > 1
    module = ObjectiveModule(adapter)
    acc = Accelerator(cpu=True)

    accumulate_gradients(module, [coll(enc)], objective, acc)
    g4x1 = _grads(module)
    module.zero_grad(set_to_none=True)
    totals = accumulate_gradients(module, [coll([e]) for e in enc], objective, acc)
    g1x4 = _grads(module)
    assert totals["n_tokens"] == sum(int((e.labels[1:] != -100).sum()) for e in enc)
    assert g4x1.keys() == g1x4.keys() and len(g4x1) > 10
    for name in g4x1:
        a, b = g4x1[name], g1x4[name]
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-12 * max(1.0, float(a.abs().max()))), name
    # and the naive mean of per-micro-batch means would NOT be equal:
    n_each = [int((e.labels[1:] != -100).sum()) for e in enc]
    assert len(set(n_each)) > 1


def test_fully_masked_micro_batch_contributes_zero_with_live_graph():
    adapter = _tiny()
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(load_jsonl(DEMO)[0])])
    batch["labels"][:] = -100
    module = ObjectiveModule(adapter)
    loss_sum, _ = module(dict(batch), "dft")
    assert loss_sum.requires_grad and float(loss_sum.detach()) == 0.0
    loss_sum.backward()
    head = adapter.output_layer().weight
    assert head.grad is not None and float(head.grad.abs().sum()) == 0.0


def test_freeze_and_per_part_learning_rates():
    cfg = load_config(ROOT / "configs/demo.yaml",
                      ["model.freeze=[vision]", "train.projector_lr=5e-4", "train.lr=1e-3",
                       "train.weight_decay=0.1"])
    adapter = load_adapter(cfg.model)
    adapter.freeze(cfg.model.freeze)
    parts = adapter.parts()
    assert all(not p.requires_grad for _, p in parts["vision"])
    assert all(p.requires_grad for _, p in parts["projector"] + parts["language"])
    assert all(n.startswith("model.visual.merger.") for n, _ in parts["projector"])
    opt = build_optimizer(adapter, cfg)
    by_name = {}
    for g in opt.param_groups:
        by_name.setdefault(g["name"], set()).add(g["lr"])
        if g["weight_decay"]:
            assert all(p.dim() >= 2 for p in g["params"])
    assert by_name == {"projector": {5e-4}, "language": {1e-3}}
    trainable = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trainable == {id(p) for _, p in adapter.model.named_parameters() if p.requires_grad}


def _subset(tmp_path, n):
    src = DEMO.read_text().splitlines()[:n]
    rows = [json.loads(r) for r in src]
    for r in rows:
        r["images"] = [str(DEMO.parent / p) for p in r["images"]]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_main_trains_saves_and_reloads_with_plain_transformers(tmp_path, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    data = _subset(tmp_path, 48)
    out = tmp_path / "run"
    overrides = [f"model.family={family}", f"data.train_files=[{data}]",
                 f"data.heldout_file={data}", f"train.output_dir={out}", "train.max_steps=24",
                 "train.micro_batch_size=8", "train.grad_accum=2", "train.log_every=4",
                 "train.save_every=12", "train.eval_max_samples=8", "train.eval_max_new_tokens=8",
                 "loss.sft_warmup_steps=12", "train.lr=2e-3"]
    if family == "llava":
        overrides += ["model.min_pixels=null", "model.max_pixels=null"]
    cfg = load_config(ROOT / "configs/demo.yaml", overrides)
    summary = main(cfg)

    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in records if "loss" in r]
    evals = [r for r in records if "heldout" in r]
    assert [r["step"] for r in lines] == [4, 8, 12, 16, 20, 24]
    assert [r["step"] for r in evals] == [12, 24], "held-out at the SFT->DFT switch and the end"
    assert [h["step"] for h in summary["heldout_history"]] == [12, 24]
    assert {r["objective"] for r in lines} == {"sft", "dft"}
    for r in lines:
        assert {"loss", "ce", "mean_p", "lr", "tokens_per_s", "entropy"} <= r.keys()
        assert math.isfinite(r["loss"]) and 0 < r["mean_p"] < 1
    assert lines[-1]["ce"] < lines[0]["ce"], "plain CE must fall on the training data"
    assert (out / "checkpoint-12" / "config.json").is_file()
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()
    assert summary["heldout"]["n"] == 8 and summary["heldout"]["accuracy"] is not None

    final = out / "final"
    model = AutoModelForImageTextToText.from_pretrained(final)
    processor = AutoProcessor.from_pretrained(final)
    sample = load_jsonl(data)[0]
    text = processor.apply_chat_template(sample.messages[:1], tokenize=False,
                                         add_generation_prompt=True)
    from PIL import Image

    with Image.open(sample.images[0]) as im:
        inputs = processor(text=[text], images=[im.convert("RGB")], return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > inputs["input_ids"].shape[1]
    # the reloaded weights are the trained ones
    trained = load_adapter(cfg.model)  # fresh random model of the same shape
    name, p = next(iter(model.state_dict().items()))
    assert not torch.equal(p, trained.model.state_dict()[name]) or "rotary" in name
