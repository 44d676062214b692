"""Token-level training objectives: SFT and Dynamic Fine-Tuning (DFT).

Source: Wu et al., "On the Generalization of SFT: A Reinforcement Learning
Perspective with Reward Rectification" (Dynamic Fine-Tuning), ICLR 2026.

With ``p_t = softmax(z_t)[y_t]`` (temperature 1, computed in fp32) the
per-token objectives are::

    sft:  l_t = -log p_t
    dft:  l_t = -sg(p_t) * log p_t        (sg = stop-gradient / detach)

so that ``d l_t / d z_t = -d p_t / d z_t`` for DFT. Every objective is written
as ``l_t = -w_t * log p_t`` with a detached per-token weight ``w_t``;
:func:`token_weights` is the single place where weights are defined, so a new
weighted objective is one branch there.

Shift convention (Hugging Face): labels are NOT pre-shifted. The hidden state
at position ``t`` predicts ``labels[t + 1]``; positions whose (shifted) label is
``ignore_index`` (-100) are not trained. The shift happens here.

Normalisation: this module returns SUMS over target tokens. Dividing by the
GLOBAL number of target tokens of an optimizer step (over all micro-batches
and ranks) is done by the training loop, which makes gradient accumulation
exactly equivalent to one large batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

OBJECTIVES = ("sft", "dft")


@dataclass
class ObjectiveOutput:
    """Result of an objective over the target tokens of a (micro-)batch.

    Attributes:
        loss_sum: scalar fp32, sum over target tokens of the per-token
            objective; always attached to the autograd graph of the inputs
            (equals 0 with zero gradients when there are no target tokens).
        n_tokens: number of target tokens.
        stats: detached fp32 scalar sums over target tokens: ``ce_sum``
            (sum of -log p), ``p_sum`` (sum of p), ``entropy_sum`` (sum of the
            full-distribution entropy in nats).
    """

    loss_sum: Tensor
    n_tokens: int
    stats: dict[str, Tensor]


def token_weights(logp: Tensor, name: str) -> Tensor:
    """Detached per-token weights ``w`` of the objective ``-w * log p``.

    Args:
        logp: [N] fp32 log-probability of each target token.
        name: objective name, one of :data:`OBJECTIVES`.

    Returns:
        [N] fp32 detached weights: ``sft`` -> 1, ``dft`` -> ``p`` = exp(logp).
    """
    if name == "sft":
        return torch.ones_like(logp)
    if name == "dft":
        return logp.detach().exp()
    raise ValueError(
        f"unknown objective {name!r}; valid choices: {', '.join(OBJECTIVES)}"
    )


def objective_from_logits(
    logits: Tensor, targets: Tensor, name: str = "dft"
) -> ObjectiveOutput:
    """Objective over already-formed logits (reference path).

    Args:
        logits: [N, V] logits of the target positions (any float dtype).
        targets: [N] long target ids (no ignore_index entries).
        name: objective name, one of :data:`OBJECTIVES`.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V] fp32
    logp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]
    w = token_weights(logp, name)  # [N], detached
    loss_sum = -(w * logp).sum()
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)  # [N]
        stats = {
            "ce_sum": -logp.sum(),
            "p_sum": logp.exp().sum(),
            "entropy_sum": entropy.sum(),
        }
    return ObjectiveOutput(loss_sum=loss_sum, n_tokens=targets.numel(), stats=stats)


def compute_objective(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    name: str = "dft",
    bias: Tensor | None = None,
    ignore_index: int = -100,
) -> ObjectiveOutput:
    """Objective from final hidden states and the output projection.

    Target positions are selected before the projection, so logits are only
    formed for target tokens ([N_target, V]), never for the whole [B, T, V].

    Args:
        hidden: [B, T, H] final hidden states (any float dtype; cast to
            ``weight.dtype`` for the projection).
        weight: [V, H] output projection (``lm_head.weight``, possibly tied).
        labels: [B, T] long, unshifted; ``ignore_index`` marks untrained slots.
        name: objective name, one of :data:`OBJECTIVES`.
        bias: [V] output bias or None.
        ignore_index: label value of non-target positions.
    """
    shift_labels = labels[:, 1:]  # [B, T-1]
    mask = shift_labels != ignore_index  # [B, T-1]
    h = hidden[:, :-1][mask].to(weight.dtype)  # [N, H]; N = 0 keeps the graph
    targets = shift_labels[mask]  # [N]
    logits = F.linear(h, weight, bias)  # [N, V]
    return objective_from_logits(logits, targets, name)
