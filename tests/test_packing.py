"""Sequence packing (vldft.packing, vldft.attention): a packed row trains exactly as its samples
one at a time, nothing crosses a sample boundary, and the stream stays resumable.

Tolerances: models run in fp32 here (the precision of the CPU runs); packed and one-at-a-time
losses agree within rtol 1e-5 and gradients within rtol 1e-4 / atol 1e-6 x the model's largest
gradient entry (the fp32 rounding of differently shaped matmuls). Attention-function
checks: 1e-5 absolute on unit-scale random inputs.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from conftest import demo_config, write_tiny_data
from PIL import Image

from vldft.adapters import load_adapter
from vldft.attention import (
    VARLEN,
    cu_seqlens_of,
    kernel_name,
    register,
    use_varlen,
    varlen_attention_forward,
)
from vldft.collate import IGNORE, Collator, Encoded
from vldft.config import ConfigError, ModelConfig
from vldft.config.sections import FAMILY_NAMES
from vldft.loader import PackCollator, PackingSampler
from vldft.packing import (
    choose_attention,
    first_fit_decreasing,
    pack,
    positions_for,
    row_lengths,
)
from vldft.step import ObjectiveModule, accumulate_gradients, count_targets

pytestmark = pytest.mark.usefixtures("one_thread")


# -- samples: different image sizes, a text-only one, a multi-turn one ------------------------
def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _turns(*pairs, image: bool = True) -> list[dict]:
    msgs = []
    for k, (q, a) in enumerate(pairs):
        content = ([{"type": "image"}] if image and k == 0 else []) + [{"type": "text", "text": q}]
        msgs += [{"role": "user", "content": content},
                 {"role": "assistant", "content": [{"type": "text", "text": a}]}]
    return msgs


def _samples():
    from vldft.data import Sample

    return [
        Sample("wide", _turns(("What is the radius?", "r = 5. Answer: 5")), [_image(112, 84, 1)]),
        Sample("text", _turns(("Only text here: 2 + 2?", "4"), image=False)),
        Sample("tall", _turns(("Find the angle.", "It is 30 degrees.")), [_image(56, 140, 2)]),
        Sample("multi", _turns(("Find x.", "x = 3. Answer: 3"), ("Why?", "Because 3 + 3 = 6.")),
               [_image(84, 84, 3)]),
    ]


_CACHE: dict = {}


def _setup(family: str):
    """(adapter, collator, encoded samples) of a tiny fp32 model, built once per family."""
    if family not in _CACHE:
        torch.manual_seed(0)
        adapter = load_adapter(ModelConfig(family=family, tiny=True, min_pixels=None,
                                           max_pixels=None))
        coll = Collator(adapter, max_length=1024)
        _CACHE[family] = adapter, coll, [coll.encode(s) for s in _samples()]
    adapter, coll, enc = _CACHE[family]
    adapter.model.config._attn_implementation = "sdpa"
    return adapter, coll, enc


def _grads(module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()
             if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return grads


def _hidden(adapter, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        return adapter.hidden_states(inputs)[0]


# -- exactness --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
@pytest.mark.parametrize("objective", ["sft", "dft"])
def test_packed_loss_and_gradients_equal_one_sample_at_a_time(family, objective):
    """One packed row of four mixed samples == the four as separate micro-batches == one padded
    micro-batch: same loss sum, target count and gradients (global normalisation)."""
    adapter, coll, enc = _setup(family)
    module, acc = ObjectiveModule(adapter), Accelerator(cpu=True)
    assert len({len(e.input_ids) for e in enc}) == 4
    packed = pack(enc, positions_for(adapter))
    assert "attention_mask" not in packed  # an all-ones mask would disable packing

    one = accumulate_gradients(module, [coll([e]) for e in enc], objective, acc)
    g_one = _grads(module)
    tot = accumulate_gradients(module, [packed], objective, acc)
    g_packed = _grads(module)
    two = accumulate_gradients(module, [pack(enc[:2], positions_for(adapter)),
                                        pack(enc[2:], positions_for(adapter))], objective, acc)
    g_two = _grads(module)
    padded = accumulate_gradients(module, [coll(enc)], objective, acc)
    g_padded = _grads(module)

    assert tot["n_tokens"] == one["n_tokens"] == two["n_tokens"] == padded["n_tokens"]
    assert tot["n_tokens"] == sum(int((e.labels[1:] != IGNORE).sum()) for e in enc)
    assert tot["n_seen"] == tot["n_slots"] == sum(len(e.input_ids) for e in enc)
    for other in (one, two, padded):
        assert tot["loss_sum"] == pytest.approx(other["loss_sum"], rel=1e-5)
    assert g_packed.keys() == g_one.keys() and len(g_packed) > 10
    # atol relative to the largest gradient of the model: some gradients are exactly zero in
    # exact arithmetic (a key bias does not change a softmax) and only fp32 noise (~1e-11)
    scale = max(float(g.abs().max()) for g in g_one.values())
    for grads in (g_one, g_two, g_padded):
        for name, a in g_packed.items():
            assert torch.allclose(a, grads[name], rtol=1e-4, atol=1e-6 * scale), name


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_positions_restart_per_sample(family):
    """Qwen2.5-VL: [4, 1, L], row 0 = 0..n-1 per sample, rows 1-3 = the model's get_rope_index
    on each sample alone; LLaVA: [1, L] restarting per sample."""
    adapter, _, enc = _setup(family)
    batch = pack(enc, positions_for(adapter))
    pos, lens = batch["position_ids"], [len(e.input_ids) for e in enc]
    assert row_lengths(batch) == lens
    if family == "llava":
        assert pos.shape == (1, sum(lens))
        assert torch.equal(pos[0], torch.cat([torch.arange(n) for n in lens]))
        return
    assert pos.shape == (4, 1, sum(lens))
    assert torch.equal(pos[0, 0], torch.cat([torch.arange(n) for n in lens]))
    start = 0
    for e in enc:  # independent: the model's rope index on the sample's own processor output
        n = len(e.input_ids)
        ref, _ = adapter.model.model.get_rope_index(
            e.input_ids[None], e.extras["mm_token_type_ids"],
            image_grid_thw=e.extras.get("image_grid_thw"))
        assert torch.equal(pos[1:, 0, start:start + n], ref[:, 0]), e.sample_id
        start += n
    text = enc[1]  # the text-only sample: plain 1-D positions on all three rows
    assert torch.equal(pos[1:, 0, lens[0]:lens[0] + lens[1]], torch.arange(lens[1]).expand(3, -1))
    image = enc[0]  # an image sample: mRoPE positions are NOT 0..n-1 (grid h/w)
    assert not torch.equal(pos[2, 0, :lens[0]], torch.arange(lens[0]))
    assert text.extras["mm_token_type_ids"].sum() == 0 < image.extras["mm_token_type_ids"].sum()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_changing_sample_b_leaves_sample_a_unchanged(family):
    """A after B in a row: a different B (text, image size and pixels) leaves A's hidden states
    as they are, and A's equal A alone. The same rows with an all-ones attention mask (which
    turns transformers' packed detection off) do leak: the test can fail."""
    adapter, coll, enc = _setup(family)
    from vldft.data import Sample

    b2 = coll.encode(Sample("b2", _turns(("A very different question, longer than before?",
                                           "Some other answer entirely. Answer: 7")),
                            [_image(140, 56, 9)]))
    a = enc[3]
    positions = positions_for(adapter)
    h1 = _hidden(adapter, pack([enc[0], a], positions))
    h2 = _hidden(adapter, pack([b2, a], positions))
    h_alone = _hidden(adapter, coll([a]))
    n0, nb = len(enc[0].input_ids), len(b2.input_ids)
    assert n0 != nb
    assert torch.allclose(h1[n0:], h2[nb:], atol=1e-5)
    assert torch.allclose(h1[n0:], h_alone, atol=1e-5)
    leaky = pack([enc[0], a], positions)
    leaky["attention_mask"] = torch.ones_like(leaky["input_ids"])
    assert (_hidden(adapter, leaky)[n0:] - h_alone).abs().max() > 1e-2


def test_boundary_label_is_never_trained():
    """The first token of every packed sample gets label -100, even when a sample's own first
    label is a target (alone, the shift drops it); target counts add up."""
    ids = torch.arange(10, 16)
    a = Encoded("a", ids, ids.clone(), {})  # every token a target
    b = Encoded("b", ids + 10, ids + 10, {})
    batch = pack([a, b], lambda e: torch.arange(len(e.input_ids))[None])
    labels = batch["labels"][0]
    assert labels[0] == IGNORE and labels[6] == IGNORE  # B's first token: not from A's last
    assert torch.equal(labels[1:6], ids[1:]) and torch.equal(labels[7:], ids[1:] + 10)
    assert count_targets(batch) == 5 + 5 == sum(count_targets({"labels": e.labels[None]})
                                                 for e in (a, b))


# -- the varlen attention function -------------------------------------------------------------
def _block_mask(seg: torch.Tensor, causal: bool) -> torch.Tensor:
    """[L, L] boolean: same segment (and j <= i if causal): the reference, built directly."""
    same = seg[:, None] == seg[None, :]
    return same & torch.ones_like(same).tril() if causal else same


class _Attn(torch.nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.is_causal = causal


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_function_equals_sdpa_with_a_block_mask(causal):
    """Packed by position restarts (language model), by cu_seq_lens (vision tower), with GQA;
    each against one SDPA call with the block(-causal) mask."""
    torch.manual_seed(0)
    lens = [5, 1, 9, 3, 14]
    L, Hq, Hkv, D = sum(lens), 4, 2, 8
    q, k, v = torch.randn(1, Hq, L, D), torch.randn(1, Hkv, L, D), torch.randn(1, Hkv, L, D)
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                         attn_mask=_block_mask(seg, causal), scale=0.3)
    ref = ref.transpose(1, 2)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    out, _ = varlen_attention_forward(_Attn(causal), q, k, v, None, scaling=0.3,
                                      position_ids=pos)
    assert torch.allclose(out, ref, atol=1e-5)
    cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
    out2, _ = varlen_attention_forward(_Attn(True), q, k, v, None, scaling=0.3,
                                       is_causal=causal, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert torch.allclose(out2, ref, atol=1e-5)


def test_varlen_function_padding_and_decoding():
    """A right-padded batch (2-D mask) equals SDPA per row on its valid tokens; a decoding call
    (1 query, cached keys, left padding) equals SDPA over the valid keys."""
    torch.manual_seed(1)
    B, H, L, D = 2, 2, 7, 4
    q, k, v = torch.randn(B, H, L, D), torch.randn(B, H, L, D), torch.randn(B, H, L, D)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    out, _ = varlen_attention_forward(_Attn(True), q, k, v, mask)
    for b, n in enumerate((7, 4)):
        ref = F.scaled_dot_product_attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n],
                                             v[b:b + 1, :, :n], is_causal=True)
        assert torch.allclose(out[b, :n], ref[0].transpose(0, 1), atol=1e-5)
    assert (out[1, 4:] == 0).all()
    left = torch.tensor([[1] * 7, [0] * 2 + [1] * 5], dtype=torch.bool)
    out, _ = varlen_attention_forward(_Attn(True), q[:, :, -1:], k, v, left)
    for b, start in enumerate((0, 2)):
        ref = F.scaled_dot_product_attention(q[b:b + 1, :, -1:], k[b:b + 1, :, start:],
                                             v[b:b + 1, :, start:])
        assert torch.allclose(out[b], ref[0].transpose(0, 1), atol=1e-5)


def test_segments_are_reused_within_a_forward_only():
    """Layers of one forward share the position tensor (segments computed once); a new tensor
    with other restarts, same shape, gets its own segments."""
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    for lens in ([2, 4], [5, 1], [2, 4]):
        pos = torch.cat([torch.arange(n) for n in lens])[None]
        seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=_block_mask(seg, True))
        for _ in range(2):  # two "layers"
            out, _ = varlen_attention_forward(_Attn(True), q, k, v, None, position_ids=pos)
            assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5), lens


def test_segments_follow_transformers_packed_rule():
    """cu_seqlens from position restarts agree with transformers' find_packed_sequence_indices."""
    from transformers.masking_utils import find_packed_sequence_indices

    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    _, cu, longest = cu_seqlens_of(1, 10, torch.device("cpu"), pos)
    ids = find_packed_sequence_indices(pos)[0]
    assert cu.tolist() == [0, *(torch.unique_consecutive(ids, return_counts=True)[1]
                                .cumsum(0).tolist())] == [0, 3, 5, 6, 10]
    assert longest == 4


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_model_with_varlen_attention_equals_sdpa_packed(family, monkeypatch):
    """The whole tiny model on a packed row with the registered varlen function (its CPU
    kernel) equals sdpa with transformers' block-causal mask; the vision towers call it once per
    layer too (Qwen2.5-VL's otherwise loops over its windows)."""
    import vldft.attention as attention

    adapter, coll, enc = _setup(family)
    batch = pack(enc, positions_for(adapter))
    h_sdpa = _hidden(adapter, batch)
    calls = []
    inner = attention.varlen
    monkeypatch.setattr(attention, "varlen", lambda q, *a: calls.append(q.shape) or inner(q, *a))
    use_varlen(adapter.model)
    try:
        assert adapter.model.config.text_config._attn_implementation == VARLEN
        h_varlen = _hidden(adapter, batch)
    finally:
        adapter.model.config._attn_implementation = "sdpa"
    assert torch.allclose(h_varlen, h_sdpa, atol=1e-5)
    vc = adapter.model.config.vision_config  # one call per layer: the tower's images (Qwen:
    # windows too) are segments of one call
    vision_layers = vc.depth if family == "qwen2_5_vl" else vc.num_hidden_layers
    assert len(calls) == vision_layers + adapter.model.config.text_config.num_hidden_layers
    n_patches = sum(calls[0][:1])
    assert calls[-1][0] == batch["input_ids"].shape[1] and n_patches > 0
    assert kernel_name("cpu", torch.bfloat16) == "sdpa_loop"


def test_packing_turns_sdpa_into_varlen_and_keeps_the_others():
    adapter, _, _ = _setup("llava")
    try:
        assert choose_attention(adapter.model, "eager") == "eager"
        assert adapter.model.config._attn_implementation == "sdpa"
        assert choose_attention(adapter.model, "sdpa") == VARLEN == register()
        assert adapter.model.config._attn_implementation == VARLEN
    finally:
        adapter.model.config._attn_implementation = "sdpa"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_generation_with_the_varlen_function_equals_sdpa(family):
    """Held-out scoring generates with the training model: left-padded prompts (a 2-D mask,
    prefill) then one token at a time with a KV cache give sdpa's tokens and scores."""
    adapter, _, _ = _setup(family)
    tok = adapter.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    prompts = tok(["A longer prompt: what is 2 + 2?", "Hi"], return_tensors="pt", padding=True)
    tok.padding_side = side
    assert (prompts["attention_mask"] == 0).any()
    outs = []
    try:
        for impl in ("sdpa", VARLEN):
            adapter.model.config._attn_implementation = "sdpa"
            if impl == VARLEN:
                use_varlen(adapter.model)
            with torch.no_grad():
                outs.append(adapter.model.generate(
                    **prompts, max_new_tokens=6, do_sample=False, output_scores=True,
                    return_dict_in_generate=True))
    finally:
        adapter.model.config._attn_implementation = "sdpa"
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].scores, outs[1].scores, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# -- bins, the stream, resume, config --------------------------------------------------------
def test_first_fit_decreasing():
    lengths = [7, 3, 5, 2, 6, 4, 1]
    bins = first_fit_decreasing(list(range(7)), lengths, 10)
    # longest first: 7 | 6 | 5 (no room left for it) ; 4 joins 6 ; 3 joins 7 ; 2 and 1 join 5
    assert bins == [[0, 1], [4, 5], [2, 3, 6]]
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert first_fit_decreasing([0, 1], [12, 3], 10) == [[0], [1]]


def test_packing_sampler_sees_every_sample_once_per_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 1500, 700).tolist()
    s = PackingSampler(lengths, 4096, 2048, seed=3, window=256)
    for epoch in (0, 1):
        s.set_position(epoch)
        bins = s.batches()
        flat = sorted(i for b in bins for i in b)
        assert flat == list(range(700))
        assert all(sum(lengths[i] for i in b) <= 4096 for b in bins)
    assert s.batch_size is None  # accelerate: micro-batches of dynamic size
    fill = sum(lengths) / (len(bins) * 4096)
    assert fill > 0.95, fill
    s.set_position(1, 5)
    assert list(s) == bins[5:]
    # processes x grad_accum = 8: a whole number of steps per epoch, still every sample once
    s8 = PackingSampler(lengths, 4096, 2048, seed=3, window=256, multiple_of=8)
    bins8 = s8.batches()
    assert len(bins8) % 8 == 0 and len(bins) <= len(bins8) < len(bins) + 8
    assert sorted(i for b in bins8 for i in b) == list(range(700))


def test_stream_of_packed_micro_batches_resumes_exactly(tmp_path):
    """The real loader (demo data, data.packing): each row within pack_tokens by actual length,
    every sample once per epoch; a stream restarted at a saved position yields the same rows."""
    from vldft.data.mix import build_training_set
    from vldft.loader import build_loader, micro_batch_stream
    from vldft.state import RunState

    data = write_tiny_data(tmp_path / "train.jsonl", 24)
    cfg = demo_config(f"data.train_files=[{data}]", "data.packing=true", "data.pack_tokens=512",
                      "data.max_length=256", "data.heldout_file=null")
    adapter = load_adapter(cfg.model)
    training = build_training_set(cfg, adapter)
    coll = Collator(adapter, cfg.data.max_length, cfg.data.overlong, cfg.data.train_on)
    loader, sampler = build_loader(cfg, training, coll)
    assert isinstance(loader.collate_fn, PackCollator)
    n_bins = len(sampler)
    state = RunState()
    stream = micro_batch_stream(loader, sampler, state, world=1)
    rows = [next(stream) for _ in range(n_bins + 2)]  # one epoch and two rows of the next
    first_epoch = rows[:n_bins]
    assert sum(b["n_packed"] for b in first_epoch) == 24
    assert all(b["input_ids"].shape[1] <= 512 for b in rows)
    assert max(b["n_packed"] for b in rows) > 1
    resumed = RunState(pos={"epoch": 0, "consumed": n_bins - 1})
    again = micro_batch_stream(loader, sampler, resumed, world=1)
    for want in rows[n_bins - 1:]:
        got = next(again)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["position_ids"], want["position_ids"])
    assert resumed.pos == state.pos == {"epoch": 1, "consumed": 2}


def test_a_family_without_per_sample_positions_is_refused():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="no per-sample positions for model family 'other'"):
        positions_for(SimpleNamespace(family="other"))


def test_config_pack_tokens_must_hold_a_sample():
    with pytest.raises(ConfigError, match=r"data.max_length \(512\) > data.pack_tokens \(256\)"):
        demo_config("data.packing=true", "data.pack_tokens=256")
    assert demo_config("data.pack_tokens=256").data.packing is False  # unused when off


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_attn_implementation_varlen_on_padded_batches(family, tmp_path):
    """model.attn_implementation=varlen: a right-padded micro-batch of mixed samples through
    the varlen function equals sdpa on every valid token (every family); the saved checkpoint
    names a transformers implementation, not vldft's."""
    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(family=family, tiny=True, attn_implementation="varlen"))
    assert adapter.model.config._attn_implementation == VARLEN
    assert adapter.model.config.get_text_config()._attn_implementation == VARLEN
    coll = Collator(adapter, max_length=1024)
    samples = [s for s in _samples() if family != "qwen3_5" or s.id != "multi"]  # (1 turn only)
    batch = coll([coll.encode(s) for s in samples])
    valid = batch["attention_mask"].bool()
    assert not valid.all()  # padded
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        h_varlen = adapter.hidden_states(inputs)
        adapter.model.config._attn_implementation = "sdpa"
        h_sdpa = adapter.hidden_states(inputs)
    assert torch.allclose(h_varlen[valid], h_sdpa[valid], atol=1e-5)
    adapter.model.config._attn_implementation = VARLEN
    adapter.model.save_pretrained(tmp_path)
    assert "vldft" not in (tmp_path / "config.json").read_text()
