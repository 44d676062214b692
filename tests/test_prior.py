"""The shipped prior (``priors/tiny-qwen25vl-geo``): loaded through the real ``from_pretrained``
path as a user loads ``Qwen/Qwen2.5-VL-3B-Instruct``, it reads its pictures (fresh samples of
its pre-training kinds, blank-image control at chance), the kit's probe measures a prior on the
demo's fine-tuning data, and its two-stage recipe (``configs/prior.yaml``,
``configs/prior_shapes.yaml``) validates."""

from __future__ import annotations

import json

import pytest
from conftest import DEMO_CONFIG, ROOT

from vldft.adapters import family_of_checkpoint, load_adapter
from vldft.collate import Collator
from vldft.config import ModelConfig, load_config
from vldft.data import load_jsonl
from vldft.data.synth import PRIOR_KINDS, write_split
from vldft.heldout import combine, control_samples, score_part
from vldft.resources import resource

PRIOR = resource("priors/tiny-qwen25vl-geo")
# per-kind held-out accuracy floors of the shipped checkpoint (its README: shapes 86 %, counts
# 100 % / 100 %, colours 98 % on 300 held-out pictures; ~24 per kind here, so the floors leave
# room for that noise)
# and chance levels (blank images)
FLOORS = {"name_shape": 0.7, "count_dots": 0.85, "describe_dots": 0.8, "colour": 0.9}
CHANCE = {"name_shape": 1 / 3, "count_dots": 1 / 6, "describe_dots": 1 / 6, "colour": 1 / 4}


@pytest.fixture(scope="module")
def fresh_rows(tmp_path_factory: pytest.TempPathFactory):
    """120 samples of the pre-training kinds from a seed the prior's data never used."""
    out = tmp_path_factory.mktemp("prior_heldout")
    write_split(out, "heldout", 120, seed=20261130, kinds=PRIOR_KINDS)
    return out / "heldout.jsonl"


def test_prior_is_a_small_hf_checkpoint():
    files = {p.name for p in PRIOR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
            "chat_template.jinja", "README.md"} <= files
    size = sum(p.stat().st_size for p in PRIOR.iterdir())
    assert size <= 20 * 2**20, size
    assert json.loads((PRIOR / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert family_of_checkpoint(str(PRIOR)) == "qwen2_5_vl"


def test_prior_reads_its_pictures(fresh_rows, hf_offline, one_thread):
    adapter = load_adapter(ModelConfig(family="qwen2_5_vl", name_or_path=str(PRIOR),
                                       dtype="float32"))  # transformers' from_pretrained
    samples = load_jsonl(fresh_rows)
    collator = Collator(adapter)
    real = combine([score_part(adapter, collator, samples, 60, 48, "sft")])
    blank = combine([score_part(adapter, collator, control_samples(samples, "blank"), 60, 48,
                                "sft")])
    by_kind, blank_kind = real["accuracy_by_kind"], blank["accuracy_by_kind"]
    # strict scoring counts only a stated "Answer: X": the kinds taught that format keep their
    # accuracy, describe_dots ("I count 4 dots.") has none to state
    strict = real["accuracy_strict_by_kind"]
    for kind, floor in FLOORS.items():
        assert by_kind[kind] >= floor, (kind, by_kind)
        if kind != "describe_dots":
            assert strict[kind] >= floor, (kind, strict)
        # without the picture: no better than always giving one answer (chance + noise)
        assert blank_kind[kind] <= CHANCE[kind] + 0.25, (kind, blank_kind)
    assert strict["describe_dots"] == 0.0
    assert "describe_shape" not in by_kind  # nothing to score there (CE only)


def test_probe_measures_a_prior_on_the_demo_data(hf_offline, one_thread):
    """The kit's probe on the demo's config (which loads the prior): the prior predicts much of
    the demo's wording (mean target p ~0.36, against ~0.004 for a random model), but most tokens
    of the answers under the demo's new questions are still unlikely (p < 0.1) - where plain
    DFT gives almost no gradient, so the demo floors the weights (loss.min_weight, measured:
    docs/design.md#the-demo-fine-tunes-a-shipped-prior)."""
    from vldft.probe import probe

    cfg = load_config(DEMO_CONFIG)
    assert cfg.model.name_or_path == str(PRIOR) and cfg.loss.sft_warmup_steps == 0
    assert cfg.loss.name == "dft" and cfg.loss.min_weight > 0
    report = probe(cfg, n_samples=64, show=False)
    random_cfg = load_config(DEMO_CONFIG, ["model.tiny=true", "model.name_or_path=null"])
    random_report = probe(random_cfg, n_samples=64, show=False)
    assert report["overall"]["mean_p"] >= 0.15, report["overall"]
    assert random_report["overall"]["mean_p"] <= 0.02, random_report["overall"]
    assert report["answer_tokens"]["low_p_frac"] >= 0.5, report["answer_tokens"]


def test_prior_recipe_validates(fresh_rows, tmp_path):
    """Both stages of the recipe load with data in place of what `make prior` generates (stage
    2 continues from stage 1's checkpoint: the shipped prior stands in for it here)."""
    data = [f"data.train_files=[{fresh_rows}]", f"data.heldout_file={fresh_rows}"]
    cfg = load_config(ROOT / "configs/prior.yaml", [*data, f"train.output_dir={tmp_path}/a"])
    assert cfg.model.tiny and cfg.loss.name == "sft" and cfg.train.max_steps == 6000
    cfg = load_config(ROOT / "configs/prior_shapes.yaml",
                      [*data, f"model.name_or_path={PRIOR}", f"train.output_dir={tmp_path}/b"])
    assert not cfg.model.tiny and cfg.loss.name == "sft" and cfg.train.max_steps == 2000
    makefile = (ROOT / "Makefile").read_text()
    for needed in ("configs/prior.yaml", "configs/prior_shapes.yaml", "priors/tiny-qwen25vl-geo/"):
        assert needed in makefile, needed
