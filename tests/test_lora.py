"""LoRA through peft: what trains, the merged checkpoint, ASFT's adapter-disabled reference."""

import copy

import pytest
import torch
from accelerate import Accelerator
from conftest import DEMO_DATA, demo_config

from vldft.adapters import load_adapter
from vldft.adapters.lora import apply_lora, lora_targets, merged_state_dict
from vldft.collate import Collator
from vldft.config import LoraSettings, ModelConfig
from vldft.data import load_jsonl
from vldft.step import ObjectiveModule, accumulate_gradients, build_optimizer
from vldft.train import main

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def _lora_adapter(parts=("language",), seed=0):
    torch.manual_seed(seed)
    adapter = load_adapter(ModelConfig(tiny=True, min_pixels=12544, max_pixels=12544))
    apply_lora(adapter, LoraSettings(r=4, dropout=0.0, parts=list(parts)), [])
    return adapter


def test_targets_follow_parts_and_never_the_output_layer():
    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(tiny=True))
    names = LoraSettings().target_modules
    lang = lora_targets(adapter, names, ["language"])
    both = lora_targets(adapter, names, ["language", "vision", "projector"])
    assert lang and all(adapter.part_of(n + ".weight") == "language" for n in lang)
    assert {adapter.part_of(n + ".weight") for n in both} == {"language", "vision", "projector"}
    assert not any("lm_head" in n for n in both)
    with pytest.raises(ValueError, match="lm_head"):
        lora_targets(adapter, ["lm_head"], ["language"])
    with pytest.raises(ValueError, match="match no Linear layer"):
        lora_targets(adapter, ["no_such_proj"], ["language"])
    # a user's own list: each name must match in the parts (a misspelt one was dropped
    # silently); the error lists only the names usable there
    assert lora_targets(adapter, ["q_proj", "v_prj"], ["language"])  # the default's rule
    with pytest.raises(ValueError) as e:
        lora_targets(adapter, ["q_proj", "v_prj", "qkv"], ["language"], requested=["language"])
    msg = str(e.value)
    assert msg.startswith("model.lora.target_modules: ['v_prj', 'qkv'] match no Linear layer "
                          "in parts ['language']; Linear layer names there: ['down_proj',"), msg
    assert "'lm_head'" not in msg and "'qkv'" not in msg.split("there: ")[1], msg
    with pytest.raises(ValueError, match="match no Linear"):
        apply_lora(load_adapter(ModelConfig(tiny=True)),
                   LoraSettings(r=4, target_modules=["q_proj", "v_prj"]), [])
    # a name of a requested but frozen part is dropped with its part, not refused; the
    # default list in another order is still the default
    peft = apply_lora(load_adapter(ModelConfig(tiny=True)), LoraSettings(
        r=4, parts=["language", "vision"], target_modules=["q_proj", "qkv"]), ["vision"])
    assert {adapter.part_of(n.removeprefix("base_model.model.") + ".weight")
            for n, m in peft.named_modules() if n.endswith(("q_proj", "qkv"))
            and hasattr(m, "lora_A")} == {"language"}
    apply_lora(load_adapter(ModelConfig(tiny=True)),
               LoraSettings(r=4, target_modules=LoraSettings().target_modules[::-1]), [])


def test_merged_state_dict_equals_peft_merge_and_unload():
    """Independent reference: peft's own merge_and_unload on a copy."""
    adapter = _lora_adapter(parts=("language", "vision"))
    for name, p in adapter.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.02)
    ours = merged_state_dict(adapter.model.state_dict(), 32.0 / 4)
    reference = copy.deepcopy(adapter.lora).merge_and_unload().state_dict()
    assert ours.keys() == reference.keys()
    for k in ours:
        assert torch.allclose(ours[k], reference[k], atol=1e-6), k


def test_only_lora_parameters_train():
    adapter = _lora_adapter()
    cfg = demo_config("train.lr=1e-2")
    opt = build_optimizer(adapter, cfg)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    names = {n for n, p in adapter.model.named_parameters() if id(p) in trained}
    assert names and all("lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(s) for s in load_jsonl(DEMO_DATA)[:2]])
    accumulate_gradients(ObjectiveModule(adapter), [batch], "dft", Accelerator(cpu=True))
    opt.step()
    for n, p in adapter.model.named_parameters():
        assert torch.equal(p, before[n]) != ("lora_B" in n), n


def test_asft_reference_is_the_adapter_disabled_model():
    """LoRA B starts at zero, so the first ASFT step has KL exactly 0 against the
    adapter-disabled model; after one update the KL is positive (no weight copy is made)."""
    adapter = _lora_adapter()
    module = ObjectiveModule(adapter)
    coll = Collator(adapter, max_length=512)
    batch = coll([coll.encode(s) for s in load_jsonl(DEMO_DATA)[:2]])
    _, stats, _ = module(dict(batch), "asft")
    assert float(stats["kl_sum"]) == pytest.approx(0.0, abs=1e-7)
    cfg = demo_config("train.lr=5e-2")
    opt = build_optimizer(adapter, cfg)
    accumulate_gradients(module, [batch], "asft", Accelerator(cpu=True))
    opt.step()
    _, stats, _ = module(dict(batch), "asft")
    assert float(stats["kl_sum"]) > 1e-4
    assert module.reference is None


def test_training_with_lora_saves_adapter_and_merged_checkpoint(tmp_path):
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = tmp_path / "run"
    cfg = demo_config(
        "data.train_files=[]", f"data.sources=[{{path: {DEMO_DATA}, max_samples: 16}}]",
        "data.heldout_file=null", "train.max_steps=4", "loss.sft_warmup_steps=2",
        "loss.name=asft", "train.micro_batch_size=4", "train.log_every=1",
        "train.eval_max_samples=0", "train.lr=1e-2", f"train.output_dir={out}",
        "model.lora={r: 4, dropout: 0.0, parts: [language, vision]}")
    summary = main(cfg)
    assert summary["last_log"]["objective"] == "asft" and summary["last_log"]["kl"] > 0
    merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "final").eval()
    torch.manual_seed(0)
    base = load_adapter(ModelConfig(tiny=True)).model  # the same seeded initial weights
    with_adapter = PeftModel.from_pretrained(base, out / "final/adapter").eval()
    torch.manual_seed(0)
    untrained = load_adapter(ModelConfig(tiny=True)).model.eval()
    ids = torch.randint(0, 200, (1, 16))
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits
        c = untrained(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)  # merged == base + adapter
    assert not torch.allclose(a, c, atol=1e-3)  # and training changed the model


def test_a_resumed_lora_run_with_dropout_equals_the_uninterrupted_one(tmp_path):
    """LoRA dropout draws from the global RNG, which a checkpoint restores; a fresh DataLoader
    iterator on resume drew from it too (its worker base seed), shifting every later dropout
    mask (weights off by 1e-3 after 20 more steps). Resumed from the uninterrupted run's own
    checkpoint-4, the end must be bitwise the same."""
    import shutil

    from safetensors.torch import load_file

    out = tmp_path / "run"
    cfg = demo_config(
        "data.train_files=[]", f"data.sources=[{{path: {DEMO_DATA}, max_samples: 24}}]",
        "data.heldout_file=null", "train.max_steps=8", "loss.name=sft", "loss.sft_warmup_steps=0",
        "train.micro_batch_size=4", "train.log_every=1", "train.eval_max_samples=0",
        "train.lr=1e-2", "train.save_every=4", "train.keep_checkpoints=0",
        f"train.output_dir={out}", "model.lora={r: 4, dropout: 0.3, parts: [language]}")
    main(cfg)
    whole = load_file(out / "final/model.safetensors")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    summary = main(cfg)
    assert summary["resumed_from"] == str(out / "checkpoint-4")
    resumed = load_file(out / "final/model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
