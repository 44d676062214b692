"""The training loop end to end on tiny models: normalisation, checkpoints, reload, learning."""

import json
import math

import pytest
import torch
from accelerate import Accelerator
from conftest import DEMO_DATA, demo_config, tiny_demo_rows, write_tiny_data

from vldft.adapters import load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig
from vldft.data import DataError, load_jsonl
from vldft.step import ObjectiveModule, accumulate_gradients, build_optimizer
from vldft.train import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 2 threads ran ~10x slower


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
    samples = load_jsonl(DEMO_DATA)[:3]
    text_only = load_jsonl(DEMO_DATA)[3]
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
    batch = coll([coll.encode(load_jsonl(DEMO_DATA)[0])])
    batch["labels"][:] = -100
    module = ObjectiveModule(adapter)
    loss_sum, _, _ = module(dict(batch), "dft")
    assert loss_sum.requires_grad and float(loss_sum.detach()) == 0.0
    loss_sum.backward()
    head = adapter.output_layer().weight
    assert head.grad is not None and float(head.grad.abs().sum()) == 0.0


def test_freeze_and_per_part_learning_rates():
    cfg = demo_config("model.freeze=[vision]", "train.projector_lr=5e-4", "train.lr=1e-3",
                      "train.weight_decay=0.1")
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


@pytest.mark.parametrize(("impl", "sharded", "fused"), [
    ("auto", False, True), ("auto", True, False), ("fused", True, True),
    ("foreach", False, False)])
def test_optimizer_impl_choice(impl, sharded, fused):
    cfg = demo_config(f"train.optimizer_impl={impl}")
    opt = build_optimizer(load_adapter(cfg.model), cfg, sharded=sharded)
    assert bool(opt.defaults["fused"]) is fused
    assert bool(opt.defaults["foreach"]) is not fused


def test_fused_and_foreach_adamw_take_the_same_steps():
    """The fused kernel is a speed choice only: with per-part learning rates and weight decay,
    three steps on the same gradients land on the same weights as the foreach kernels."""
    over = ["train.lr=1e-2", "train.vision_lr=3e-3", "train.weight_decay=0.1"]
    results = []
    for impl in ("fused", "foreach"):
        cfg = demo_config(*over, f"train.optimizer_impl={impl}")
        torch.manual_seed(0)
        adapter = load_adapter(cfg.model)
        opt = build_optimizer(adapter, cfg)
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            opt.zero_grad()
        results.append(torch.cat([p.detach().flatten() for p in params]))
    start = torch.cat([p.detach().flatten() for p in load_adapter(cfg.model).model.parameters()
                       if p.requires_grad])
    assert not torch.allclose(results[0], start)  # the steps moved the weights
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_main_trains_saves_and_reloads_with_plain_transformers(tmp_path, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    data = write_tiny_data(tmp_path / "train.jsonl", 48)
    out = tmp_path / "run"
    overrides = [f"model.family={family}", f"data.train_files=[{data}]",
                 f"data.heldout_file={data}", f"train.output_dir={out}", "train.max_steps=24",
                 "train.micro_batch_size=8", "train.grad_accum=2", "train.log_every=4",
                 "train.save_every=12", "train.eval_max_samples=8", "train.eval_max_new_tokens=8",
                 "loss.sft_warmup_steps=12", "train.lr=2e-3"]
    if family == "llava":
        overrides += ["model.min_pixels=null", "model.max_pixels=null"]
    cfg = demo_config(*overrides)
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


@pytest.mark.parametrize("loss", [
    ["loss.name=sft"], ["loss.name=dft"], ["loss.name=dft", "loss.min_weight=0.1"],
    ["loss.name=dft", "loss.alpha=0.5"], ["loss.name=asft", "loss.kl_lambda=0.05"],
    ["loss.name=chord"], ["loss.name=eaft"], ["loss.name=eaft", "loss.eaft_topk=0"],
    ["loss.name=dft", "loss.sft_mix=0.3"], ["loss.name=dft", "loss.implementation=naive"],
], ids=lambda x: "+".join(v.split(".", 1)[1] for v in x))
def test_every_objective_runs_from_the_demo_config(tmp_path, loss):
    data = write_tiny_data(tmp_path / "train.jsonl", 16)
    out = tmp_path / "run"
    cfg = demo_config(
        f"data.train_files=[{data}]", "data.heldout_file=null", f"train.output_dir={out}",
        "train.max_steps=4", "train.micro_batch_size=4", "train.log_every=2",
        "loss.sft_warmup_steps=0", "loss.chunk_size=64", *loss)
    main(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    name = cfg.loss.name
    for r in lines:
        assert r["objective"] == name
        for key in ("loss", "ce", "mean_p", "low_p_frac", "entropy", "mean_weight"):
            assert math.isfinite(r[key]), key
        assert 0 <= r["low_p_frac"] <= 1
        assert ("kl" in r) == (name == "asft")
        if name == "sft":
            assert r["loss"] == pytest.approx(r["ce"], rel=1e-6)
        else:  # every other weight is <= 1 per token
            assert r["loss"] <= r["ce"] * (1 + 1e-6) + cfg.loss.kl_lambda * r.get("kl", 0.0)
    hists = [json.loads(x) for x in (out / "histograms.jsonl").read_text().splitlines()]
    assert hists and all(len(h["counts"]) == 20 for h in hists)
    assert sum(hists[0]["counts"]) > 0
    assert (out / "training_curves.png").is_file() and (out / "prob_histograms.png").is_file()


def test_asft_reference_is_frozen_and_kl_starts_at_zero(tmp_path):
    """At step 1 the reference equals the model, so the KL term is exactly 0."""
    adapter = _tiny()
    from vldft.objectives import ObjectiveSpec
    from vldft.step import build_reference

    ref = build_reference(adapter)
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(p.data_ptr() != q.data_ptr()
               for p, q in zip(ref.parameters(), adapter.model.parameters(), strict=True))
    module = ObjectiveModule(adapter, ref)
    module.train()
    assert not ref.training
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(s) for s in load_jsonl(DEMO_DATA)[:2]])
    _, stats, _ = module(dict(batch), ObjectiveSpec(name="asft"))
    assert float(stats["kl_sum"]) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_text_only_micro_batch_gives_vision_tower_zero_gradients(family):
    """A micro-batch without images still runs the vision tower (0 * output): every vision and
    projector parameter that an image batch trains gets a gradient of exactly zero, not None
    (no DDP / FSDP hang). (LLaVA's last CLIP layer is unused by design: feature layer -2.)"""
    adapter = _tiny(family)
    from vldft.data import Sample

    coll = Collator(adapter, max_length=512)
    module = ObjectiveModule(adapter)
    image_batch = coll([coll.encode(load_jsonl(DEMO_DATA)[0])])
    module(dict(image_batch), "dft")[0].backward()
    parts = adapter.parts()
    used = {n for n, p in parts["vision"] + parts["projector"] if p.grad is not None}
    assert len(used) > 10
    adapter.model.zero_grad(set_to_none=True)

    text_only = Sample("t", [{"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "4"}]}])
    batch = coll([coll.encode(text_only)])
    assert "pixel_values" not in batch
    loss_sum, _, _ = module(dict(batch), "dft")
    loss_sum.backward()
    for name, p in parts["vision"] + parts["projector"]:
        if name in used:
            assert p.grad is not None, name
            assert float(p.grad.abs().sum()) == 0.0, name
    assert any(float(p.grad.abs().sum()) > 0 for _, p in parts["language"] if p.grad is not None)


def test_llava_unused_vision_parameters_are_frozen():
    """LLaVA reads vision_feature_layer -2: the last CLIP layer and post_layernorm never get a
    gradient, which DDP rejects; they are frozen, and every other vision parameter stays
    trainable and receives a gradient from an image batch."""
    adapter = _tiny("llava")
    unused = adapter.freeze_unused()
    assert unused and all(n.startswith("model.vision_tower.") for n in unused)
    assert any("post_layernorm" in n for n in unused)
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(load_jsonl(DEMO_DATA)[0])])
    loss_sum, _, _ = ObjectiveModule(adapter)(dict(batch), "dft")
    loss_sum.backward()
    for name, p in adapter.model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert _tiny("qwen2_5_vl").freeze_unused() == []


def test_asft_reference_is_the_model_at_the_switch(tmp_path):
    """With an SFT warm-up, ASFT anchors to the model it starts from: KL is 0 at the first
    ASFT step and positive after one update."""
    data = write_tiny_data(tmp_path / "train.jsonl", 16)
    out = tmp_path / "run"
    cfg = demo_config(
        f"data.train_files=[{data}]", "data.heldout_file=null", f"train.output_dir={out}",
        "train.max_steps=4", "train.micro_batch_size=4", "train.log_every=1",
        "loss.name=asft", "loss.sft_warmup_steps=2", "train.lr=1e-2")
    main(cfg)
    lines = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text()
                                       .splitlines()) if "loss" in r}
    assert lines[2]["objective"] == "sft" and "kl" not in lines[2]
    assert lines[3]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert lines[4]["kl"] > 1e-6


def test_corrupt_image_is_a_counted_skip_with_on_error_skip(tmp_path):
    rows = tiny_demo_rows(8)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    rows[3]["images"] = [str(bad)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    overrides = [f"data.train_files=[{data}]", "data.heldout_file=null",
                 f"train.output_dir={out}", "train.max_steps=2", "train.micro_batch_size=4",
                 "train.log_every=1", "loss.sft_warmup_steps=0"]
    with pytest.raises(DataError, match=r"train\.jsonl:4 \(id geo-train-000003\): image "
                                        r".*corrupt\.png cannot be opened"):
        main(demo_config(*overrides))
    summary = main(demo_config(*overrides, "data.on_error=skip"))
    assert summary["skipped"] == {} and summary["read_skips"] == {"train/image_corrupt": 1}
    saved = json.loads((out / "data_summary.json").read_text())
    assert saved["encode_skips"] == {} and saved["skipped"][0]["image"] == str(bad)


def test_gradient_checkpointing_covers_both_towers_and_keeps_the_gradients():
    adapter = _tiny()
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(s) for s in load_jsonl(DEMO_DATA)[:2]])
    module = ObjectiveModule(adapter).train()
    accumulate_gradients(module, [batch], "dft", Accelerator(cpu=True))
    plain = _grads(module)
    module.zero_grad(set_to_none=True)
    from vldft.levers import enable_checkpointing

    enable_checkpointing(adapter.model, True, [])  # model.gradient_checkpointing=true's path
    assert adapter.model.model.visual.gradient_checkpointing
    assert adapter.model.model.language_model.gradient_checkpointing
    accumulate_gradients(module, [batch], "dft", Accelerator(cpu=True))
    recomputed = _grads(module)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], rtol=1e-5, atol=1e-8), name


def test_the_logged_lr_is_the_rate_of_that_steps_update(tmp_path):
    """Linear decay over 4 steps, no warm-up: the updates use lr x 1, 3/4, 1/2, 1/4, and
    metrics.jsonl says so (it logged the next step's rate: 3/4 ... 0 at the last step)."""
    data = write_tiny_data(tmp_path / "d.jsonl", 16)
    out = tmp_path / "run"
    main(demo_config(f"data.train_files=[{data}]", "data.heldout_file=null",
                     f"train.output_dir={out}", "train.max_steps=4", "train.log_every=1",
                     "train.scheduler=linear", "train.warmup_ratio=0", "train.lr=1e-3",
                     "train.eval_every=0", "train.eval_max_samples=0", "train.micro_batch_size=4",
                     "loss.sft_warmup_steps=0"))
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "loss" in r]
    assert lrs == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4]), lrs


def test_a_loss_key_the_objective_does_not_use_is_warned_about():
    """configs/demo.yaml's loss.min_weight kept under loss.name=chord was ignored silently."""
    from vldft.config.sections import LossConfig
    from vldft.train import unused_loss_keys

    assert unused_loss_keys(LossConfig(name="dft", min_weight=0.1)) == []
    (line,) = unused_loss_keys(LossConfig(name="chord", min_weight=0.1))
    assert line == ("loss.min_weight=0.1 applies to loss.name dft / asft; loss.name=chord does "
                    "not use it (loss.min_weight=0.0, its default, silences this)")
    assert len(unused_loss_keys(LossConfig(name="sft", min_weight=0.1, kl_lambda=0.1))) == 2
    assert len(unused_loss_keys(LossConfig(name="sft", sft_mix=0.5))) == 1
    assert unused_loss_keys(LossConfig(name="chord", sft_mix=0.5)) == []
    assert unused_loss_keys(LossConfig(name="asft", kl_lambda=0.1, min_weight=0.1)) == []


def test_a_grad_accum_the_global_batch_overrules_is_said(tmp_path, capsys):
    """global_batch_size 8 over micro-batches of 4 on one process is 2 micro-batches a step;
    the config's grad_accum 3 was dropped without a word."""
    data = write_tiny_data(tmp_path / "d.jsonl", 16)
    main(demo_config(f"data.train_files=[{data}]", "data.heldout_file=null",
                     f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
                     "train.global_batch_size=8", "train.micro_batch_size=4",
                     "train.grad_accum=3", "train.eval_every=0", "train.eval_max_samples=0",
                     "loss.sft_warmup_steps=0"))
    said = capsys.readouterr().out
    assert ("train.global_batch_size=8 sets 2 micro-batches per step on 1 process(es) "
            "(micro_batch_size 4); the config's train.grad_accum=3 is not used") in said, said
