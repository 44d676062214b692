"""Prior-strength probe: per-token numbers match the training objective's, the advice follows the
documented bands, and a vldft-saved checkpoint is probed by path."""

import json

import pytest
import torch
from conftest import DEMO_DATA, TINY_CONFIG, demo_config, write_tiny_data

from vldft.adapters import load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig
from vldft.data import load_jsonl
from vldft.objectives import compute_objective
from vldft.probe import KINDS, cli, probe, token_kinds, token_stats
from vldft.probe_report import format_report, recommend

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def test_token_stats_match_compute_objective():
    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(tiny=True, min_pixels=12544, max_pixels=12544))
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(s) for s in load_jsonl(DEMO_DATA)[:4]])
    st = token_stats(adapter, batch, chunk=7)  # several chunks
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    labels = inputs.pop("labels")
    with torch.no_grad():
        head = adapter.output_layer()
        out = compute_objective(adapter.hidden_states(inputs), head.weight, labels, "sft",
                                bias=head.bias)
    assert len(st["p"]) == out.n_tokens > 50
    assert torch.allclose(st["p"], out.probs, rtol=1e-5, atol=1e-7)
    assert float(st["entropy"].sum()) == pytest.approx(float(out.stats["entropy_sum"]), rel=1e-4)
    assert st["row"].tolist() == sorted(st["row"].tolist()) and set(st["row"].tolist()) == {
        0, 1, 2, 3}
    # one end-of-turn target per sample (the collator trains it after every answer)
    assert int((st["ids"] == adapter.eot_token_id).sum()) == 4


def test_token_kinds_on_the_tiny_tokenizer():
    adapter = load_adapter(ModelConfig(tiny=True))
    tok = adapter.tokenizer
    ids = tok.encode("Answer: 42", add_special_tokens=False)
    ids += [adapter.eot_token_id, tok.convert_tokens_to_ids("<|vision_start|>")]
    kinds = token_kinds(tok, ids, adapter.eot_token_id)
    got = [kinds[i] for i in ids]
    assert got == ["words"] * 6 + ["other", "other", "digits", "digits", "end_of_turn",
                                   "special"]
    assert set(got) <= set(KINDS)


def _report(mean_p, low=0.05, eot_p=0.9, sources=None):
    st = {"n_tokens": 100, "mean_p": mean_p, "low_p_frac": low}
    return {"overall": st, "end_of_turn_token": "<|im_end|>",
            "by_kind": {"end_of_turn": {"n_tokens": 10, "mean_p": eot_p}},
            "by_source": sources or {"a": st}}


@pytest.mark.parametrize("mean_p,objective", [(0.004, "sft"), (0.49, "sft"), (0.6, "compare"),
                                              (0.7, "dft"), (0.8, "dft")])
def test_recommendation_bands(mean_p, objective):
    rec = recommend(_report(mean_p))
    assert rec["objective"] == objective
    assert "[bll]" in rec["reasons"][0] and f"{mean_p:.3f}" in rec["reasons"][0]
    assert rec["thresholds"]["strong_mean_p"] == 0.7
    # a weak prior: SFT first, or DFT kept with its weights floored (what the demo does)
    assert ("loss.min_weight=0.1" in rec["reasons"][0]) == (objective == "sft")


def test_low_end_of_turn_and_weak_sources_get_min_weight_advice():
    rec = recommend(_report(0.85, eot_p=0.05))
    assert rec["objective"] == "dft" and rec["settings"]["loss.min_weight"] == 0.1
    assert any("end-of-turn" in r and "0.050" in r for r in rec["reasons"])
    assert "loss.min_weight" not in recommend(_report(0.85, eot_p=0.95))["settings"]
    mixed = recommend(_report(0.75, low=0.3, sources={
        "math": {"n_tokens": 50, "mean_p": 0.95}, "new_facts": {"n_tokens": 50,
                                                                "mean_p": 0.2}}))
    text = " ".join(mixed["reasons"])
    assert "new_facts 0.200" in text and "30% of target tokens" in text


def test_probe_random_model_then_trained_checkpoint_by_path(tmp_path, capsys):
    """The random tiny model has no prior (p ~ 1/V: advice SFT); after a short SFT run its
    vldft-saved checkpoint, loaded by path, predicts the same data far better."""
    from vldft.train import main

    shapes = write_tiny_data(tmp_path / "shapes.jsonl", 24, kind="shape")
    others = write_tiny_data(tmp_path / "mixed.jsonl", 24)
    common = [f"data.train_files=[{shapes},{others}]", "data.heldout_file=null",
              f"train.output_dir={tmp_path / 'run'}"]
    base = probe(demo_config(*common), n_samples=20, show=False)
    assert base["n_samples"] == 20 and set(base["by_source"]) == {"shapes", "mixed"}
    o = base["overall"]
    assert o["mean_p"] < 0.02 and o["low_p_frac"] > 0.95
    assert base["recommendation"]["objective"] == "sft"
    assert base["by_kind"]["end_of_turn"]["n_tokens"] == 20 and base["truncated"] == 0
    # samples cut to data.max_length are counted and said (they were not)
    cut = probe(demo_config(*common, "data.max_length=140"), n_samples=20, show=False)
    assert 0 < cut["truncated"] < 20 and not cut["skipped"], cut["truncated"]
    assert f"truncated to data.max_length: {cut['truncated']} of the probed" in format_report(cut)

    main(demo_config(
        *common, "loss.name=sft", "loss.sft_warmup_steps=0", "train.max_steps=40",
        "train.micro_batch_size=8", "train.lr=3e-3", "train.scheduler=constant",
        "train.log_every=20"))
    ckpt = tmp_path / "run" / "final"
    out = tmp_path / "probe"
    report = cli([str(TINY_CONFIG), *common, "model.tiny=false",
                  f"model.name_or_path={ckpt}", "--samples", "20", "--out", str(out)])
    printed = capsys.readouterr().out
    assert report["model"] == str(ckpt)
    assert report["overall"]["mean_p"] > 10 * o["mean_p"]
    assert report["overall"]["ce"] < o["ce"] / 2
    assert "recommendation:" in printed and "kind end_of_turn" in printed
    saved = json.loads((out / "probe.json").read_text())
    assert saved["overall"] == report["overall"]
    assert sum(saved["histogram"]["counts"]) == saved["overall"]["n_tokens"]
    assert (out / "probe_probs.png").is_file()


def test_cli_errors_name_the_problem(capsys):
    with pytest.raises(SystemExit, match="config error: train.nope"):
        cli([str(TINY_CONFIG), "train.nope=1"])
    with pytest.raises(SystemExit) as e:
        cli([str(TINY_CONFIG), "--samples", "0"])
    assert e.value.code == 2 and "--samples must be >= 1" in capsys.readouterr().err


def _weak_report(loss: dict | None, mean_p: float = 0.36) -> dict:
    """The shipped prior on the demo's rows (docs/design.md: mean p 0.36, answers 0.18)."""
    report = _report(mean_p, low=0.59)
    report["answer_tokens"] = {"n_tokens": 64, "mean_p": 0.18, "low_p_frac": 0.79,
                               "n_samples_with_answer": 64, "n_samples_located": 64}
    if loss is not None:
        report["loss"] = {"name": "dft", "min_weight": 0.0, "sft_mix": 0.0,
                          "sft_warmup_steps": 0, **loss}
    return report


@pytest.mark.parametrize("loss, objective, says", [
    (None, "sft", None),  # no config given: the bands alone
    ({"min_weight": 0.1}, "dft", "floored at 0.1 (loss.min_weight), as vldft's demo does"),
    ({"sft_mix": 0.3}, "dft", "floored at 0.3 (loss.sft_mix)"),
    ({"min_weight": 0.0}, "sft", "plain dft (loss.min_weight=0): this advice differs"),
    ({"min_weight": 0.05}, "sft", "below the 0.1 that learned the demo's answers"),
    ({"min_weight": 0.1, "sft_warmup_steps": 200}, "sft", "starts with 200 SFT steps"),
    ({"name": "sft"}, "sft", "your config trains SFT"),
])
def test_advice_reads_the_probed_configs_loss(loss, objective, says):
    rec = recommend(_weak_report(loss))
    assert rec["objective"] == objective
    if says:
        assert says in rec["reasons"][-1], rec["reasons"][-1]
    if objective == "dft":  # the config's own floor, kept
        key = "loss.sft_mix" if "sft_mix" in loss else "loss.min_weight"
        assert rec["settings"] == {"loss.name": "dft", key: loss.get("sft_mix", 0.1)}
    # from no prior at all, a floor is untested: SFT first
    none = recommend(_weak_report({"min_weight": 0.1}, mean_p=0.004))
    assert none["objective"] == "sft" and "has none" in none["reasons"][-1]


def test_advice_for_the_shipped_demo_is_what_the_demo_trains(tmp_path, capsys):
    """configs/demo.yaml fine-tunes a weak prior with DFT floored at 0.1 (94% held-out): the
    probe of that config advises it, not SFT."""
    from vldft.resources import resource

    report = cli([str(resource("configs/demo.yaml")), "--samples", "8", "--out",
                  str(tmp_path)])
    assert report["loss"]["min_weight"] == 0.1 and report["overall"]["mean_p"] < 0.5
    rec = report["recommendation"]
    assert rec["objective"] == "dft"
    assert rec["settings"] == {"loss.name": "dft", "loss.min_weight": 0.1}
    assert "recommendation: dft  (loss.name=dft loss.min_weight=0.1)" in capsys.readouterr().out


def test_the_default_out_is_one_folder_per_model(tmp_path):
    """The docs' two probe commands (the base model, then model.name_or_path=runs/demo/final)
    wrote the same train.output_dir/probe.json: the second replaced the first."""
    from vldft.probe import default_out

    (tmp_path / "runs" / "demo" / "final").mkdir(parents=True)
    base = default_out(demo_config("model.tiny=false",
                                   "model.name_or_path=priors/tiny-qwen25vl-geo"))
    tuned = default_out(demo_config("model.tiny=false",
                                    f"model.name_or_path={tmp_path / 'runs/demo/final'}"))
    assert base.parent == tuned.parent
    assert (base.name, tuned.name) == ("probe-priors_tiny-qwen25vl-geo", "probe-demo_final")
    assert default_out(demo_config("model.tiny=true")).name == "probe-tiny-qwen2_5_vl"
