"""Tests for vldft.objectives against independent references."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vldft import objectives
from vldft.objectives import (
    OBJECTIVES,
    STAT_KEYS,
    ObjectiveSpec,
    compute_objective,
    objective_from_logits,
    token_weights,
)

B, T, H, V = 3, 7, 16, 50

# every objective configuration the chunked path is checked on
SPECS = {
    "sft": ObjectiveSpec("sft"),
    "dft": ObjectiveSpec("dft"),
    "dft_min_weight": ObjectiveSpec("dft", min_weight=0.1),
    "dft_alpha_half": ObjectiveSpec("dft", alpha=0.5),
    "asft": ObjectiveSpec("asft", kl_lambda=0.5),
    "chord": ObjectiveSpec("chord"),
    "eaft_top20": ObjectiveSpec("eaft", eaft_topk=20),
    "eaft_exact": ObjectiveSpec("eaft", eaft_topk=0),
    "eaft_top5_alpha2": ObjectiveSpec("eaft", eaft_topk=5, eaft_alpha=2.0),
    "dft_mix": ObjectiveSpec("dft", sft_mix=0.3),
}


# The tensors here are tiny; with 2 OpenMP threads on a 2-core machine that another process
# also uses, every parallel op can stall for a scheduler time slice (0.8 s instead of 6 ms for
# the memory test), so this module runs single-threaded.
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(dtype: torch.dtype = torch.float64, seed: int = 0, b: int = B, t: int = T):
    """Random hidden [b,t,H], weight [V,H], bias [V], labels [b,t] with -100s."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, H, generator=g, dtype=dtype, requires_grad=True)
    weight = (0.5 * torch.randn(V, H, generator=g, dtype=dtype)).requires_grad_()
    bias = (0.1 * torch.randn(V, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[0, :3] = -100  # prompt-like prefix
    labels[1, 4] = -100
    labels[2, -2:] = -100
    return hidden, weight, bias, labels


def _ref_model(hidden: torch.Tensor, seed: int = 1, h_ref: int = 12) -> dict[str, torch.Tensor]:
    """Frozen reference-model inputs for asft: ref_hidden [B,T,h_ref], ref_weight, ref_bias."""
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": hidden.dtype}
    return {"ref_hidden": torch.randn(*hidden.shape[:2], h_ref, **kw),
            "ref_weight": 0.5 * torch.randn(V, h_ref, **kw),
            "ref_bias": 0.1 * torch.randn(V, **kw)}


def _ref_kw(spec: ObjectiveSpec | str, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    name = spec if isinstance(spec, str) else spec.name
    return _ref_model(hidden) if name == "asft" else {}


def _grads(loss: torch.Tensor, *ts: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, ts))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| in fp64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------- references
def _loop_reference(hidden, weight, bias, labels, spec: ObjectiveSpec, ref=None):
    """Per-token Python loop with torch.softmax; written from the papers' formulas, independent
    of the module. Returns (loss, dict of stat sums)."""
    loss = hidden.new_zeros(())
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            z = hidden[b, t] @ weight.T + bias
            probs = torch.softmax(z, -1)
            p, ps = probs[y], float(probs[y].detach())
            entropy = -float((probs * probs.log()).sum().detach())
            if spec.name == "sft":
                w = 1.0
            elif spec.name in ("dft", "asft"):
                w = max(ps**spec.alpha, spec.min_weight)
            elif spec.name == "chord":
                w = ps * (1 - ps)
            else:  # eaft
                if spec.eaft_topk:
                    top = torch.softmax(torch.sort(z.detach(), descending=True).values[
                        : spec.eaft_topk], -1)
                    h_norm = -float((top * top.log()).sum()) / math.log(spec.eaft_topk)
                else:
                    h_norm = entropy / math.log(len(z))
                w = h_norm**spec.eaft_alpha
            w = spec.sft_mix + (1 - spec.sft_mix) * w
            loss = loss - w * torch.log(p)
            kl = 0.0
            if spec.name == "asft":
                q = torch.softmax(ref["ref_hidden"][b, t] @ ref["ref_weight"].T
                                  + ref["ref_bias"], -1)
                kl_t = (q * (q.log() - probs.log())).sum()
                loss, kl = loss + spec.kl_lambda * kl_t, float(kl_t.detach())
            for key, v in zip(STAT_KEYS, (-math.log(ps), ps, entropy, float(ps < 0.1), kl, w),
                              strict=True):
                stats[key] += v
    return loss, stats


# ----------------------------------------------------------------------------- chunked path
@pytest.mark.parametrize("key", SPECS)
def test_chunked_matches_loop_reference(key: str) -> None:
    spec = dataclasses.replace(SPECS[key], chunk_size=4)
    hidden, weight, bias, labels = _inputs()
    ref = _ref_kw(spec, hidden)
    out = compute_objective(hidden, weight, labels, spec, bias=bias, **ref)
    loop, stats = _loop_reference(hidden, weight, bias, labels, spec, ref)
    assert out.loss_sum.dtype == torch.float32
    assert out.loss_sum.item() == pytest.approx(loop.item(), rel=1e-6)
    params = (hidden, weight, bias)
    for g, r in zip(_grads(out.loss_sum, *params), _grads(loop, *params), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)
    assert set(out.stats) == set(STAT_KEYS)
    for k in STAT_KEYS:
        assert out.stats[k].item() == pytest.approx(stats[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("row_block", [128, 3])  # 3: several row blocks inside a chunk
@pytest.mark.parametrize("chunk", ["1", "7", "N", "N+5"])
@pytest.mark.parametrize("key", SPECS)
def test_chunked_matches_naive_fp32(key: str, chunk: str, row_block: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objectives, "ROW_BLOCK", row_block)
    hidden, weight, bias, labels = _inputs(torch.float32, seed=3, b=4, t=12)
    n = int((labels[:, 1:] != -100).sum())
    assert n % 7 != 0
    size = {"1": 1, "7": 7, "N": n, "N+5": n + 5}[chunk]
    ref = _ref_kw(SPECS[key], hidden)
    params = (hidden, weight, bias)
    outs = {}
    for impl in ("chunked", "naive"):
        spec = dataclasses.replace(SPECS[key], chunk_size=size, implementation=impl)
        out = compute_objective(hidden, weight, labels, spec, bias=bias, **ref)
        outs[impl] = (out, _grads(out.loss_sum, *params))
    (c, gc), (nv, gn) = outs["chunked"], outs["naive"]
    assert c.n_tokens == nv.n_tokens == n
    assert _rel(c.loss_sum, nv.loss_sum) <= 1e-5
    for a, b in zip(gc, gn, strict=True):
        assert _rel(a, b) <= 1e-5
    torch.testing.assert_close(c.probs, nv.probs, rtol=1e-5, atol=1e-7)
    for k in STAT_KEYS:
        torch.testing.assert_close(c.stats[k], nv.stats[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [False, True])
def test_sft_matches_cross_entropy(use_bias: bool) -> None:
    hidden, weight, bias, labels = _inputs()
    b = bias if use_bias else None
    params = (hidden, weight, bias) if use_bias else (hidden, weight)
    out = compute_objective(hidden, weight, labels, "sft", bias=b)

    logits = F.linear(hidden, weight, b)[:, :-1]  # full [B, T-1, V] reference
    shifted = labels[:, 1:]
    ref = F.cross_entropy(
        logits.reshape(-1, V), shifted.reshape(-1), ignore_index=-100, reduction="sum"
    )

    assert out.loss_sum.dtype == torch.float32
    assert out.n_tokens == int((shifted != -100).sum())
    torch.testing.assert_close(out.loss_sum.double(), ref, rtol=1e-5, atol=0)
    for g, r in zip(_grads(out.loss_sum, *params), _grads(ref, *params), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_dft_matches_naive_loop() -> None:
    hidden, weight, bias, labels = _inputs()
    out = compute_objective(hidden, weight, labels, "dft", bias=bias)

    ref = hidden.new_zeros(())
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            z = hidden[b, t] @ weight.T + bias
            p = torch.softmax(z, dim=-1)[y]
            ref = ref - p.detach() * torch.log(p)

    torch.testing.assert_close(out.loss_sum.double(), ref, rtol=1e-5, atol=0)
    params = (hidden, weight, bias)
    for g, r in zip(_grads(out.loss_sum, *params), _grads(ref, *params), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_dft_gradient_is_minus_grad_p() -> None:
    torch.manual_seed(1)
    z = torch.randn(1, V, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([7])
    (g_dft,) = torch.autograd.grad(objective_from_logits(z, y, "dft").loss_sum, z)
    (g_p,) = torch.autograd.grad(torch.softmax(z, -1)[0, 7], z)
    torch.testing.assert_close(g_dft, -g_p, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- closed forms
def test_closed_form_two_token_vocab() -> None:
    hidden = torch.randn(2, 5, 4)
    weight = torch.zeros(2, 4)  # uniform logits -> p = 0.5
    labels = torch.tensor([[-100, 0, 1, 1, -100], [-100, -100, 1, 0, 0]])
    n = 6
    for impl in ("chunked", "naive"):
        dft = compute_objective(hidden, weight, labels, ObjectiveSpec(implementation=impl))
        sft = compute_objective(hidden, weight, labels, "sft")
        assert dft.n_tokens == sft.n_tokens == n
        torch.testing.assert_close(sft.loss_sum, torch.tensor(n * math.log(2)))
        torch.testing.assert_close(dft.loss_sum, torch.tensor(n * math.log(2) / 2))
        torch.testing.assert_close(dft.stats["p_sum"], torch.tensor(n * 0.5))


def _loss_and_grads(spec: ObjectiveSpec, **ref):
    hidden, weight, bias, labels = _inputs()
    out = compute_objective(hidden, weight, labels, spec, bias=bias, **ref)
    return out, _grads(out.loss_sum, hidden, weight, bias)


@pytest.mark.parametrize("spec", [
    ObjectiveSpec("dft", alpha=0.0), ObjectiveSpec("dft", min_weight=1.0),
    ObjectiveSpec("dft", sft_mix=1.0), ObjectiveSpec("chord", sft_mix=1.0),
    ObjectiveSpec("eaft", sft_mix=1.0), ObjectiveSpec("eaft", eaft_alpha=0.0),
], ids=["alpha0", "min_weight1", "dft_mix1", "chord_mix1", "eaft_mix1", "eaft_alpha0"])
def test_degenerate_settings_equal_sft(spec: ObjectiveSpec) -> None:
    out, grads = _loss_and_grads(dataclasses.replace(spec, chunk_size=5))
    sft, sft_grads = _loss_and_grads(ObjectiveSpec("sft"))
    torch.testing.assert_close(out.loss_sum, sft.loss_sum, rtol=1e-6, atol=0)
    for g, r in zip(grads, sft_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)
    assert out.stats["weight_sum"].item() == pytest.approx(out.n_tokens)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_asft_with_ref_equal_to_model_is_dft(impl: str) -> None:
    hidden, weight, bias, labels = _inputs()
    ref = {"ref_hidden": hidden.detach(), "ref_weight": weight.detach(),
           "ref_bias": bias.detach()}
    out, grads = _loss_and_grads(ObjectiveSpec("asft", kl_lambda=0.7, implementation=impl),
                                 **ref)
    dft, dft_grads = _loss_and_grads(ObjectiveSpec("dft"))
    assert abs(out.stats["kl_sum"].item()) < 1e-6
    torch.testing.assert_close(out.loss_sum, dft.loss_sum, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, dft_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_zero_target_tokens(name: str, impl: str) -> None:
    hidden, weight, bias, labels = _inputs(torch.float32)
    out = compute_objective(hidden, weight, torch.full_like(labels, -100),
                            ObjectiveSpec(name, implementation=impl), bias=bias,
                            **_ref_kw(name, hidden))
    assert out.n_tokens == 0 and out.probs.shape == (0,)
    assert out.loss_sum.requires_grad
    assert out.loss_sum.item() == 0.0
    out.loss_sum.backward()
    for t in (hidden, weight, bias):
        assert t.grad is not None
        assert t.grad.shape == t.shape
        assert torch.count_nonzero(t.grad) == 0
    assert all(v.item() == 0.0 for v in out.stats.values())


@pytest.mark.parametrize("name", OBJECTIVES)
def test_stats(name: str) -> None:
    hidden, weight, bias, labels = _inputs()
    out = compute_objective(hidden, weight, labels, name, bias=bias, **_ref_kw(name, hidden))
    ce = p = ent = 0.0
    probs = []
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            dist = torch.softmax((hidden[b, t] @ weight.T + bias).detach(), -1)
            ce -= math.log(dist[y].item())
            p += dist[y].item()
            ent -= float((dist * dist.log()).sum())
            probs.append(dist[y].item())
    assert set(out.stats) == set(STAT_KEYS)
    for key, ref in (("ce_sum", ce), ("p_sum", p), ("entropy_sum", ent),
                     ("low_p_count", sum(q < 0.1 for q in probs))):
        s = out.stats[key]
        assert not s.requires_grad and s.dtype == torch.float32 and s.dim() == 0
        assert s.item() == pytest.approx(ref, rel=1e-5)
    assert out.probs.dtype == torch.float32 and not out.probs.requires_grad
    torch.testing.assert_close(out.probs, torch.tensor(probs, dtype=torch.float32))
    if name != "asft":
        assert out.stats["kl_sum"].item() == 0.0
    if name == "sft":
        assert out.stats["ce_sum"].item() == pytest.approx(out.loss_sum.item(), rel=1e-6)
        assert out.stats["weight_sum"].item() == out.n_tokens
    if name == "dft":
        assert out.stats["weight_sum"].item() == pytest.approx(p, rel=1e-5)


@pytest.mark.parametrize("chunk_size", [2048, 4])  # one chunk; several (fp32 grad_W buffer)
@pytest.mark.parametrize("key", SPECS)
def test_bf16_inputs(key: str, chunk_size: int) -> None:
    spec = dataclasses.replace(SPECS[key], chunk_size=chunk_size)
    hidden, weight, bias, labels = _inputs(torch.float32, b=4, t=12)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    ref16 = {k: v.bfloat16() for k, v in _ref_kw(spec, hidden).items()}
    out = compute_objective(h16, w16, labels, spec, **ref16)
    assert out.loss_sum.dtype == torch.float32
    # fp64 reference from the same bf16 values
    h64, w64 = (t.detach().double().requires_grad_() for t in (h16, w16))
    ref64 = {k: v.double() for k, v in ref16.items()}
    ref = compute_objective(h64, w64, labels, dataclasses.replace(spec, implementation="naive"),
                            **ref64)
    # Tolerances: the error is dominated by rounding the logits (and dz for the gradients) to
    # bf16 (8 mantissa bits, relative 2**-9 = 2e-3 per element): loss within 2e-2 relative,
    # gradients within 3e-2 in relative Frobenius norm.
    assert out.loss_sum.item() == pytest.approx(ref.loss_sum.item(), rel=2e-2)
    out.loss_sum.backward()
    ref.loss_sum.backward()
    for g, r in ((h16.grad, h64.grad), (w16.grad, w64.grad)):
        assert g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all()
        assert _rel(g, r) <= 3e-2


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("key", ["asft", "eaft_exact", "dft"])
def test_autocast_leaves_the_per_token_math_in_fp32(key: str, impl: str) -> None:
    """The training step runs the objective inside bf16 autocast (mixed precision): the entropy
    and KL row sums must stay fp32 there (autocast ran them as bf16 bmm: kl_sum 5222.000 for
    5221.444, EAFT weights off by 1e-5 relative)."""
    spec = dataclasses.replace(SPECS[key], implementation=impl, chunk_size=4)
    hidden, weight, bias, labels = _inputs(torch.float32, b=4, t=12)
    h16, w16 = hidden.detach().bfloat16(), weight.detach().bfloat16()
    ref16 = {k: v.bfloat16() for k, v in _ref_kw(spec, hidden).items()}
    plain = compute_objective(h16, w16, labels, spec, **ref16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = compute_objective(h16, w16, labels, spec, **ref16)
    for k in STAT_KEYS:
        assert auto.stats[k].item() == plain.stats[k].item(), k
    assert auto.loss_sum.item() == plain.loss_sum.item()


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_grad_accumulation_equivalence(name: str, impl: str) -> None:
    torch.manual_seed(2)
    emb = torch.randn(
        V, H, dtype=torch.float64, requires_grad=True
    )  # tied embedding / lm_head
    ids = torch.randint(0, V, (4, T))
    labels = ids.clone()
    for i, n_prompt in enumerate((1, 3, 5, 2)):  # different target counts per sample
        labels[i, :n_prompt] = -100
    labels[3, -2:] = -100
    n_per = [int((labels[i, 1:] != -100).sum()) for i in range(4)]
    assert len(set(n_per)) == 4
    n_total = sum(n_per)
    spec = ObjectiveSpec(name, chunk_size=3, implementation=impl)
    ref_all = _ref_kw(name, torch.zeros(4, T, dtype=torch.float64))

    def loss_sum(rows: slice) -> torch.Tensor:
        hidden = torch.tanh(emb[ids[rows]])  # [b, T, H]
        ref = {k: (v[rows] if k == "ref_hidden" else v) for k, v in ref_all.items()}
        return compute_objective(hidden, emb, labels[rows], spec, **ref).loss_sum

    (g_full,) = torch.autograd.grad(loss_sum(slice(0, 4)) / n_total, emb)
    g_acc = torch.zeros_like(emb)
    g_naive = torch.zeros_like(emb)
    for i in range(4):
        (g_i,) = torch.autograd.grad(loss_sum(slice(i, i + 1)), emb)
        g_acc += g_i / n_total
        g_naive += g_i / n_per[i] / 4  # mean of per-micro-batch means
    torch.testing.assert_close(g_acc, g_full, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(g_naive, g_full, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("key", ["dft", "asft", "eaft_top20"])
def test_tied_weights_tiny_model(key: str) -> None:
    """The same Parameter is the input embedding and the output head: gradients add up."""
    torch.manual_seed(4)
    emb = torch.nn.Parameter(0.5 * torch.randn(V, H, dtype=torch.float64))
    lin = torch.nn.Linear(H, H, dtype=torch.float64)
    ids = torch.randint(0, V, (3, 9))
    labels = ids.clone()
    labels[:, :3] = -100
    ref = _ref_kw(key, torch.zeros(3, 9, dtype=torch.float64))

    def run(spec: ObjectiveSpec, emb_in: torch.Tensor, emb_out: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(lin(emb_in[ids]))
        return compute_objective(hidden, emb_out, labels, spec, **ref).loss_sum

    tied = {}
    for impl in ("chunked", "naive"):
        spec = dataclasses.replace(SPECS[key], chunk_size=4, implementation=impl)
        g_tied = tied[impl] = _grads(run(spec, emb, emb), emb, lin.weight)
        e_in, e_out = (emb.detach().clone().requires_grad_() for _ in range(2))
        g_in, g_out, g_lin = _grads(run(spec, e_in, e_out), e_in, e_out, lin.weight)
        torch.testing.assert_close(g_tied[0], g_in + g_out, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_tied[1], g_lin, rtol=1e-9, atol=1e-12)
        assert g_in.abs().sum() > 0 and g_out.abs().sum() > 0
    for a, b in zip(tied["chunked"], tied["naive"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_no_grad_and_frozen_head(impl: str) -> None:
    hidden, weight, bias, labels = _inputs(torch.float32)
    spec = ObjectiveSpec("asft", implementation=impl, chunk_size=4)
    ref = _ref_kw(spec, hidden)
    out = compute_objective(hidden, weight, labels, spec, bias=bias, **ref)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            nog = compute_objective(hidden, weight, labels, spec, bias=bias, **ref)
        assert not nog.loss_sum.requires_grad
        torch.testing.assert_close(nog.loss_sum, out.loss_sum.detach())
        for k in STAT_KEYS:
            torch.testing.assert_close(nog.stats[k], out.stats[k])
    # frozen head (e.g. LoRA): only hidden gets a gradient
    frozen = compute_objective(hidden, weight.detach(), labels, spec, bias=bias.detach(), **ref)
    frozen.loss_sum.backward()
    assert hidden.grad is not None and weight.grad is None and bias.grad is None
    (g_h,) = _grads(out.loss_sum, hidden)
    torch.testing.assert_close(hidden.grad, g_h)


def test_chunked_backward_twice_raises() -> None:
    hidden, weight, _, labels = _inputs(torch.float32)
    out = compute_objective(hidden, weight, labels, "dft")
    out.loss_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        out.loss_sum.backward()


def test_asft_requires_reference() -> None:
    hidden, weight, _, labels = _inputs()
    with pytest.raises(ValueError, match="ref_hidden"):
        compute_objective(hidden, weight, labels, "asft")
    with pytest.raises(ValueError, match="reference"):
        objective_from_logits(torch.zeros(2, V), torch.zeros(2, dtype=torch.long), "asft")
    with pytest.raises(ValueError, match="entropy_norm"):
        token_weights(torch.zeros(3), "eaft")


def test_unknown_objective_raises() -> None:
    hidden, weight, _, labels = _inputs()
    for call in (
        lambda: compute_objective(hidden, weight, labels, "nope"),
        lambda: objective_from_logits(
            torch.zeros(2, V), torch.zeros(2, dtype=torch.long), "nope"
        ),
        lambda: token_weights(torch.zeros(3), "nope"),
    ):
        with pytest.raises(ValueError) as exc:
            call()
        assert all(o in str(exc.value) for o in OBJECTIVES)
        assert "nope" in str(exc.value)


@pytest.mark.parametrize("field, value", [
    ("name", "nope"), ("min_weight", -0.1), ("min_weight", 1.5), ("alpha", -1.0),
    ("alpha", float("nan")), ("kl_lambda", -0.05), ("eaft_topk", 1), ("eaft_topk", -3),
    ("eaft_topk", 2.5), ("eaft_alpha", -2.0), ("sft_mix", 1.01), ("chunk_size", 0),
    ("chunk_size", True), ("implementation", "fused"), ("alpha", "1"),
])
def test_spec_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"loss\.{field}\b"):
        ObjectiveSpec(**{field: value})


def test_spec_refuses_infinity_as_not_finite() -> None:
    with pytest.raises(ValueError, match=r"loss\.kl_lambda must be a finite number >= 0, got inf"):
        ObjectiveSpec(kl_lambda=float("inf"))


def test_spec_accepts_valid_values() -> None:
    """Boundary values are accepted, kept as given, and give the loss the formulas say: with
    sft_mix=1 every token weight is 1, so the objective is plain summed cross-entropy."""
    kw = dict(eaft_topk=0, eaft_alpha=0, alpha=2, min_weight=1, sft_mix=1, chunk_size=1,
              implementation="naive")
    spec = ObjectiveSpec("eaft", **kw)
    assert {k: getattr(spec, k) for k in kw} == kw
    hidden, weight, bias, labels = _inputs()
    out = compute_objective(hidden, weight, labels, spec, bias=bias)
    loop, stats = _loop_reference(hidden, weight, bias, labels, spec)
    logits = (hidden[:, :-1] @ weight.T + bias).reshape(-1, V)
    ce = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    assert out.loss_sum.item() == pytest.approx(ce.item(), rel=1e-6)
    assert out.loss_sum.item() == pytest.approx(loop.item(), rel=1e-6)
    assert out.stats["weight_sum"].item() == pytest.approx(stats["weight_sum"], rel=1e-6)


# ----------------------------------------------------------------------------- memory
class _RecordNumel(TorchFunctionMode):
    """Records the numel of every tensor produced by a torch function (forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out


class _RecordAten(TorchDispatchMode):
    """Records the numel of every tensor an aten op returns (forward AND backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_logits_only_for_target_tokens(name: str, impl: str) -> None:
    seq, hdim, vocab, n_target = 2048, 2, 32000, 3
    hidden = torch.randn(1, seq, hdim, requires_grad=True)
    weight = torch.randn(vocab, hdim, requires_grad=True)  # numel 2 * V < 3 * V
    labels = torch.full((1, seq), -100)
    labels[0, [10, 500, 2047]] = torch.tensor([1, 2, 3])
    ref = {"ref_hidden": torch.randn(1, seq, hdim), "ref_weight": torch.randn(vocab, hdim)}

    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    produced = _RecordNumel()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), produced:
        out = compute_objective(hidden, weight, labels, ObjectiveSpec(name, implementation=impl),
                                **(ref if name == "asft" else {}))
    out.loss_sum.backward()
    assert out.n_tokens == n_target
    # the [N_target, V] logits / log-probs exist (the mode sees them)...
    assert n_target * vocab in produced.numels
    # ...and nothing of size [B, T, V] is ever produced or saved for backward
    assert max(produced.numels) <= n_target * vocab
    assert max(saved, default=0) <= n_target * vocab
    if impl == "naive":
        assert n_target * vocab in saved  # autograd keeps the log-probs
    else:
        assert saved == []  # the chunked path saves no tensor for backward at all


@pytest.mark.parametrize("name", OBJECTIVES)
def test_chunked_memory_bound(name: str) -> None:
    """Chunked: no tensor above chunk_size * V elements in forward + backward; naive: N * V."""
    hdim, vocab, chunk = 8, 3000, 16
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 60, hdim, generator=g, requires_grad=True)
    weight = torch.randn(vocab, hdim, generator=g, requires_grad=True)
    bias = torch.randn(vocab, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (2, 60), generator=g)
    labels[:, :5] = -100
    n = int((labels[:, 1:] != -100).sum())
    ref = {"ref_hidden": torch.randn(2, 60, hdim, generator=g),
           "ref_weight": torch.randn(vocab, hdim, generator=g)} if name == "asft" else {}
    peaks = {}
    for impl in ("chunked", "naive"):
        rec = _RecordAten()
        with rec:
            out = compute_objective(hidden, weight, labels,
                                    ObjectiveSpec(name, chunk_size=chunk, implementation=impl),
                                    bias=bias, **ref)
            out.loss_sum.backward()
        peaks[impl] = max(rec.numels)
    assert n > 5 * chunk and vocab * hdim < chunk * vocab
    assert peaks["chunked"] <= chunk * vocab
    assert peaks["naive"] >= n * vocab


def test_low_p_count_threshold() -> None:
    """Targets with p = 0.05, 0.09, 0.11, 0.15, 0.5, 0.95: exactly two below 0.1."""
    p_target = torch.tensor([0.05, 0.09, 0.11, 0.15, 0.5, 0.95], dtype=torch.float64)
    vocab = 4
    probs = torch.empty(len(p_target), vocab, dtype=torch.float64)
    probs[:, 0] = p_target
    probs[:, 1:] = ((1 - p_target) / (vocab - 1))[:, None]
    logits = probs.log()
    targets = torch.zeros(len(p_target), dtype=torch.long)
    hidden = torch.cat([logits, logits.new_zeros(1, vocab)])[None]  # identity head
    labels = torch.cat([torch.tensor([-100]), targets])[None]
    for out in (objective_from_logits(logits, targets, "dft"),
                compute_objective(hidden, torch.eye(vocab, dtype=torch.float64), labels, "dft")):
        assert out.stats["low_p_count"].item() == 2
        torch.testing.assert_close(out.probs, p_target.float())


def test_bf16_many_chunks_accumulate_in_fp32() -> None:
    """256 one-row chunks: grad_W summed in bf16 would drift (~sqrt(256) * 2**-9); the fp32
    buffer keeps it at the one-chunk level (dz rounded to bf16 once per element)."""
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(1, 257, H, generator=g).bfloat16().requires_grad_()
    weight = (0.5 * torch.randn(V, H, generator=g)).bfloat16().requires_grad_()
    labels = torch.randint(0, V, (1, 257), generator=g)
    out = compute_objective(hidden, weight, labels, ObjectiveSpec("sft", chunk_size=1))
    out.loss_sum.backward()
    w64 = weight.detach().double().requires_grad_()
    ref = compute_objective(hidden.detach().double(), w64, labels, "sft")
    ref.loss_sum.backward()
    assert _rel(weight.grad, w64.grad) <= 6e-3


def test_non_contiguous_hidden_of_another_dtype() -> None:
    """hidden is a transposed (non-contiguous) fp32 view, the head fp64: same as naive."""
    hidden, weight, bias, labels = _inputs()
    base = torch.randn(T, B, H, requires_grad=True)  # fp32
    grads = {}
    for impl in ("chunked", "naive"):
        spec = ObjectiveSpec("dft", chunk_size=4, implementation=impl)
        out = compute_objective(base.transpose(0, 1), weight, labels, spec, bias=bias)
        grads[impl] = _grads(out.loss_sum, base, weight, bias)
        assert grads[impl][0].dtype == torch.float32
    for a, b in zip(grads["chunked"], grads["naive"], strict=True):
        assert _rel(a, b) <= 1e-6


def test_row_block_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU: 128-row blocks (bounded scratch); CUDA: the whole chunk in one block (fewer kernel
    launches; bench/RESULTS.md), unless ``CUDA_ROW_BLOCK`` says otherwise."""
    assert objectives.row_block(torch.device("cpu"), 1024) == objectives.ROW_BLOCK == 128
    assert objectives.row_block(torch.device("cuda"), 1024) == 1024
    monkeypatch.setattr(objectives, "CUDA_ROW_BLOCK", 128)
    assert objectives.row_block(torch.device("cuda"), 1024) == 128


@pytest.mark.parametrize("impl", ["chunked", "naive"])
@pytest.mark.parametrize("spec", [ObjectiveSpec("eaft", eaft_topk=20),
                                  ObjectiveSpec("eaft", eaft_topk=0)], ids=["top20", "exact"])
def test_fp32_entropies_hold_with_large_logits(spec: ObjectiveSpec, impl: str) -> None:
    """EAFT's entropy weights and the logged entropy of fp32 logits far from 0 (here ~30, the
    targets the confident argmax) match an fp64 reference to fp32 precision: an entropy formed
    as log-sum-exp minus sum p*z of the raw logits cancels two large numbers (the sums were
    off by ~2e-5 relative, a confident token's weight by most of itself)."""
    g = torch.Generator().manual_seed(3)
    vocab = 1000
    z = torch.randn(1, 65, vocab, generator=g, dtype=torch.float64) * 8 + 30
    labels = torch.cat([torch.tensor([[-100]]), z[0, :-1].argmax(-1)[None]], 1)
    logp = torch.log_softmax(z[0, :-1], -1)
    entropy = -(logp.exp() * logp).sum(-1)
    if spec.eaft_topk:
        lq = torch.log_softmax(z[0, :-1].topk(spec.eaft_topk, -1).values, -1)
        h = -(lq.exp() * lq).sum(-1) / math.log(spec.eaft_topk)
    else:
        h = entropy / math.log(vocab)
    if impl == "chunked":
        out = compute_objective(z.float(), torch.eye(vocab), labels, spec)
    else:
        out = objective_from_logits(z[0, :-1].float(), labels[0, 1:], spec)
    assert float(out.stats["weight_sum"]) == pytest.approx(float(h.sum()), rel=2e-6)
    assert float(out.stats["entropy_sum"]) == pytest.approx(float(entropy.sum()), rel=2e-6)
