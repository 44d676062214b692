"""Token-level objectives: SFT and the Dynamic Fine-Tuning (DFT) family, computed in chunks.

With ``p = softmax(z)[y]`` (logits z, target y, temperature 1, fp32) and ``sg`` = stop-gradient,
every objective is ``l = -w * log p`` with a DETACHED weight w (:func:`token_weights` is the one
place weights are defined), plus a KL term for asft:

- ``sft``:   w = 1.
- ``dft``:   w = max(sg(p)**alpha, min_weight). alpha = 1: DFT (Wu et al., "On the
  Generalization of SFT: A Reinforcement Learning Perspective with Reward Rectification",
  arXiv 2508.05629); other alpha: gradient of (1 - p**alpha) / alpha ("Beyond Log-Likelihood",
  arXiv 2510.00526; alpha = 0 is SFT). min_weight: the DFT authors' fix for EOS / format tokens.
- ``asft``:  dft weight, plus ``kl_lambda * KL(pi_ref || pi_theta)`` per target token over the
  full vocabulary, pi_ref a frozen reference model (ASFT, arXiv 2509.23753).
- ``chord``: w = sg(p * (1 - p)) (CHORD, arXiv 2508.11408).
- ``eaft``:  w = sg(H_norm)**eaft_alpha, H_norm = entropy of the softmax over the top-k logits /
  log(k) (the EAFT authors' estimate, arXiv 2601.02151), or the exact entropy / log(V) for k = 0.
- ``sft_mix`` = beta: w -> beta + (1 - beta) * w (= beta*SFT + (1-beta)*obj); KL not mixed.

Labels are unshifted (hidden[t] predicts labels[t + 1]). Results are SUMS over target tokens;
the training loop divides by the global target count of the optimizer step.

Chunked algorithm (default). Inside one ``torch.autograd.Function`` forward, per chunk of
``chunk_size`` target rows (gathered from hidden by index: no [N, H] copy): ``z = h_c @ W.T + b``
in the input dtype, upcast to fp32 ([C, V]); in blocks of rows (``row_block``: 128 on the CPU, the
whole chunk on CUDA) with one reused scratch: log-sum-exp, log p, p, the full-vocabulary entropy
``lse - sum(softmax * z)`` (of max-shifted z: no cancellation), the EAFT top-k entropy, w,
and for asft ``log q`` (log_softmax of ``ref_h_c @ ref_W.T``, upcast to fp32 the same way)
and ``KL = sum_v q_v (log q_v - log p_v)``.
Since w is detached, the gradient w.r.t. the logits is closed form, ``dL/dz = w * (softmax -
onehot) [+ kl_lambda * (softmax - q)]``; it overwrites z, then grad_hidden[rows_c] = dz @ W
(index_copy_ into a zeros buffer shaped like hidden), grad_W += dz.T @ h_c and grad_b += dz.sum(0)
are computed DURING the forward.
Backward only scales the stored gradients by grad_output (in place: one backward per graph).
Only inputs with ``needs_input_grad`` get gradients; under no_grad none.

Memory: grad_hidden and grad_W (the sizes of hidden and W; autograd needs them anyway) plus ONE
[chunk_size, V] fp32 logits / dz buffer (plus its bf16 copy for bf16 inputs, and the reference
logits for asft) and a [block, V] scratch. Full-logits implementations hold 3-4 [N, V]
tensors (8k tokens x 151,936 x fp32 = 5 GB each; bench/RESULTS.md).

Accumulation dtype: fp32 inputs -> fp32 throughout (fp64 -> fp64, except the returned loss sum,
fp32 for every input dtype: fp64 gradients carry its ~3e-8 relative rounding). bf16 / fp16
inputs: matmuls in the input dtype (fp32 accumulation inside each GEMM), per-token math in fp32,
grad_hidden written in the input dtype (each row comes from one chunk). grad_W: with one chunk,
in the weight dtype; with several, each chunk's bf16 GEMM result is added into an fp32 [V, H] buffer
(2.2 GB for a 7B head instead of 1.1 GB, plus a transient bf16 [V, H]), so rounding does not
grow with the number of chunks (Liger accumulates in the weight dtype instead).

Why inside the wrapped module's forward: DDP and FSDP (with the root unit owning ``lm_head``)
see parameters only through the wrapped module's forward; the training loop therefore calls
:func:`compute_objective` inside ``ObjectiveModule.forward``, and the gradients computed here in
the forward are returned in the backward for the same (gathered) tensor, as Liger's fused linear
cross-entropy does. DeepSpeed ZeRO-3 is NOT covered yet: it gathers a submodule's parameters in
that submodule's own forward hooks, and ``lm_head.weight`` is read here without calling
``lm_head.forward``; it needs ``deepspeed.zero.GatheredParameters`` (the multi-GPU issue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# the spec is plain data (no torch), so the config can load without torch; re-exported here
from vldft.objective_spec import IMPLEMENTATIONS, OBJECTIVES, ObjectiveSpec  # noqa: F401

STAT_KEYS = ("ce_sum", "p_sum", "entropy_sum", "low_p_count", "kl_sum", "weight_sum")
LOW_P = 0.1  # threshold of the "low_p_count" statistic
ROW_BLOCK = 128  # CPU: rows of a chunk the per-token math handles at once (bounds its scratch)
# CUDA: rows per block (0 = the whole chunk in one block). On a GPU each block is a dozen small
# kernel launches: on an H200 the 3B loss head took 17.2 / 31.9 / 61.1 ms at 2k / 4k / 8k
# targets with whole-chunk blocks against 20.4 / 39.1 / 73.4 ms with 128-row blocks, for 0.5 GiB
# more (one [chunk_size, V] fp32 scratch instead of a [128, V] one; bench/RESULTS.md).
CUDA_ROW_BLOCK = 0


def row_block(device: torch.device, chunk: int) -> int:
    """Rows per block of the per-token math for a chunk of ``chunk`` rows on ``device``."""
    if device.type == "cuda":
        return CUDA_ROW_BLOCK or chunk
    return ROW_BLOCK


@dataclass
class ObjectiveOutput:
    """Objective over the target tokens of a (micro-)batch.

    Attributes:
        loss_sum: scalar fp32 sum over target tokens; always attached to the graph of hidden,
            weight and bias (0 with zero gradients when there are no target tokens).
        n_tokens: number of target tokens N.
        stats: detached fp32 scalar sums over target tokens, keys :data:`STAT_KEYS`: ce_sum,
            p_sum, entropy_sum (exact full-vocabulary entropy, nats), low_p_count (p < 0.1),
            kl_sum (asft only, else 0), weight_sum (sum of the weights w actually used).
        probs: [N] detached fp32 target probabilities.
    """

    loss_sum: Tensor
    n_tokens: int
    stats: dict[str, Tensor]
    probs: Tensor


def as_spec(spec: ObjectiveSpec | str) -> ObjectiveSpec:
    """A spec from a spec or an objective name."""
    return spec if isinstance(spec, ObjectiveSpec) else ObjectiveSpec(name=spec)


def token_weights(logp: Tensor, spec: ObjectiveSpec | str = "dft",
                  entropy_norm: Tensor | None = None) -> Tensor:
    """Detached per-token weights w of ``-w * log p`` (the one place weights are defined).

    Args:
        logp: [N] fp32 log-probabilities of the target tokens.
        spec: objective spec or name.
        entropy_norm: [N] normalised entropy in [0, 1]; required for eaft.

    Returns:
        [N] detached weights, dtype of logp.
    """
    spec = as_spec(spec)
    p = logp.detach().exp()
    if spec.name == "sft":
        return torch.ones_like(p)
    if spec.name in ("dft", "asft"):
        w = p.pow(spec.alpha).clamp_min(spec.min_weight)
    elif spec.name == "chord":
        w = p * (1.0 - p)
    else:  # eaft
        if entropy_norm is None:
            raise ValueError("eaft needs entropy_norm (normalised entropy per token)")
        w = entropy_norm.detach().clamp(0.0, 1.0).pow(spec.eaft_alpha)
    return spec.sft_mix + (1.0 - spec.sft_mix) * w if spec.sft_mix else w


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """[R] row-wise dot products of two [R, V] tensors in their own dtype (a bmm: no [R, V]
    temporary), also inside the training step's autocast, which would run it in bf16."""
    with torch.autocast(a.device.type, enabled=False):
        return torch.einsum("rv,rv->r", a, b)


def _entropies(zs: Tensor, probs: Tensor, log_total: Tensor, spec: ObjectiveSpec
               ) -> tuple[Tensor, Tensor | None]:
    """Exact entropy [C] (nats) and, for eaft, the normalised estimate [C], from max-shifted
    logits ``zs`` [C, V] (each row's maximum 0), their softmax and ``log sum exp(zs)`` [C].
    Shifted, because log-sum-exp minus sum p*z of raw logits cancels two large numbers (fp32
    logits near 30 lost ~1e-5 of a confident token's ~0 entropy, most of its eaft weight)."""
    entropy = log_total - _rowdot(probs, zs)
    if spec.name != "eaft":
        return entropy, None
    vocab = zs.shape[-1]
    if spec.eaft_topk == 0 or spec.eaft_topk >= vocab:
        return entropy, entropy / math.log(vocab)
    top = zs.topk(spec.eaft_topk, dim=-1, sorted=False).values.log_softmax(-1)  # [C, k]
    return entropy, -(top.exp() * top).sum(-1) / math.log(spec.eaft_topk)


def _stats(logp: Tensor, entropy: Tensor, w: Tensor, kl: Tensor | None) -> Tensor:
    """[len(STAT_KEYS)] fp64 sums of one chunk's per-token statistics (all [C])."""
    p = logp.exp()
    kl_sum = kl.sum() if kl is not None else logp.new_zeros(())
    return torch.stack([-logp.sum(), p.sum(), entropy.sum(), (p < LOW_P).sum().to(p.dtype),
                        kl_sum, w.sum()]).double()


def _block_math(z: Tensor, y: Tensor, spec: ObjectiveSpec, ref_z: Tensor | None,
                need_dz: bool, buf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token loss and closed-form dL/dz of a block of rows, in place, without autograd.

    Args:
        z: [R, V] logits in the compute dtype (fp32; fp64 for fp64 inputs); overwritten, and
            holds dL/dz on return when ``need_dz``.
        y: [R] target ids. ref_z: [R, V] reference logits (asft; overwritten) or None.
        buf: [R, V] scratch (reused across blocks: no allocation of vocabulary size here).

    Returns:
        loss sum (scalar), stats [len(STAT_KEYS)] fp64, logp [R].
    """
    z.sub_(z.amax(-1, keepdim=True))  # max-shifted: each row's largest logit is 0
    probs = torch.exp(z, out=buf)
    total = probs.sum(-1, keepdim=True)
    probs.div_(total)  # softmax
    log_total = total.log()[:, 0]  # log-sum-exp of the shifted row
    logp = z.gather(1, y[:, None])[:, 0] - log_total
    entropy, entropy_norm = _entropies(z, probs, log_total, spec)
    w = token_weights(logp, spec, entropy_norm)
    loss, kl, lam = -(w * logp).sum(), None, 0.0
    if ref_z is not None:  # asft: KL(q || p) = sum_v q_v (log q_v - log p_v)
        lam = spec.kl_lambda
        ref_z.sub_(ref_z.amax(-1, keepdim=True))  # as z: log q in the same steps as log p
        logq = ref_z.sub_(torch.logsumexp(ref_z, -1, keepdim=True))
        z.sub_(log_total[:, None]).neg_().add_(logq)  # z := log q - log p
        kl = _rowdot(logq.exp_(), z)  # logq now holds q
        loss = loss + lam * kl.sum()
    stats = _stats(logp, entropy, w, kl)
    if need_dz:  # dL/dz = w * (softmax - onehot) [+ lam * (softmax - q)]
        torch.mul(probs, (w + lam)[:, None], out=z)
        if ref_z is not None:
            z.sub_(ref_z, alpha=lam)
        z[torch.arange(len(y), device=y.device), y] -= w
    return loss, stats, logp


def _chunked_pass(hidden: Tensor, rows: Tensor, y: Tensor, weight: Tensor, bias: Tensor | None,
                  spec: ObjectiveSpec, ref: tuple | None, need: tuple[bool, bool, bool]):
    """Chunk loop over the target rows of hidden.

    Args:
        hidden: [B, T, H]; rows: [N] indices of the target rows in ``hidden.reshape(-1, H)``;
        y: [N] targets; weight [V, H]; bias [V] or None; ref: asft (ref_hidden [B*T, H_ref],
        ref_weight, ref_bias) or None; need: whether hidden / weight / bias need gradients.

    Returns loss (fp32 scalar), stats [6] fp32, target probs [N] fp32 and the gradients for
    grad_output = 1 (grad_hidden [B*T, H], grad_w [V, H], grad_b [V]; None where not needed).
    """
    hs, n, chunk = hidden.reshape(-1, hidden.shape[-1]), len(rows), spec.chunk_size
    cdt, dev, vocab = torch.promote_types(weight.dtype, torch.float32), hidden.device, len(weight)
    many = n > chunk and weight.dtype.itemsize < 4
    grad_hs = torch.zeros_like(hs) if need[0] else None
    grad_w = torch.zeros_like(weight, dtype=torch.float32 if many else None) if need[1] else None
    grad_b = torch.zeros(vocab, dtype=cdt, device=dev) if need[2] else None
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    stats = torch.zeros(len(STAT_KEYS), dtype=torch.float64, device=dev)
    p_out = torch.empty(n, dtype=torch.float32, device=dev)
    block = row_block(dev, chunk)
    buf = torch.empty(min(block, n, chunk), vocab, dtype=cdt, device=dev)
    for s in range(0, n, chunk):
        r_c, y_c = rows[s:s + chunk], y[s:s + chunk]
        h_c = hs.index_select(0, r_c).to(weight.dtype)  # [C, H]
        z = F.linear(h_c, weight, bias).to(cdt)  # [C, V]; becomes dL/dz
        ref_z = None if ref is None else F.linear(
            ref[0].index_select(0, r_c).to(ref[1].dtype), ref[1], ref[2]).to(cdt)
        for r in range(0, len(z), block):
            blk = slice(r, r + block)
            loss_b, stats_b, logp = _block_math(
                z[blk], y_c[blk], spec, None if ref_z is None else ref_z[blk], any(need),
                buf[:len(y_c[blk])])
            loss += loss_b
            stats += stats_b
            p_out[s + r:s + r + len(logp)] = logp.exp()
        del ref_z
        if any(need):
            _accumulate(z, h_c, weight, r_c, grad_hs, grad_w, grad_b, many)
        del z  # before the next chunk's logits exist
    return loss.float(), stats.float(), p_out, (grad_hs, grad_w, grad_b)


def _accumulate(dz: Tensor, h_c: Tensor, weight: Tensor, r_c: Tensor, grad_hs: Tensor | None,
                grad_w: Tensor | None, grad_b: Tensor | None, many: bool) -> None:
    """grad_hs[r_c] = dz @ W; grad_w += dz.T @ h_c; grad_b += dz.sum(0) (dz [C, V], h_c [C, H])."""
    if grad_b is not None:
        grad_b += dz.sum(0)
    dz = dz.to(h_c.dtype)  # no copy for fp32 / fp64
    if grad_hs is not None:
        grad_hs.index_copy_(0, r_c, (dz @ weight).to(grad_hs.dtype))
    if grad_w is not None:
        if many:
            grad_w += dz.t() @ h_c  # GEMM in bf16, accumulation across chunks in fp32
        else:
            grad_w.addmm_(dz.t(), h_c)


class _ChunkedObjective(torch.autograd.Function):
    """Loss sum whose gradients are computed (chunk by chunk) in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, y, ref, spec):
        need = tuple(ctx.needs_input_grad[:3])
        loss, stats, probs, grads = _chunked_pass(hidden, rows, y, weight, bias, spec, ref, need)
        ctx.grads, ctx.shape = grads, hidden.shape
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(stats, probs)
        return loss, stats, probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_stats, _grad_probs):
        if ctx.grads is None:
            raise RuntimeError("the chunked objective can be back-propagated only once "
                               "(its gradients are scaled in place)")
        grads, ctx.grads = ctx.grads, None
        g_h, g_w, g_b = (None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dt)
                         for g, dt in zip(grads, ctx.dtypes, strict=True))
        return (None if g_h is None else g_h.view(ctx.shape), g_w, g_b, None, None, None, None)


def objective_from_logits(logits: Tensor, targets: Tensor, spec: ObjectiveSpec | str = "dft",
                          ref_logits: Tensor | None = None) -> ObjectiveOutput:
    """Naive reference on already formed logits (autograd through a full log_softmax).

    Args:
        logits: [N, V] logits of the target positions (any float dtype; fp32 math).
        targets: [N] long target ids (no ignore_index entries).
        spec: objective spec or name.
        ref_logits: [N, V] reference-model logits (asft only; no gradient flows to them).
    """
    spec = as_spec(spec)
    if spec.name == "asft" and ref_logits is None:
        raise ValueError("asft needs the reference model's logits / hidden states and weight")
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logprobs = torch.log_softmax(z, -1)  # [N, V]
    logp = logprobs.gather(-1, targets[:, None])[:, 0]  # [N]
    with torch.no_grad():
        zs = z.detach() - z.detach().amax(-1, keepdim=True)
        entropy, h_norm = _entropies(zs, logprobs.exp(), torch.logsumexp(zs, -1), spec)
    w = token_weights(logp, spec, h_norm)
    loss, kl = -(w * logp).sum(), None
    if spec.name == "asft":
        logq = torch.log_softmax(ref_logits.detach().to(z.dtype), -1)
        kl = (logq.exp() * (logq - logprobs)).sum(-1)  # [N] KL(ref || theta)
        loss = loss + spec.kl_lambda * kl.sum()
    stats = _stats(logp.detach(), entropy, w, None if kl is None else kl.detach())
    return _output(loss.float(), stats.float(), logp.detach().exp().float())


def _output(loss_sum: Tensor, stats: Tensor, probs: Tensor) -> ObjectiveOutput:
    return ObjectiveOutput(loss_sum=loss_sum, n_tokens=probs.numel(), probs=probs,
                           stats=dict(zip(STAT_KEYS, stats.unbind(), strict=True)))


def compute_objective(hidden: Tensor, weight: Tensor, labels: Tensor,
                      spec: ObjectiveSpec | str = "dft", bias: Tensor | None = None,
                      ref_hidden: Tensor | None = None, ref_weight: Tensor | None = None,
                      ref_bias: Tensor | None = None, ignore_index: int = -100
                      ) -> ObjectiveOutput:
    """Objective from final hidden states and the output projection (logits never for [B, T]).

    Args:
        hidden: [B, T, H] final hidden states (cast to ``weight.dtype``).
        weight: [V, H] output projection (``lm_head.weight``, possibly tied to the embeddings).
        labels: [B, T] long, unshifted; ``ignore_index`` marks untrained positions.
        spec: objective spec or name (a name means ``ObjectiveSpec(name=...)``).
        bias: [V] output bias or None.
        ref_hidden / ref_weight / ref_bias: asft only: [B, T, H_ref] hidden states of the frozen
            reference model (computed under no_grad), its [V, H_ref] head and optional [V] bias.
        ignore_index: label value of non-target positions.
    """
    spec = as_spec(spec)
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, H] and labels [B, T]; got "
                         f"{tuple(hidden.shape)} and {tuple(labels.shape)}")
    if spec.name == "asft" and (ref_hidden is None or ref_weight is None
                                or ref_hidden.shape[:2] != labels.shape):
        raise ValueError("asft needs ref_hidden [B, T, H_ref] (same B, T as labels) and "
                         "ref_weight [V, H_ref] from the frozen reference model")
    mask = labels[:, 1:] != ignore_index  # [B, T-1]; hidden[:, t] predicts labels[:, t+1]
    y = labels[:, 1:][mask]  # [N]
    b = None if bias is None else bias.to(weight.dtype)
    ref_b = None if ref_bias is None or spec.name != "asft" else ref_bias.detach().to(
        ref_weight.dtype)
    if spec.implementation == "naive":
        h = hidden[:, :-1][mask].to(weight.dtype)  # [N, H]
        ref_logits = None if spec.name != "asft" else F.linear(
            ref_hidden.detach()[:, :-1][mask].to(ref_weight.dtype), ref_weight.detach(), ref_b)
        return objective_from_logits(F.linear(h, weight, b), y, spec, ref_logits)
    pos = mask.nonzero()  # [N, 2], same order as the boolean-mask selection
    rows = pos[:, 0] * hidden.shape[1] + pos[:, 1]  # rows of hidden.reshape(-1, H)
    ref = None if spec.name != "asft" else (
        ref_hidden.detach().reshape(-1, ref_hidden.shape[-1]), ref_weight.detach(), ref_b)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (hidden, weight, b)):
        loss, stats, probs = _ChunkedObjective.apply(hidden, weight, b, rows, y, ref, spec)
    else:
        loss, stats, probs, _ = _chunked_pass(hidden, rows, y, weight, b, spec, ref, (False,) * 3)
    return _output(loss, stats, probs)
