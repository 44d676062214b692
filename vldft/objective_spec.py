"""The objective's name and hyper-parameters (``ObjectiveSpec``): plain data, checked when built.

Kept apart from the loss functions (``vldft.objectives``, which re-exports everything here) so
that the config (``loss`` section) and every command's ``--help`` and config errors load without
torch. The formulas the fields enter are in ``vldft.objectives``'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OBJECTIVES = ("sft", "dft", "asft", "chord", "eaft")
IMPLEMENTATIONS = ("chunked", "naive")


@dataclass(frozen=True)
class ObjectiveSpec:
    """Objective and its hyper-parameters (see ``vldft.objectives`` for the formulas)."""

    name: str = "dft"
    min_weight: float = 0.0  # dft/asft: w = max(sg(p)**alpha, min_weight)
    alpha: float = 1.0  # dft/asft: w = sg(p)**alpha; 0 -> SFT, 1 -> DFT
    kl_lambda: float = 0.05  # asft: + kl_lambda * KL(pi_ref || pi_theta) per target token
    eaft_topk: int = 20  # eaft: top-k entropy / log(k); 0 = exact entropy / log(V)
    eaft_alpha: float = 1.0  # eaft: w = sg(H_norm)**eaft_alpha
    sft_mix: float = 0.0  # beta: w -> beta + (1 - beta) * w (asft KL not mixed)
    chunk_size: int = 1024  # target tokens per chunk
    implementation: str = "chunked"  # "chunked" | "naive" (full logits; reference)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"loss.name: unknown objective {self.name!r}; valid choices: "
                             f"{', '.join(OBJECTIVES)}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"loss.implementation must be one of {IMPLEMENTATIONS}, "
                             f"got {self.implementation!r}")
        for key, (kind, lo, hi) in _BOUNDS.items():
            v = getattr(self, key)
            typed = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float
                                                           else int)
            if not (typed and math.isfinite(v) and lo <= v <= hi):
                rule = f"in [{lo}, {hi}]" if math.isfinite(hi) else f">= {lo}"
                kind_name = "an integer" if kind is int else "a finite number"
                raise ValueError(f"loss.{key} must be {kind_name} {rule}, got {v!r}")
        if self.eaft_topk == 1:
            raise ValueError("loss.eaft_topk must be 0 (exact entropy) or >= 2, got 1")


_BOUNDS = {  # ObjectiveSpec field: (type, low, high)
    "min_weight": (float, 0, 1), "sft_mix": (float, 0, 1), "alpha": (float, 0, math.inf),
    "kl_lambda": (float, 0, math.inf), "eaft_alpha": (float, 0, math.inf),
    "eaft_topk": (int, 0, math.inf), "chunk_size": (int, 1, math.inf),
}
