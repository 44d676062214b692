"""Moving a collated batch to the model's device: the one copy of that line for the training
step, the held-out scorer and the probe."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def to_device(batch: Mapping, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` (a collator's dict or a processor's ``BatchFeature``) on
    ``device``; other values (sample ids, texts) are left out: the model takes tensors only."""
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
