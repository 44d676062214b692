"""The adapter conformance suite: every model family (``vldft.adapters.FAMILIES``) is held to
the same tests. A new family is done when it passes all of them.

Per family, on its tiny local model (a few hundred thousand parameters, 2-64 image tokens):
the tiny build and the shipped config; masking with the real vocabulary (trained spans equal
the answers tokenized alone; nothing from the prompt, the image pads or the template);
image-token expansion equals the vision features; a text-only micro-batch gives exact-zero
(not None) gradients to every vision / projector parameter an image batch trains; batch 4 x
accumulation 1 equals batch 2 x accumulation 2; positions, and packed rows equal their samples
alone; SFT learns a 3-way filled-shape question well above chance; the checkpoint reloads with
plain ``AutoModelForImageTextToText`` / ``AutoProcessor`` and generates the same tokens;
lmms-eval's stock class for the family loads it; vldft's own lmms-eval class answers from it.
Families that take video (4 small frames): the whole expansion of a clip is masked (Qwen3-VL's
per-frame ``<t seconds>`` and vision start / end too), its pads equal the rows of the model's
video features, mRoPE positions are the model's own, a packed row with a video gives the loss
and gradients of its samples alone; a family without video refuses a video sample.
The README's table of families is checked against the suite's list.
"""

from __future__ import annotations

import inspect
import random
import re
import tempfile
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import ROOT
from PIL import Image, ImageDraw

from vldft.adapters import FAMILIES, MODEL_TYPES, family_of_checkpoint, load_adapter
from vldft.adapters.base import _tensors
from vldft.adapters.lora import apply_lora
from vldft.adapters.vocab import FAMILY_VOCAB, real_qwen_tokenizer
from vldft.collate import IGNORE, Collator, SampleError
from vldft.config import LoraSettings, ModelConfig, VideoSettings
from vldft.data import Sample
from vldft.data.video import Video
from vldft.step import ObjectiveModule, accumulate_gradients

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY_NAMES = sorted(FAMILIES)
SHAPES = ("circle", "square", "triangle")
# released ids of the image placeholder and the end-of-turn token, per family (real vocabulary)
REAL_IDS = {"qwen2_vl": (151655, 151645), "qwen2_5_vl": (151655, 151645),
            "qwen3_vl": (151655, 151645), "qwen3_vl_moe": (151655, 151645),
            "qwen3_5": (248056, 248046), "llava_onevision": (151646, 151645)}
# lmms-eval's stock class for each family (LLaVA-OneVision in HF format: llava_hf; its own
# `llava_onevision` class needs the LLaVA-NeXT repository's code, not HF checkpoints)
STOCK_CLASS = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl",
               "qwen3_vl_moe": "qwen3_vl", "qwen3_5": "qwen3_5", "llava": "llava_hf",
               "llava_onevision": "llava_hf"}
# optimizer steps of the shape SFT (default 40). Measured held-out first-token accuracy at 40
# steps (2026-11-30): llava 77%, llava_onevision 100%, qwen2_vl 100%, qwen3_5 97%, qwen3_vl
# 100%, qwen3_vl_moe 100%; qwen2_5_vl (128 wide, window attention) 67% at 40, 100% at 60
SFT_STEPS = {"qwen2_5_vl": 60, "llava_onevision": 60}


# -- data ----------------------------------------------------------------------------------
def shape_image(kind: str, rng: random.Random, side: int = 64) -> Image.Image:
    """A white filled circle / square / triangle on black, jittered by a few pixels."""
    im = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(im)
    r, cx, cy = side // 2 - 10, side // 2 + rng.randint(-4, 4), side // 2 + rng.randint(-4, 4)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill="white")
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill="white")
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill="white")
    return im


def user(text: str, n_images: int = 1) -> dict:
    return {"role": "user",
            "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def shape_sample(i: int, kind: str, rng: random.Random, answer: bool = True) -> Sample:
    msgs = [user("Shape?")] + ([assistant(kind)] if answer else [])
    return Sample(f"shape-{i}", msgs, [shape_image(kind, rng)], answer=kind)


def text_sample(i: int) -> Sample:
    return Sample(f"text-{i}", [user(f"What is {i} + 1?", 0), assistant(f"{i + 1}")], [])


def batch_of(collator: Collator, samples: list[Sample]) -> dict:
    """The model inputs of a padded batch (the collator's counts and skips dropped)."""
    batch = collator([collator.encode(s) for s in samples])
    assert not batch["skipped"]
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


# -- shared builds -----------------------------------------------------------------------------
_ADAPTERS: dict[str, object] = {}
_TOKENIZERS: dict[str, object] = {}


def tiny(family: str):
    """The family's tiny adapter, built once per module (seeded); tests that train make their
    own (``fresh``)."""
    if family not in _ADAPTERS:
        _ADAPTERS[family] = fresh(family)
    return _ADAPTERS[family]


def fresh(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return load_adapter(ModelConfig(family=family, tiny=True))


def with_real_vocabulary(adapter):
    """The same adapter class and image processor around the family's real tokenizer (the
    collator never runs the model)."""
    kind = FAMILY_VOCAB[adapter.family]
    if kind not in _TOKENIZERS:  # ~2 s each; processors never modify their tokenizer
        _TOKENIZERS[kind] = real_qwen_tokenizer(kind)
    tok = _TOKENIZERS[kind]
    p = adapter.processor
    kwargs = {"image_processor": p.image_processor, "tokenizer": tok,
              "chat_template": p.chat_template}
    if getattr(p, "video_processor", None) is not None:
        kwargs["video_processor"] = p.video_processor
    if adapter.family == "llava_onevision":
        kwargs.update(num_image_tokens=p.num_image_tokens, image_token="<image>",
                      video_token="<video>",
                      vision_feature_select_strategy=p.vision_feature_select_strategy)
    return type(adapter)(adapter.model, type(p)(**kwargs))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """family -> (adapter after SFT on the shape task, checkpoint dir, held-out samples)."""
    out: dict[str, tuple] = {}

    def get(family: str):
        if family not in out:
            out[family] = _train_shapes(family, tmp_path_factory.mktemp(family))
        return out[family]

    return get


def _train_shapes(family: str, tmp: Path):
    """SFT from random init on 96 filled-shape images, 12 per micro-batch, AdamW 4e-3; saved.
    The MoE checkpoint's folder name carries "A1B": lmms-eval's qwen3_vl class picks its MoE
    model class from that pattern in the path."""
    adapter, rng = fresh(family), random.Random(0)
    collator = Collator(adapter, 512)
    train = [collator.encode(shape_sample(i, SHAPES[i % 3], rng)) for i in range(96)]
    heldout = [shape_sample(1000 + i, SHAPES[i % 3], rng, answer=False) for i in range(30)]
    module = ObjectiveModule(adapter)
    opt = torch.optim.AdamW(adapter.model.parameters(), lr=4e-3)
    for step in range(SFT_STEPS.get(family, 40)):
        batch = collator([train[(step * 12 + j) % len(train)] for j in range(12)])
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        loss_sum, _, _ = module(batch, "sft")
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad()
    adapter.model.eval()
    ckpt = tmp / (f"{family}-A1B" if family == "qwen3_vl_moe" else family)
    adapter.save(ckpt)
    return adapter, ckpt, heldout


def first_token_accuracy(adapter, samples: list[Sample]) -> float:
    """Share of samples whose answer's first token scores highest among the three answers'
    first tokens, at the position the answer starts in the training rendering (what follows
    the generation prompt differs by family: LLaVA-1.5's "ASSISTANT:" is followed by a space)."""
    first = [adapter.tokenizer.encode(k, add_special_tokens=False)[0] for k in SHAPES]
    assert len(set(first)) == 3
    collator, correct = Collator(adapter, 512), 0
    with torch.no_grad():
        for s in samples:
            probe = Sample(s.id, [*s.messages, assistant(SHAPES[0])], s.images)
            batch = batch_of(collator, [probe])
            labels = batch.pop("labels")[0]
            start = int((labels != IGNORE).nonzero()[0])
            assert int(batch["input_ids"][0, start]) == first[0]
            hidden = adapter.hidden_states(batch)[0, start - 1]
            pred = SHAPES[int((adapter.output_layer().weight[first] @ hidden).argmax())]
            correct += pred == s.answer
    return correct / len(samples)


# -- the suite -------------------------------------------------------------------------------
def test_suite_covers_every_family_and_the_readme_lists_them():
    """The README's table of families and docs/families.md are checked against this suite."""
    assert FAMILY_NAMES == sorted(STOCK_CLASS)
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| [^|]+ \| `([a-z0-9_]+)` \|", readme, flags=re.M))
    assert listed == set(FAMILY_NAMES), "README families table differs from the suite"
    doc = (ROOT / "docs" / "families.md").read_text()
    for family in FAMILY_NAMES:
        assert f"## `{family}`" in doc, f"docs/families.md: no section for {family}"
        assert (ROOT / "configs" / f"{_config_name(family)}").is_file()


def test_config_and_adapters_agree_on_families_and_pixel_bounds():
    """The config layer validates model.family and min/max_pixels without importing the
    adapters (it sits below them), so it keeps its own lists: they must be the adapters'."""
    from vldft.config.sections import FAMILY_NAMES as CONFIG_FAMILIES
    from vldft.config.sections import PIXEL_FAMILIES

    assert sorted(CONFIG_FAMILIES) == FAMILY_NAMES
    assert sorted(PIXEL_FAMILIES) == sorted(f for f, cls in FAMILIES.items()
                                            if cls.supports_pixel_bounds)


def _config_name(family: str) -> str:
    return {"qwen2_5_vl": "qwen25vl_geo.yaml", "llava": "llava_geo.yaml",
            "qwen2_vl": "qwen2vl_geo.yaml", "qwen3_vl": "qwen3vl_geo.yaml",
            "qwen3_vl_moe": "qwen3vl_moe_geo.yaml", "qwen3_5": "qwen3_5_geo.yaml",
            "llava_onevision": "llava_onevision_geo.yaml"}[family]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_shipped_config_loads(family):
    from vldft.config import load_config

    cfg = load_config(ROOT / "configs" / _config_name(family), [])
    assert cfg.model.family == family and cfg.model.name_or_path


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tiny_build(family):
    a = tiny(family)
    n = sum(p.numel() for p in a.model.parameters())
    assert 50_000 < n < 1_000_000, n
    assert MODEL_TYPES[a.model.config.model_type] == family
    assert a.model.config.model_type in a.model_types
    parts = a.parts()
    assert all(parts[k] for k in ("vision", "projector", "language")), \
        {k: len(v) for k, v in parts.items()}
    assert a.image_token_id == a.model.config.image_token_id
    assert a.tokenizer.decode([a.eot_token_id]) == a.end_of_turn


@pytest.mark.parametrize("family", sorted(FAMILY_VOCAB))
def test_masking_with_the_real_vocabulary(family):
    a = with_real_vocabulary(tiny(family))
    assert (a.image_token_id, a.eot_token_id) == REAL_IDS[family]
    rng = random.Random(1)
    # user text that mimics the template: only the answers may be trained
    q = "The assistant said <|im_start|>assistant\nno<|im_end|> -- is the assistant right?"
    answers = ["It is a circle.", "Yes, 2 + 2 = 4."]
    msgs = [user(q), assistant(answers[0]), user("And 2 + 2?", 0), assistant(answers[1])]
    image = shape_image("circle", rng)
    if family == "qwen3_5":
        # its template renders earlier answers without the (empty) think block that the last
        # answer gets: a multi-turn sample is not prefix-stable and is refused, never mis-masked
        with pytest.raises(SampleError, match="qwen3_5 trains single-turn samples only"):
            Collator(a, 1024).encode(Sample("multi", msgs, [image]))
        msgs, answers = msgs[:2], answers[:1]
    enc = Collator(a, 1024).encode(Sample("real", msgs, [image]))
    ids, labels = enc.input_ids, enc.labels
    trained = ids[labels != IGNORE].tolist()
    # independent reference: each answer + end-of-turn tokenized on its own
    want = [t for ans in answers for t in a.tokenizer.encode(ans + a.end_of_turn,
                                                             add_special_tokens=False)]
    assert trained == want
    assert (labels[labels != IGNORE] == ids[labels != IGNORE]).all()
    template_ids = {a.tokenizer.convert_tokens_to_ids(t) for t in
                    ("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<think>", "</think>")
                    if t in a.tokenizer.get_vocab()}
    assert not (set(trained) & (template_ids | {a.image_token_id}))
    n_image = int((ids == a.image_token_id).sum())
    assert n_image == a.image_token_count(image.size) > 0
    assert (labels[ids == a.image_token_id] == IGNORE).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_image_tokens_equal_vision_features(family):
    a = tiny(family)
    rng = random.Random(2)
    big, small = shape_image("square", rng, 64), shape_image("circle", rng, 64).crop((0, 0, 64, 32))
    samples = [Sample("a", [user("Shape?"), assistant("square")], [big]),
               Sample("b", [user("Shape?", 2), assistant("two")], [small, big])]
    collator = Collator(a, 1024)
    batch = batch_of(collator, samples)
    per_sample = (batch["input_ids"] == a.image_token_id).sum(1).tolist()
    sizes = [[a.load_image(big).size], [a.load_image(small).size, a.load_image(big).size]]
    assert per_sample == [sum(a.image_token_count(s) for s in ss) for ss in sizes]
    get = a.model.model.get_image_features
    accepted = inspect.signature(get).parameters
    with torch.no_grad():
        out = get(**{k: v for k, v in batch.items() if k in accepted and k != "input_ids"})
    hidden = a.model.config.get_text_config().hidden_size
    rows = sum(t.numel() // hidden for t in _tensors(out.pooler_output))
    assert rows == sum(per_sample)
    with torch.no_grad():  # and the model's own placeholder check accepts the batch
        a.hidden_states({k: v for k, v in batch.items() if k != "labels"})


def _vision_grads(a, batch) -> dict[str, torch.Tensor | None]:
    a.model.zero_grad(set_to_none=True)
    loss_sum, _, _ = ObjectiveModule(a)(batch, "sft")
    loss_sum.backward()
    a.pop_aux_loss()
    return {n: (None if p.grad is None else p.grad.clone())
            for n, p in a.parts()["vision"] + a.parts()["projector"]}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_only_batch_gives_zero_vision_gradients(family):
    """The dummy vision pass: every vision / projector parameter an image batch trains gets an
    exact-zero gradient (not None) from a micro-batch without images, so DDP / FSDP / ZeRO-3
    ranks run the same graph."""
    a = fresh(family)
    collator, rng = Collator(a, 512), random.Random(3)
    image_grads = _vision_grads(a, batch_of(collator, [shape_sample(0, "circle", rng)]))
    trained = [n for n, g in image_grads.items() if g is not None and g.abs().sum() > 0]
    assert len(trained) >= 0.5 * len(image_grads)
    text_batch = batch_of(collator, [text_sample(1), text_sample(2)])
    assert "pixel_values" not in text_batch
    text_grads = _vision_grads(a, text_batch)
    missing = [n for n in trained if text_grads[n] is None]
    assert not missing, f"no gradient from a text-only batch: {missing[:5]}"
    assert all(torch.count_nonzero(text_grads[n]) == 0 for n in trained)


class _BackwardMark(torch.autograd.Function):
    """Identity on a module's output whose backward logs the module: how DeepSpeed's ZeRO-3
    learns that a module's backward is next (a forward hook, registered before the forward,
    wraps the outputs in an autograd function; it then gathers that module's weights)."""

    @staticmethod
    def forward(ctx, x, name, log):
        ctx.name, ctx.log = name, log
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.log.append(ctx.name)
        return grad, None, None


def _marked(out, name: str, log: list):
    """``out`` with every tensor that requires grad in it (nested in tuples, lists, dicts and
    model outputs, as DeepSpeed looks for them) wrapped in ``_BackwardMark``."""
    if isinstance(out, torch.Tensor):
        return _BackwardMark.apply(out, name, log) if out.requires_grad else out
    if isinstance(out, dict):  # transformers' ModelOutput too (its items are its fields)
        for k in list(out.keys()):
            out[k] = _marked(out[k], name, log)
        return out
    if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        return type(out)(_marked(x, name, log) for x in out)
    return out


def _module_orders(a, batches: list[dict], passes: int) -> list[tuple[list[str], list[str]]]:
    """Per batch: the model's modules in the order the objective's forward ran them (every
    call), and the order in which backward reached their outputs. The hooks are registered
    once, before the model's first forward, as DeepSpeed registers its own (hooks run in
    registration order; transformers adds its output-capturing ones at first use)."""
    forward, backward = [], []
    hooks = []
    for name, m in a.model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda _m, _a, n=name: forward.append(n)))
        hooks.append(m.register_forward_hook(lambda _m, _a, o, n=name: _marked(o, n, backward)))
    orders = []
    try:
        for batch in batches:
            forward.clear()
            backward.clear()
            loss_sum, _, _ = ObjectiveModule(a)(batch, "sft", vision_passes=passes)
            loss_sum.backward()
            a.pop_aux_loss()
            orders.append((list(forward), list(backward)))
    finally:
        for h in hooks:
            h.remove()
        a.model.zero_grad(set_to_none=True)
    return orders


def _assert_same_orders(a, reference: dict, others: list[dict], passes: int) -> None:
    """``others`` run the modules of ``reference`` in its order, forward and backward, and the
    vision tower ``passes`` times."""
    orders = _module_orders(a, [reference, *others], passes)
    tower = a.vision_prefixes[0].rstrip(".")
    (ref_fwd, ref_bwd), rest = orders[0], orders[1:]
    assert ref_fwd.count(tower) == passes, (tower, ref_fwd.count(tower))
    assert ref_bwd, "no backward reached a module"
    for fwd, bwd in rest:
        assert fwd == ref_fwd, (passes, _first_difference(fwd, ref_fwd))
        assert bwd == ref_bwd, (passes, _first_difference(bwd, ref_bwd))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_text_only_batch_runs_the_modules_of_an_image_batch_in_its_order(family, lora):
    """Under DeepSpeed ZeRO-3 or FSDP a rank whose micro-batch is text-only and a rank with an
    image gather the weights module by module as the forward (and backward) reaches them, and
    ZeRO-3 checks after the first step that every rank ran the same modules in the same
    order. So a text-only micro-batch's blank vision passes must run where the real ones run:
    the same module sequence as an image micro-batch, forward and backward, with one pass per
    micro-batch and with two (a step where some rank has images and videos: an image + video
    micro-batch, an image one and a text one alike). Fully trained, and with LoRA on the
    language model and the projector (every base weight frozen: the embedding's output needs
    no gradient, the projector's does)."""
    a = fresh(family)
    if lora:
        apply_lora(a, LoraSettings(r=4, dropout=0.0, parts=["language", "projector"]), [])
    collator, rng = Collator(a, 2048, video=VIDEO), random.Random(3)
    image = batch_of(collator, [shape_sample(0, "circle", rng)])
    text = batch_of(collator, [text_sample(1), text_sample(2)])
    _assert_same_orders(a, image, [text], passes=1)
    if family in VIDEO_FAMILIES:
        both = batch_of(collator, [shape_sample(3, "square", rng), video_sample(4, rng)])
        assert "pixel_values" in both and "pixel_values_videos" in both
        _assert_same_orders(a, both, [image, text], passes=2)
    else:
        _assert_same_orders(a, image, [text], passes=2)


def test_the_shipped_recipes_levers_keep_that_order():
    """The same with configs/qwen25vl_geo.yaml's model settings on the tiny Qwen2.5-VL: vision
    tower frozen and run without autograd, gradient checkpointing (recomputed blocks run their
    forward again inside the backward)."""
    from vldft.config import load_config
    from vldft.step import prepare_model

    recipe = load_config(ROOT / "configs/qwen25vl_geo.yaml", []).model
    cfg = load_config(ROOT / "tests/tiny_demo.yaml", [
        f"model.freeze={recipe.freeze}", "model.gradient_checkpointing=true"])
    assert recipe.gradient_checkpointing is True and recipe.freeze == ["vision"]
    a = fresh("qwen2_5_vl")
    prepare_model(a, cfg, log=lambda _: None)
    a.model.train()
    collator, rng = Collator(a, 512), random.Random(3)
    image = batch_of(collator, [shape_sample(0, "circle", rng)])
    text = batch_of(collator, [text_sample(1), text_sample(2)])
    for passes in (1, 2):
        _assert_same_orders(a, image, [text], passes)
    # a decoder layer's parts ran twice: in the forward, and again in the backward
    (image_fwd, _), = _module_orders(a, [image], 1)
    assert image_fwd.count("model.language_model.layers.0.mlp") == 2


def _first_difference(a: list[str], b: list[str]) -> tuple:
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
             min(len(a), len(b)))
    return k, a[max(k - 2, 0):k + 3], b[max(k - 2, 0):k + 3]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_batch_times_accumulation_invariance(family):
    """Batch 4 x accumulation 1 and batch 2 x accumulation 2 give the same gradients (global
    token normalisation). MoE: with the router loss off; the router loss is per micro-batch."""
    a = fresh(family)
    if family == "qwen3_vl_moe":
        a.model.config.text_config.router_aux_loss_coef = 0.0
    collator, rng = Collator(a, 512), random.Random(4)
    samples = [shape_sample(i, SHAPES[i % 3], rng) for i in range(3)] + [text_sample(5)]
    module, acc = ObjectiveModule(a), Accelerator(cpu=True)

    def grads(micro: list[list[Sample]]) -> dict[str, torch.Tensor]:
        a.model.zero_grad(set_to_none=True)
        accumulate_gradients(module, [batch_of(collator, m) for m in micro], "dft", acc)
        return {n: p.grad.clone() for n, p in a.model.named_parameters() if p.grad is not None}

    one, two = grads([samples]), grads([samples[:2], samples[2:]])
    assert one.keys() == two.keys()
    for n in one:
        torch.testing.assert_close(one[n], two[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_position_ids(family):
    """``Adapter.position_ids`` gives the positions the model uses (Qwen: per-sample mRoPE)."""
    a = tiny(family)
    rng = random.Random(5)
    batch = batch_of(Collator(a, 512), [shape_sample(0, "circle", rng), text_sample(1)])
    batch.pop("labels")
    pos = a.position_ids(batch)
    if family.startswith("llava"):
        assert pos is None
        return
    assert pos.shape[-2:] == batch["input_ids"].shape and pos.shape[0] >= 3
    text_row = pos[:, 1, : int(batch["attention_mask"][1].sum())]
    assert (text_row[-1] == torch.arange(text_row.shape[1])).all()  # text-only: 0..n-1
    with torch.no_grad():
        own = a.hidden_states(batch)
        given = a.hidden_states({**batch, "position_ids": pos})
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(own[mask], given[mask])


def test_moe_router_loss_is_added_as_transformers_computes_it():
    a = fresh("qwen3_vl_moe")
    tc = a.model.config.text_config
    batch = batch_of(Collator(a, 512), [shape_sample(0, "square", random.Random(6))])
    labels = batch.pop("labels")
    hidden = a.hidden_states(batch)
    aux = a.pop_aux_loss()
    assert aux is not None and a.pop_aux_loss() is None
    with torch.no_grad():  # independent reference: the HF model's own forward
        ref = a.model(**batch, labels=labels, output_router_logits=True, use_cache=False)
    torch.testing.assert_close(aux.detach(), tc.router_aux_loss_coef * ref.aux_loss)
    assert hidden.requires_grad
    module = ObjectiveModule(a)
    with_aux, _, _ = module({**batch, "labels": labels}, "sft")
    tc.router_aux_loss_coef, coef = 0.0, tc.router_aux_loss_coef
    without, stats, _ = module({**batch, "labels": labels}, "sft")
    n = int((labels[:, 1:] != IGNORE).sum())
    torch.testing.assert_close((with_aux - without).detach(), coef * ref.aux_loss * n)
    with torch.no_grad():
        a.hidden_states(batch)
    assert a.pop_aux_loss() is None  # evaluation forwards keep no router loss


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_learns_the_shape_question(family, trained):
    adapter, _, heldout = trained(family)
    accuracy = first_token_accuracy(adapter, heldout)
    assert accuracy >= 0.6, f"{family}: {accuracy:.0%} on 30 held-out images (chance 33%)"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_checkpoint_reloads_with_plain_transformers_and_generates(family, trained):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter, ckpt, heldout = trained(family)
    assert family_of_checkpoint(ckpt) == family
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    assert type(model) is type(adapter.model)
    sample = heldout[0]
    prompt = adapter.render(sample.messages, add_generation_prompt=True)
    image = adapter.load_image(sample.images[0])
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    ours = adapter.process(prompt, [image])
    assert inputs["input_ids"].tolist() == ours["input_ids"].tolist()
    gen = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": adapter.pad_token_id}
    with torch.no_grad():
        theirs = model.generate(**inputs, **gen)
        mine = adapter.model.generate(**ours, **gen)
    assert theirs.tolist() == mine.tolist()
    assert theirs.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_stock_lmms_eval_class_loads_the_checkpoint(family, trained, hf_offline):
    models = pytest.importorskip("lmms_eval.models")
    adapter, ckpt, _ = trained(family)
    cls = models.get_model(STOCK_CLASS[family])
    assert cls.__module__.startswith("lmms_eval.models.")
    kwargs = {"pretrained": str(ckpt), "device": "cpu", "device_map": "cpu"}
    if STOCK_CLASS[family].startswith("qwen"):
        kwargs.update(min_pixels=adapter.min_pixels, max_pixels=adapter.max_pixels)
    stock = cls(**kwargs)
    assert type(stock.model) is type(adapter.model)
    theirs = dict(stock.model.named_parameters())
    for name, p in adapter.model.named_parameters():  # the class may load in bf16 (qwen3_vl)
        t = theirs[name].detach().cpu()
        assert torch.equal(t, p.detach().to(t.dtype)), name


# tiny LLaVA-1.5: its template's generation prompt ends "ASSISTANT:" while training renders
# "ASSISTANT: <answer>"; the byte-level tokenizer makes that space its own, masked token, so the
# tiny model never learns to emit it (a real Llama tokenizer trains it inside "▁circle")
LLAVA_SPACE = pytest.mark.xfail(strict=True, reason="tiny LLaVA-1.5: untrained space token "
                                "after 'ASSISTANT:' (byte-level tokenizer)")


@pytest.mark.parametrize("family", [pytest.param(f, marks=LLAVA_SPACE) if f == "llava" else f
                                    for f in FAMILY_NAMES])
def test_vldft_eval_class_scores_the_checkpoint(family, trained, hf_offline):
    """vldft's lmms-eval model class loads the checkpoint by its config.json and answers the
    held-out shape questions by greedy generation; the trained model is well above chance."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from vldft.eval.model import VldftLMM

    _, ckpt, heldout = trained(family)
    lmm = VldftLMM(pretrained=str(ckpt), device="cpu", batch_size=15)
    docs = heldout[:15]
    lmm.task_dict = {"shapes": {"test": docs}}

    def to_messages(doc: Sample) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image", "url": doc.images[0]},
                                             {"type": "text", "text": "Shape?"}]}]

    requests = [Instance("generate_until", ("", to_messages, {"max_new_tokens": 12}, i,
                                            "shapes", "test"), i,
                         {"task": "shapes", "doc_id": i, "repeats": 1})
                for i in range(len(docs))]
    results = lmm.generate_until(requests)
    # exact match: vldft.scoring extracts math answers ("Answer: B", numbers), not bare words
    correct = [r.text.strip() == d.answer for r, d in zip(results, docs, strict=True)]
    assert sum(correct) / len(docs) >= 0.5, [r.text for r in results]


def test_unknown_family_and_foreign_checkpoint_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model.family: unknown family"):
        load_adapter(ModelConfig(family="nope", tiny=True))
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(ValueError, match="whisper.*not supported"):
        family_of_checkpoint(tmp_path)
    with tempfile.TemporaryDirectory() as d:
        tiny("qwen2_vl").save(d)
        with pytest.raises(ValueError, match="set model.family=qwen2_vl"):
            load_adapter(ModelConfig(family="qwen3_vl", name_or_path=d))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_packed_row_equals_samples_alone(family):
    """``Adapter.packed_positions`` + ``vldft.packing.pack``: the hidden states of two samples
    packed in one row equal each sample's alone (positions restart, no attention across)."""
    from vldft.packing import pack

    a = tiny(family)
    rng = random.Random(7)
    collator = Collator(a, 512)
    encs = [collator.encode(shape_sample(0, "triangle", rng)), collator.encode(text_sample(3))]
    if family == "qwen3_5":
        with pytest.raises(ValueError, match="packing: not supported for qwen3_5"):
            a.packed_positions(encs[0])
        return
    row = pack(encs, a.packed_positions)
    row.pop("labels")
    row.pop("n_packed")
    with torch.no_grad():
        packed = a.hidden_states(row)[0]
        alone = [a.hidden_states({k: v for k, v in batch_of(collator, [s]).items()
                                  if k != "labels"})[0]
                 for s in (shape_sample(0, "triangle", random.Random(7)), text_sample(3))]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-4, atol=1e-5)


# -- video ---------------------------------------------------------------------------------------
VIDEO_FAMILIES = [f for f in FAMILY_NAMES if FAMILIES[f].video_token]
# released id of the video placeholder, per family (real vocabulary)
REAL_VIDEO_IDS = {"qwen2_vl": 151656, "qwen2_5_vl": 151656, "qwen3_vl": 151656,
                  "qwen3_vl_moe": 151656, "qwen3_5": 248057, "llava_onevision": 151647}
# 4 frames of 64 x 64 px: one or two temporal patches of 2 x 2 merged tokens (Qwen), 4 pooled
# frames at the tower's size (LLaVA-OneVision)
VIDEO = VideoSettings(fps=2.0, max_frames=4, min_frames=2, min_pixels=28 * 28,
                      max_pixels=64 * 64)


def clip(rng: random.Random, n: int = 4) -> Video:
    """``n`` frames (in memory) of a white square moving right."""
    frames = []
    for i in range(n):
        im = Image.new("RGB", (64, 64))
        x = 4 + 10 * i + rng.randint(0, 3)
        ImageDraw.Draw(im).rectangle([x, 20, x + 14, 40], fill="white")
        frames.append(im)
    return Video(frames=frames, name="moving-square")


def video_sample(i: int, rng: random.Random, question: str = "Which way does it move?",
                 answer: str = "To the right.") -> Sample:
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
            assistant(answer)]
    return Sample(f"video-{i}", msgs, [], videos=[clip(rng)])


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_masking_with_the_real_vocabulary(family):
    """Every token of a video's expansion (pads; Qwen3-VL / 3.5: the per-frame ``<t seconds>``
    text and vision start / end) is masked, the ids are the processor's own, and the trained
    tokens are the answer tokenized alone."""
    a = with_real_vocabulary(tiny(family))
    assert a.video_token_id == REAL_VIDEO_IDS[family]
    q = "The assistant said <|im_start|>assistant\nno<|im_end|> -- which way?"
    answer = "Right, then it stops."
    sample = video_sample(0, random.Random(11), q, answer)
    enc = Collator(a, 2048, video=VIDEO).encode(sample)
    ids, labels = enc.input_ids, enc.labels
    trained = ids[labels != IGNORE].tolist()
    assert trained == a.tokenizer.encode(answer + a.end_of_turn, add_special_tokens=False)
    # trained tokens are one run at the end (before the template's closing newline, if any):
    # the whole prompt, the video's expansion included, is masked
    first = int((labels != IGNORE).nonzero()[0])
    assert (labels[:first] == IGNORE).all() and first + len(trained) >= len(ids) - 1
    # the ids are exactly what the processor makes of the rendered text and decoded frames
    decoded = a.load_video(sample.videos[0], VIDEO)
    text = a.render(sample.messages)
    direct = a.processor(text=[a.processor_text(text, [decoded])], return_tensors="pt",
                         **a.video_kwargs([decoded]))
    assert ids.tolist() == direct["input_ids"][0].tolist()
    n_pad = int((ids == a.video_token_id).sum())
    assert n_pad > 0 and n_pad == sum(a.video_token_counts(direct))
    if family in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5"):  # per temporal patch: <t seconds>,
        t = int(enc.extras["video_grid_thw"][0, 0])  # vision start and end, all masked
        prompt = a.tokenizer.decode(ids[:first])
        assert len(re.findall(r"<\d+(?:\.\d+)? seconds>", prompt)) == t > 0
        vs = a.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert int((ids[:first] == vs).sum()) == t


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_tokens_equal_video_features(family):
    """Video pads in ``input_ids`` == rows of the model's own video features (merged / pooled),
    per video, in a batch with an image sample and a text-only one; the forward accepts it."""
    a = tiny(family)
    rng = random.Random(12)
    samples = [video_sample(0, rng), shape_sample(1, "circle", rng), text_sample(2),
               video_sample(3, rng)]
    batch = batch_of(Collator(a, 1024, video=VIDEO), samples)
    per_sample = (batch["input_ids"] == a.video_token_id).sum(1).tolist()
    assert per_sample[1] == per_sample[2] == 0 and per_sample[0] > 0
    get = a.model.model.get_video_features
    accepted = inspect.signature(get).parameters
    with torch.no_grad():
        out = get(**{k: v for k, v in batch.items() if k in accepted and k != "input_ids"})
    hidden = a.model.config.get_text_config().hidden_size
    feats = _tensors(out.pooler_output)
    rows = sum(t.numel() // hidden for t in feats)
    assert rows == per_sample[0] + per_sample[3]
    if len(feats) == 2:  # one tensor per video: each matches its own sample
        assert [t.numel() // hidden for t in feats] == [per_sample[0], per_sample[3]]
    with torch.no_grad():  # the model's own placeholder check accepts the batch
        a.hidden_states({k: v for k, v in batch.items() if k != "labels"})


def _token_types(a, ids: torch.Tensor) -> torch.Tensor:
    return (ids == a.image_token_id).int() + 2 * (ids == a.video_token_id).int()


@pytest.mark.parametrize("family", [f for f in VIDEO_FAMILIES if f.startswith("qwen")])
def test_video_mrope_positions(family):
    """``position_ids`` of a padded batch with a video equal the model's own ``get_rope_index``
    on that batch, each row equals its sample alone, the forward computes the same, and each
    video's pads hold one temporal position per temporal patch and its grid's rows / columns."""
    from vldft.packing import rope_media_kwargs

    a = tiny(family)
    rng = random.Random(13)
    samples = [text_sample(1), video_sample(0, rng), shape_sample(2, "square", rng)]
    coll = Collator(a, 1024, video=VIDEO)
    batch = batch_of(coll, samples)
    batch.pop("labels")
    pos = a.position_ids(batch)
    inner = a.model.model
    ref, _ = inner.get_rope_index(batch["input_ids"], _token_types(a, batch["input_ids"]),
                                  attention_mask=batch["attention_mask"],
                                  **rope_media_kwargs(type(inner), batch))
    mask = batch["attention_mask"].bool()
    assert torch.equal(pos[:, mask], ref[:, mask])
    for b, s in enumerate(samples):  # padding and neighbours change nothing
        alone = batch_of(coll, [s])
        alone.pop("labels")
        n = int(mask[b].sum())
        assert torch.equal(pos[:, b, :n], a.position_ids(alone)[:, 0])
    ids = batch["input_ids"][1]
    grid = batch["video_grid_thw"][0].tolist()
    merge = a.processor.video_processor.merge_size
    vid = pos[:, 1, ids == a.video_token_id]
    rows, cols = grid[1] // merge, grid[2] // merge
    assert vid.shape[1] == grid[0] * rows * cols
    times = []
    for patch in vid.split(rows * cols, dim=1):  # each temporal patch (Qwen3: its own block)
        assert len(set(patch[0].tolist())) == 1  # one temporal position, a rows x cols grid
        assert patch[1].max() - patch[1].min() == rows - 1
        assert patch[2].max() - patch[2].min() == cols - 1
        times.append(int(patch[0, 0]))
    assert times == sorted(set(times)) and len(times) == grid[0] > 1
    with torch.no_grad():
        own = a.hidden_states(batch)
        given = a.hidden_states({**batch, "position_ids": pos})
    torch.testing.assert_close(own[mask], given[mask])


def _loss_and_grads(a, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    a.model.zero_grad(set_to_none=True)
    loss_sum, _, _ = ObjectiveModule(a)(batch, "sft")
    loss_sum.backward()
    a.pop_aux_loss()
    return loss_sum.detach(), {n: p.grad.clone() for n, p in a.model.named_parameters()
                               if p.grad is not None}


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_packed_video_row_equals_samples_alone(family):
    """A packed row of a video, a text-only and an image sample: the same loss and the same
    gradients (every parameter) as the three samples alone. Qwen3.5: packing is refused."""
    from vldft.packing import pack

    a = fresh(family)
    if family == "qwen3_vl_moe":  # the router loss is per forward (as for accumulation)
        a.model.config.text_config.router_aux_loss_coef = 0.0
    rng = random.Random(14)
    coll = Collator(a, 1024, video=VIDEO)
    samples = [video_sample(0, rng), text_sample(1), shape_sample(2, "triangle", rng)]
    encs = [coll.encode(s) for s in samples]
    if family == "qwen3_5":
        with pytest.raises(ValueError, match="packing: not supported for qwen3_5"):
            pack(encs, a.packed_positions)
        return
    row = {k: v for k, v in pack(encs, a.packed_positions).items()
           if isinstance(v, torch.Tensor)}
    assert "pixel_values_videos" in row and "attention_mask" not in row
    loss, grads = _loss_and_grads(a, row)
    alone_loss, alone_grads = torch.zeros(()), {}
    for enc in encs:
        l_, g = _loss_and_grads(a, {k: v for k, v in coll([enc]).items()
                                    if isinstance(v, torch.Tensor)})
        alone_loss += l_
        for n, t in g.items():
            alone_grads[n] = alone_grads.get(n, 0) + t
    torch.testing.assert_close(loss, alone_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == alone_grads.keys()
    for n in grads:  # relative to each tensor's scale (a floor for analytically-zero ones:
        scale = float(alone_grads[n].abs().max())  # attention key biases)
        torch.testing.assert_close(grads[n], alone_grads[n], rtol=1e-4,
                                   atol=1e-5 * scale + 1e-7, msg=n)


def test_families_without_video_refuse_a_video_sample():
    no_video = [f for f in FAMILY_NAMES if f not in VIDEO_FAMILIES]
    assert no_video == ["llava"]
    for family in no_video:
        a = tiny(family)
        sample = video_sample(0, random.Random(15))
        with pytest.raises(SampleError, match=f"family '{family}' does not take video"):
            Collator(a, 512, video=VIDEO).encode(sample)
        with pytest.raises(ValueError, match="does not take video"):
            a.load_video(sample.videos[0], VIDEO)
