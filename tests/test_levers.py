"""The speed / memory levers (vldft.levers, vldft.attention.Segments) on the CPU: each is exact
(same loss and gradients as the plain path, tiny models in fp32) and does what it is for
(segments computed once, no per-layer sync, a frozen tower without autograd, fewer
recomputed matmuls); the config refuses what cannot work, naming the key.

Also the reference / comparison helpers that tests/test_gpu.py uses on CUDA
(:func:`rel_l2`, :func:`segment_reference`, :func:`leaky`, :func:`worst_rel_l2`), checked here
on the CPU, a deliberate one-token cross-sample leak included, so they cannot silently be
wrong.

Tolerances: fp32 paths that run the same kernels on the same values agree to rounding
(rtol 1e-5, atol 1e-6 x the largest gradient entry); the helpers' rel-L2 bound is 1e-5 on the
CPU (fp32) and the leak moves it by > 1e-2.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from test_packing import _samples

from vldft.adapters import load_adapter
from vldft.attention import (
    SEGMENTS,
    Segments,
    cu_seqlens_of,
    segments_of,
    use_varlen,
    varlen,
    varlen_attention_forward,
)
from vldft.collate import Collator
from vldft.config import ConfigError, ModelConfig, TrainConfig
from vldft.levers import compile_regional, inputs_on, vision_no_grad
from vldft.loader import PackCollator, SegmentCollator
from vldft.packing import pack, packed_segments, positions_for
from vldft.step import ObjectiveModule, accumulate_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers shared with tests/test_gpu.py ----------------------------------------------------
def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in fp32 (L2 over every entry): an error relative to the signal."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def worst_rel_l2(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
                 ) -> tuple[float, str]:
    """The largest :func:`rel_l2` over the gradients of ``ref`` (all of which ``got`` must
    have; an all-zero reference gradient compares absolutely) and its parameter's name."""
    assert got.keys() == ref.keys(), set(got) ^ set(ref)
    worst = (0.0, "")
    for name, r in ref.items():
        err = rel_l2(got[name], r) if r.norm() > 0 else float(got[name].detach().float().norm())
        worst = max(worst, (err, name))
    return worst


def worst_segment_rel_l2(got: torch.Tensor, ref: torch.Tensor, cu: torch.Tensor) -> float:
    """The largest L2 error of a segment (``cu`` cuts dim 0 of ``got`` / ``ref``) relative to
    the signal of as many rows of ``ref`` on average (``|ref| x sqrt(rows / all rows)``): a
    one-token leak is diluted in a long row but not in its own segment, and a segment whose
    exact values are ~0 (dq of a one-token causal segment) does not divide by ~0."""
    got, ref = got.detach().float(), ref.detach().float()
    bounds, total = cu.tolist(), ref.shape[0]
    per_row = ref.norm() / total ** 0.5
    return max(float((got[a:b] - ref[a:b]).norm() / (per_row * (b - a) ** 0.5))
               for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a)


def segment_reference(q, k, v, cu: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    """Attention of packed ``q`` ``[T, Hq, D]``, ``k`` / ``v`` ``[T, Hkv, D]`` as ONE dense fp32
    SDPA call with a block(-causal) mask built from ``cu`` ``[N + 1]``: independent of the
    per-segment loop and of any varlen kernel; differentiable (dq, dk, dv)."""
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1, device=q.device),
                                  (cu[1:] - cu[:-1]).long())
    allowed = seg[:, None] == seg[None, :]
    if causal:
        allowed = allowed & torch.ones_like(allowed).tril()
    rep = q.shape[1] // k.shape[1]
    qh, kh, vh = (t.float().transpose(0, 1) for t in (q, k.repeat_interleave(rep, 1),
                                                        v.repeat_interleave(rep, 1)))
    out = F.scaled_dot_product_attention(qh[None], kh[None], vh[None], attn_mask=allowed,
                                         scale=scale)
    return out[0].transpose(0, 1)


def leaky(cu: torch.Tensor, boundary: int = 1) -> torch.Tensor:
    """``cu`` with one boundary moved one token later: the first token of segment
    ``boundary`` joins the segment before it (a one-token cross-sample leak)."""
    out = cu.clone()
    out[boundary] += 1
    return out


def _qkv(lens, hq=4, hkv=2, dim=8, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    total = sum(lens)
    q, k, v = (torch.randn(total, h, dim, generator=g).to(device, dtype)
               for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                      device=device)
    return q, k, v, cu


def varlen_grads(fn, q, k, v, cu, causal: bool, scale: float, seed: int = 1):
    """Output and (dq, dk, dv) of ``fn(q, k, v, cu, causal, scale)`` under a fixed random
    upstream gradient (fp32 results)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, cu, causal, scale)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), up)
    return [t.float() for t in (out, dq, dk, dv)]


def test_helpers_catch_a_one_token_leak_and_pass_the_real_kernel():
    """The CPU varlen path (per-segment SDPA) vs the dense block-mask reference: output and
    dq / dk / dv within 1e-5 rel-L2; the same reference with a one-token leak is > 1e-2 off."""
    lens, scale = [5, 1, 9, 3, 14], 0.3
    q, k, v, cu = _qkv(lens)
    for causal in (True, False):
        got = varlen_grads(lambda *a: varlen(*a[:4], max(lens), *a[4:]), q, k, v, cu, causal,
                           scale)
        ref = varlen_grads(segment_reference, q, k, v, cu, causal, scale)
        bad = varlen_grads(segment_reference, q, k, v, leaky(cu, 3), causal, scale)
        for g, r, b in zip(got, ref, bad, strict=True):
            assert rel_l2(g, r) < 1e-5 and worst_segment_rel_l2(g, r, cu) < 1e-5
            assert rel_l2(g, b) > 1e-2  # the leak is visible in every one of them
            assert worst_segment_rel_l2(g, b, cu) > 1e-1
    grads = {"a": torch.ones(3), "zero": torch.zeros(2)}
    assert worst_rel_l2(grads, grads)[0] == 0.0
    assert worst_rel_l2({"a": torch.ones(3), "zero": torch.ones(2)}, grads)[1] == "zero"


@pytest.mark.parametrize("causal", [True, False])
def test_the_gpu_varlen_backward_check_runs_on_the_cpu(causal):
    """tests/test_gpu.py's kernel check, here on the per-segment SDPA loop in fp32."""
    from test_gpu import check_varlen_backward

    check_varlen_backward("cpu", torch.float32, 4, 2, 16, causal, 1e-5)


def test_the_gpu_training_checks_run_on_the_cpu():
    """tests/test_gpu.py's packed-training and lever checks, on the CPU under bf16 autocast
    (the varlen function's loop; Liger and inductor compile are GPU / slow-only)."""
    from test_gpu import TOL_BF16, check_lever, check_packed_training

    check_packed_training("cpu", TOL_BF16)
    for lever in ("vision_no_grad", "selective", "segments"):
        check_lever("cpu", lever)


# -- segments once per micro-batch ------------------------------------------------------------
_ADAPTERS: dict = {}


def _tiny(family: str):
    """(adapter, collator, encoded samples) of a tiny fp32 model (built once per family)."""
    if family not in _ADAPTERS:
        torch.manual_seed(0)
        adapter = load_adapter(ModelConfig(family=family, tiny=True))
        coll = Collator(adapter, max_length=1024)
        _ADAPTERS[family] = adapter, coll, [coll.encode(s) for s in _samples()]
    return _ADAPTERS[family]


def _grads(module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in module.named_parameters()
           if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def _assert_same(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys() and len(ref) > 5
    scale = max(float(g.abs().max()) for g in ref.values())
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_segments_follow_the_attention_rule():
    """Precomputed segments equal what the attention function derives: position restarts of a
    packed row, valid tokens of a padded batch (restarts then ignored), whole rows."""
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    seg = packed_segments({"input_ids": torch.zeros(1, 10, dtype=torch.long),
                           "position_ids": torch.stack([pos, pos, pos, pos])})  # [4, 1, L]
    assert seg.cu.tolist() == [0, 3, 5, 6, 10] and seg.max_len == 4 and seg.index is None
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    seg = segments_of((3, 4), valid=mask)
    index, cu, longest = cu_seqlens_of(3, 4, torch.device("cpu"), None, mask)
    assert seg.cu.tolist() == cu.tolist() == [0, 3, 5] and seg.max_len == longest == 3
    assert seg.index.tolist() == index.tolist() == [0, 1, 2, 4, 5]
    whole = segments_of((2, 4))
    assert whole.cu.tolist() == [0, 4, 8] and whole.index is None and whole.shape == (2, 4)
    moved = whole.to("cpu")
    assert moved.cu.equal(whole.cu) and (moved.max_len, moved.shape) == (4, (2, 4))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
@pytest.mark.parametrize("kind", ["packed", "padded"])
def test_precomputed_segments_replace_every_layers_own(family, kind, monkeypatch):
    """With the collator's segments no language-model layer derives segments (their hidden
    states, loss and gradients are those of the per-layer path); the vision tower's calls are
    untouched; a micro-batch without them (eval, generate) still works."""
    import vldft.attention as attention

    adapter, coll, enc = _tiny(family)
    use_varlen(adapter.model)
    try:
        if kind == "packed":
            with_seg = PackCollator(coll, 4096, segments=True)(enc)
            plain = PackCollator(coll, 4096)(enc)
        else:
            with_seg, plain = SegmentCollator(coll)(enc), coll(enc)
        assert SEGMENTS in with_seg and SEGMENTS not in plain
        module, acc = ObjectiveModule(adapter), Accelerator(cpu=True)
        ref = accumulate_gradients(module, [plain], "dft", acc)
        g_ref = _grads(module)
        inner = attention._segments

        def only_vision(batch, length, device, position_ids, mask):
            assert position_ids is None and mask is None, "a text layer derived segments"
            return inner(batch, length, device, position_ids, mask)

        monkeypatch.setattr(attention, "_segments", only_vision)
        got = accumulate_gradients(module, [with_seg], "dft", acc)
        _assert_same(_grads(module), g_ref)
        assert got["loss_sum"] == pytest.approx(ref["loss_sum"], rel=1e-6)
        assert got["n_tokens"] == ref["n_tokens"]
    finally:
        adapter.model.config._attn_implementation = "sdpa"


def test_vision_calls_read_no_device_value_per_layer(monkeypatch):
    """Qwen2.5-VL's tower passes one cu_seqlens tensor as q and k: no torch.equal (a GPU->CPU
    sync per vision layer on CUDA); segments of another batch shape are refused."""
    adapter, coll, enc = _tiny("qwen2_5_vl")
    use_varlen(adapter.model)
    try:
        def no_equal(*a):
            raise AssertionError("torch.equal in a vision layer")

        monkeypatch.setattr(torch, "equal", no_equal)
        batch = coll(enc[:1])
        with torch.no_grad():
            adapter.hidden_states({k: v for k, v in batch.items()
                                   if isinstance(v, torch.Tensor) and k != "labels"})
    finally:
        adapter.model.config._attn_implementation = "sdpa"
    q = torch.randn(1, 2, 6, 4)
    wrong = segments_of((1, 5))
    with pytest.raises(ValueError, match="precomputed segments"):
        varlen_attention_forward(types.SimpleNamespace(is_causal=True), q, q, q, None,
                                 position_ids=torch.arange(6)[None], vldft_segments=wrong)


def test_without_precomputed_segments_a_padded_forward_derives_them_once(monkeypatch):
    """The fallback (eval, generate): a padded Qwen batch has no text positions, only a mask;
    its segments are computed by the first layer and reused by the others."""
    import vldft.attention as attention

    adapter, coll, enc = _tiny("qwen2_5_vl")
    calls = []
    inner = attention.cu_seqlens_of
    monkeypatch.setattr(attention, "cu_seqlens_of", lambda *a: calls.append(a[3]) or inner(*a))
    use_varlen(adapter.model)
    try:
        batch = coll(enc)
        assert not batch["attention_mask"].bool().all()
        with torch.no_grad():
            adapter.hidden_states({k: v for k, v in batch.items()
                                   if isinstance(v, torch.Tensor) and k != "labels"})
    finally:
        adapter.model.config._attn_implementation = "sdpa"
    assert calls == [None]  # once, from the mask (the vision tower brings its own)


def test_mixed_precision_reaches_the_varlen_kernel(monkeypatch):
    """fp32 weights under bf16 autocast (the shipped recipes): RoPE's fp32 cos / sin promote
    the language model's q / k to fp32; the varlen function casts them to the autocast dtype
    as sdpa does, so on CUDA its kernel runs (not the per-segment loop, a host sync per layer),
    and the hidden states are sdpa's under the same autocast."""
    import vldft.attention as attention

    adapter, _, enc = _tiny("qwen2_5_vl")
    batch = pack(enc, positions_for(adapter))
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    dtypes = []
    inner = attention.varlen
    monkeypatch.setattr(attention, "varlen", lambda q, *a: dtypes.append(q.dtype) or inner(q, *a))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        h_sdpa = adapter.hidden_states(inputs)
        use_varlen(adapter.model)
        try:
            h_varlen = adapter.hidden_states({**inputs, SEGMENTS: packed_segments(batch)})
        finally:
            adapter.model.config._attn_implementation = "sdpa"
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert attention.kernel_name("cuda", torch.bfloat16) != "sdpa_loop"
    assert rel_l2(h_varlen, h_sdpa) < 2e-2


@pytest.mark.parametrize("overrides", [["data.packing=true"], ["model.attn_implementation=varlen"],
                                       ["data.packing=true", "model.precompute_segments=false"],
                                       []])
def test_the_loader_adds_segments_where_the_varlen_function_reads_them(overrides, tmp_path):
    """Packed rows and padded varlen batches carry their segments (matching their own positions
    / mask); with the switch off, or with sdpa on padded batches, none are made."""
    from conftest import demo_config, write_tiny_data

    from vldft.data.mix import build_training_set
    from vldft.loader import build_loader

    data = write_tiny_data(tmp_path / "train.jsonl", 6)
    cfg = demo_config(f"data.train_files=[{data}]", "data.pack_tokens=512",
                      "data.max_length=256", "data.heldout_file=null", *overrides)
    adapter = load_adapter(cfg.model)
    coll = Collator(adapter, cfg.data.max_length, cfg.data.overlong, cfg.data.train_on)
    loader, _ = build_loader(cfg, build_training_set(cfg, adapter), coll)
    batch = next(iter(loader))
    want = cfg.model.precompute_segments and (cfg.data.packing
                                              or cfg.model.attn_implementation == "varlen")
    assert (SEGMENTS in batch) == want
    if want:
        seg = batch[SEGMENTS]
        ref = (packed_segments(batch) if cfg.data.packing else
               segments_of(tuple(batch["input_ids"].shape), valid=batch["attention_mask"]))
        assert seg.cu.equal(ref.cu) and seg.max_len == ref.max_len
        assert seg.shape == tuple(batch["input_ids"].shape)


def test_inputs_on_carries_the_segments():
    seg = segments_of((1, 3))
    inputs = inputs_on({"input_ids": torch.zeros(1, 3), SEGMENTS: seg, "n_packed": 1}, "cpu")
    assert set(inputs) == {"input_ids", SEGMENTS} and isinstance(inputs[SEGMENTS], Segments)


# -- a frozen vision tower without autograd ---------------------------------------------------
def _cfg(**model):
    return types.SimpleNamespace(model=ModelConfig(tiny=True, **model), train=TrainConfig())


def _prepared(family: str, **model):
    """A tiny fp32 model prepared by ``step.prepare_model`` with ``model`` settings."""
    from vldft.step import prepare_model

    torch.manual_seed(0)
    cfg = _cfg(family=family, **model)
    adapter = load_adapter(cfg.model)
    prepare_model(adapter, cfg, lambda *a: None)
    return adapter


def _vision_blocks(adapter) -> list[torch.nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    root = adapter.model.get_submodule(adapter.vision_prefixes[0].rstrip("."))
    return [m for m in root.modules() if isinstance(m, GradientCheckpointingLayer)]


def _run(adapter, batch) -> tuple[torch.Tensor, dict, int, int]:
    """Loss, gradients, tensors saved for backward, and the vision blocks' Linear layers run
    during backward (a recomputed block calls its layers, not its own hooks)."""
    module = ObjectiveModule(adapter).train()
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1))
             for b in _vision_blocks(adapter) for m in b.modules()
             if isinstance(m, torch.nn.Linear)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        loss, _, _ = module(batch, "dft")
    n_forward = len(calls)
    loss.backward()
    for h in hooks:
        h.remove()
    assert n_forward > 0
    return loss.detach(), _grads(adapter.model), len(saved), len(calls) - n_forward


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_frozen_vision_tower_without_autograd_is_exact(family):
    """freeze [vision] + gradient checkpointing (the shipped recipes): the tower's blocks are
    no longer recomputed or backpropagated in backward and fewer tensors are saved, while the
    loss and every trainable gradient (the projector's included) are unchanged."""
    plain = _prepared(family, freeze=["vision"], gradient_checkpointing=True,
                      vision_no_grad=False)
    lever = _prepared(family, freeze=["vision"], gradient_checkpointing=True)
    lever.model.load_state_dict(plain.model.state_dict())
    _, coll, enc = _tiny(family)
    batch = {k: v for k, v in coll(enc).items() if isinstance(v, torch.Tensor)}
    loss_p, g_p, saved_p, recomputed_p = _run(plain, batch)
    loss_l, g_l, saved_l, recomputed_l = _run(lever, batch)
    torch.testing.assert_close(loss_l, loss_p, rtol=1e-6, atol=0)
    assert any(lever.part_of(n) == "projector" for n in g_l)
    _assert_same(g_l, g_p)
    assert recomputed_p > 0 and recomputed_l == 0
    assert saved_l < saved_p


def test_vision_no_grad_switch_and_its_refusals():
    adapter = _prepared("qwen2_5_vl", freeze=["vision"])  # auto: on
    assert all(m.forward.__func__.__name__ == "run" for m in _vision_blocks(adapter))
    assert "forward" not in vars(adapter.model.model.visual.merger)  # the projector trains
    copy = __import__("copy").deepcopy(adapter.model)  # ASFT's reference: its own weights
    block = copy.model.visual.blocks[0]
    assert block.forward.__self__ is block
    off = _prepared("qwen2_5_vl", freeze=["projector"])  # auto: off (the tower trains)
    assert all("forward" not in vars(m) for m in _vision_blocks(off))
    with pytest.raises(ConfigError, match="model.vision_no_grad"):
        vision_no_grad(off, True)
    with pytest.raises(ConfigError, match="model.vision_no_grad"):
        ModelConfig(tiny=True, vision_no_grad=True).validate()


# -- selective activation checkpointing -------------------------------------------------------
class _CountMatmuls(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func._schema.name in ("aten::mm", "aten::addmm", "aten::bmm")
        return func(*args, **(kwargs or {}))


def test_selective_checkpointing_is_exact_and_recomputes_no_kept_matmul():
    """Loss and gradients of selective checkpointing (attention + matmul kept, or attention
    only) equal those without checkpointing; full checkpointing runs extra matmuls in backward
    (the recomputed forward), selective with matmul kept runs none."""
    _, coll, enc = _tiny("qwen2_5_vl")
    batch = {k: v for k, v in coll(enc[:2]).items() if isinstance(v, torch.Tensor)}
    results = {}
    for name, mode, keep in (("none", False, None), ("full", True, None),
                             ("selective", "selective", ["attention", "matmul"]),
                             ("attention", "selective", ["attention"])):
        adapter = _prepared("qwen2_5_vl", gradient_checkpointing=mode,
                            **({"checkpoint_keep": keep} if keep else {}))
        module = ObjectiveModule(adapter).train()
        loss, _, _ = module(batch, "dft")
        with _CountMatmuls() as count:
            loss.backward()
        results[name] = loss.detach(), _grads(module), count.n
    loss0, g0, mm0 = results["none"]
    for name in ("full", "selective", "attention"):
        torch.testing.assert_close(results[name][0], loss0, rtol=1e-6, atol=0)
        _assert_same(results[name][1], g0)
    assert results["full"][2] > mm0 and results["selective"][2] == mm0
    assert results["attention"][2] > mm0


def test_checkpointing_uses_transformers_current_name():
    """transformers >= 5.25 renamed gradient_checkpointing_enable (the old name warns a
    FutureWarning on every run); vldft calls the current name where it exists."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        adapter = _prepared("qwen2_5_vl", gradient_checkpointing=True)
    model = adapter.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert not [w for w in seen if "gradient_checkpointing_enable" in str(w.message)], \
        [str(w.message) for w in seen]


def test_checkpoint_keep_is_checked():
    with pytest.raises(ConfigError, match="model.checkpoint_keep"):
        ModelConfig(tiny=True, checkpoint_keep=["softmax"]).validate()
    with pytest.raises(ConfigError, match="model.checkpoint_keep"):
        ModelConfig(tiny=True, checkpoint_keep=[]).validate()


# -- Liger and compile ------------------------------------------------------------------------
def test_liger_is_refused_where_it_cannot_run(monkeypatch):
    import importlib.util

    from vldft.levers import apply_liger

    adapter, _, _ = _tiny("llava")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.liger.*no CUDA"):
        apply_liger(adapter.model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(ConfigError, match="train.liger: cannot import liger_kernel"):
            apply_liger(adapter.model)
        with pytest.raises(ConfigError, match="train.liger"):
            TrainConfig(liger=True).validate()


def test_regional_compile_with_selective_checkpointing_is_refused_before_the_model_loads():
    from conftest import demo_config

    with pytest.raises(ConfigError, match="train.compile: regional with model.gradient_"):
        demo_config("model.gradient_checkpointing=selective", "train.compile=regional")


def test_config_reads_the_lever_keys():
    from conftest import demo_config

    cfg = demo_config("model.gradient_checkpointing=selective", "model.vision_no_grad=false",
                      "model.precompute_segments=false")
    assert cfg.model.gradient_checkpointing == "selective" and cfg.model.vision_no_grad is False
    assert cfg.model.precompute_segments is False
    assert demo_config("train.compile=regional").train.compile == "regional"
    with pytest.raises(ConfigError, match="model.gradient_checkpointing"):
        demo_config("model.gradient_checkpointing=some")
    with pytest.raises(ConfigError, match="train.compile"):
        demo_config("train.compile=full")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor",
                                                               marks=pytest.mark.slow)])
def test_regional_compile_is_exact(backend):
    """``train.compile: regional`` on every decoder layer and vision block, with gradient
    checkpointing and the frozen tower: same loss and gradients as eager. ``aot_eager``
    (dynamo + AOTAutograd, ~10 s) by default; ``inductor`` builds C++ kernels (~70 s)."""
    from torch._dynamo.utils import counters

    _, coll, enc = _tiny("llava")
    batch = {k: v for k, v in coll(enc[:2]).items() if isinstance(v, torch.Tensor)}
    results = []
    torch._dynamo.reset()
    counters.clear()
    for compiled in (False, True):
        adapter = _prepared("llava", freeze=["vision"], gradient_checkpointing=True)
        if compiled:
            assert compile_regional(adapter.model, backend=backend) == (
                adapter.model.config.text_config.num_hidden_layers
                + adapter.model.config.vision_config.num_hidden_layers)
        module = ObjectiveModule(adapter).train()
        loss, _, _ = module(batch, "dft")
        loss.backward()
        results.append((loss.detach(), _grads(module)))
    assert counters["stats"]["unique_graphs"] > 0  # the compiled regions ran
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=0)
    _assert_same(results[1][1], results[0][1])


def test_liger_report_counts_patched_modules_and_names_swapped_functions_never_called(
        tmp_path, monkeypatch):
    """``train.liger``'s log line: the modules running a Liger forward, by class, and the
    functions Liger swapped into the model's modeling module that the module never calls
    (liger-kernel 0.8.5's mRoPE for transformers 5's Qwen2.5-VL: patched, never run). A fake
    modeling module and a fake Liger module stand in (liger-kernel needs CUDA to patch)."""
    import importlib

    from vldft.levers import liger_report

    (tmp_path / "liger_fake.py").write_text(
        "def norm_forward(self, x):\n    return x\n\n"
        "def rope(q):\n    return q\n\n"
        "def old_rope(q):\n    return q\n")
    (tmp_path / "fake_modeling.py").write_text(
        "from torch import nn\n\n"
        "def rope(q):\n    return q\n\n"
        "def old_rope(q):  # defined, never called\n    return q\n\n"
        "class Norm(nn.Module):\n    def forward(self, x):\n        return x\n\n"
        "class Model(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.a, self.b, self.c = Norm(), Norm(), nn.Linear(2, 2)\n\n"
        "    def forward(self, q):\n        return rope(self.a(q))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    liger, modeling = (importlib.import_module(m) for m in ("liger_fake", "fake_modeling"))
    model = modeling.Model()
    assert liger_report(model) == "Liger-Kernel forwards in 0 modules ()"
    for m in (model.a, model.b):
        m.forward = types.MethodType(liger.norm_forward, m)
    monkeypatch.setattr(modeling, "rope", liger.rope)
    assert liger_report(model) == "Liger-Kernel forwards in 2 modules (Norm 2)"
    monkeypatch.setattr(modeling, "old_rope", liger.old_rope)
    assert liger_report(model) == ("Liger-Kernel forwards in 2 modules (Norm 2); swapped but "
                                   "never called by this transformers' Model: old_rope")
