"""Tests for vldft.objectives against independent references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vldft.objectives import (
    OBJECTIVES,
    compute_objective,
    objective_from_logits,
    token_weights,
)

B, T, H, V = 3, 7, 16, 50


def _inputs(dtype: torch.dtype = torch.float64, seed: int = 0):
    """Random hidden [B,T,H], weight [V,H], bias [V], labels [B,T] with -100s."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype, requires_grad=True)
    weight = (0.5 * torch.randn(V, H, generator=g, dtype=dtype)).requires_grad_()
    bias = (0.1 * torch.randn(V, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100  # prompt-like prefix
    labels[1, 4] = -100
    labels[2, -2:] = -100
    return hidden, weight, bias, labels


def _grads(loss: torch.Tensor, *ts: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, ts))


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


def test_closed_form_two_token_vocab() -> None:
    hidden = torch.randn(2, 5, 4)
    weight = torch.zeros(2, 4)  # uniform logits -> p = 0.5
    labels = torch.tensor([[-100, 0, 1, 1, -100], [-100, -100, 1, 0, 0]])
    n = 6
    dft = compute_objective(hidden, weight, labels, "dft")
    sft = compute_objective(hidden, weight, labels, "sft")
    assert dft.n_tokens == sft.n_tokens == n
    torch.testing.assert_close(sft.loss_sum, torch.tensor(n * math.log(2)))
    torch.testing.assert_close(dft.loss_sum, torch.tensor(n * math.log(2) / 2))
    torch.testing.assert_close(dft.stats["p_sum"], torch.tensor(n * 0.5))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_zero_target_tokens(name: str) -> None:
    hidden, weight, bias, labels = _inputs(torch.float32)
    out = compute_objective(
        hidden, weight, torch.full_like(labels, -100), name, bias=bias
    )
    assert out.n_tokens == 0
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
    out = compute_objective(hidden, weight, labels, name, bias=bias)
    ce = p = ent = 0.0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            probs = torch.softmax((hidden[b, t] @ weight.T + bias).detach(), -1)
            ce -= math.log(probs[y].item())
            p += probs[y].item()
            ent -= float((probs * probs.log()).sum())
    assert set(out.stats) == {"ce_sum", "p_sum", "entropy_sum"}
    for key, ref in (("ce_sum", ce), ("p_sum", p), ("entropy_sum", ent)):
        s = out.stats[key]
        assert not s.requires_grad and s.dtype == torch.float32 and s.dim() == 0
        assert s.item() == pytest.approx(ref, rel=1e-5)
    if name == "sft":
        assert out.stats["ce_sum"].item() == pytest.approx(
            out.loss_sum.item(), rel=1e-6
        )


@pytest.mark.parametrize("name", OBJECTIVES)
def test_bf16_inputs(name: str) -> None:
    hidden, weight, _, labels = _inputs(torch.float32)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    out = compute_objective(h16, w16, labels, name)
    assert out.loss_sum.dtype == torch.float32
    # fp64 reference from the same bf16 values
    mask = labels[:, 1:] != -100
    logp = torch.log_softmax(
        h16.detach().double()[:, :-1][mask] @ w16.detach().double().T, -1
    )
    logp = logp.gather(-1, labels[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
    ref = -(logp.exp() * logp).sum() if name == "dft" else -logp.sum()
    # error is dominated by rounding the logits to bf16 before the fp32 log-softmax
    assert out.loss_sum.item() == pytest.approx(ref.item(), rel=2e-2)
    out.loss_sum.backward()
    assert (
        h16.grad is not None
        and h16.grad.dtype == torch.bfloat16
        and torch.isfinite(h16.grad).all()
    )
    assert (
        w16.grad is not None
        and w16.grad.dtype == torch.bfloat16
        and torch.isfinite(w16.grad).all()
    )


@pytest.mark.parametrize("name", OBJECTIVES)
def test_grad_accumulation_equivalence(name: str) -> None:
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

    def loss_sum(rows: slice) -> torch.Tensor:
        hidden = torch.tanh(emb[ids[rows]])  # [b, T, H]
        return compute_objective(hidden, emb, labels[rows], name).loss_sum

    (g_full,) = torch.autograd.grad(loss_sum(slice(0, 4)) / n_total, emb)
    g_acc = torch.zeros_like(emb)
    g_naive = torch.zeros_like(emb)
    for i in range(4):
        (g_i,) = torch.autograd.grad(loss_sum(slice(i, i + 1)), emb)
        g_acc += g_i / n_total
        g_naive += g_i / n_per[i] / 4  # mean of per-micro-batch means
    torch.testing.assert_close(g_acc, g_full, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(g_naive, g_full, rtol=1e-3, atol=1e-6)


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


@pytest.mark.parametrize("name", OBJECTIVES)
def test_logits_only_for_target_tokens(name: str) -> None:
    seq, hdim, vocab, n_target = 2048, 2, 32000, 3
    hidden = torch.randn(1, seq, hdim, requires_grad=True)
    weight = torch.randn(vocab, hdim, requires_grad=True)  # numel 2 * V < 3 * V
    labels = torch.full((1, seq), -100)
    labels[0, [10, 500, 2047]] = torch.tensor([1, 2, 3])

    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    produced = _RecordNumel()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), produced:
        out = compute_objective(hidden, weight, labels, name)
    out.loss_sum.backward()
    assert out.n_tokens == n_target
    # the [N_target, V] logits / log-probs exist (the hooks see them)...
    assert n_target * vocab in produced.numels
    assert n_target * vocab in saved
    # ...and nothing of size [B, T, V] is ever produced or saved for backward
    assert max(produced.numels) <= n_target * vocab
    assert max(saved) <= n_target * vocab
