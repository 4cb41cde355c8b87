"""Loss balancing: given the per-task losses ``[T]``, return the scalar to backpropagate.

Every balancer is an ``nn.Module`` with the same call signature, so the trainer optimises
``balancer.parameters()`` alongside the model's and never asks which balancer it holds.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from ..schema import ACTION_WEIGHTS, ACTIONS


def task_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy per task: ``[B, T] x [B, T] -> [T]``."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)


class FixedWeights(nn.Module):
    """``sum_i w_i * L_i`` with the weights rescaled to mean 1 (equal weights: plain sum)."""

    def __init__(self, weights: Sequence[float]):
        super().__init__()
        w = torch.as_tensor(list(weights), dtype=torch.float32)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"task weights must be non-negative with a positive sum, got {list(weights)}")
        self.register_buffer("weights", w * (len(w) / w.sum()), persistent=False)

    def forward(self, task_losses: Tensor) -> Tensor:
        return (self.weights * task_losses).sum()

    def task_weights(self) -> list[float]:
        return self.weights.tolist()


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, 2018).

    ``L = sum_i exp(-s_i) * L_i + s_i / 2`` with ``s_i = log sigma_i^2`` learned.  ``s`` is left
    unclamped: a clamp at, say, [-1, 1] hides whether the weights actually moved away from equal.
    """

    def __init__(self, n_tasks: int, init: float = 0.0):
        super().__init__()
        self.log_var = nn.Parameter(torch.full((n_tasks,), float(init)))

    def forward(self, task_losses: Tensor) -> Tensor:
        return (torch.exp(-self.log_var) * task_losses + 0.5 * self.log_var).sum()

    def task_weights(self) -> list[float]:
        return torch.exp(-self.log_var.detach()).tolist()


def build_balancer(cfg: dict, actions: Sequence[str] = ACTIONS) -> nn.Module:
    """``cfg``: the ``nn.loss`` section: ``balancing`` in equal | competition | fixed | uncertainty
    (``weights``: a dict action -> weight for ``fixed``)."""
    kind = cfg["balancing"]
    if kind == "equal":
        return FixedWeights([1.0] * len(actions))
    if kind == "competition":
        return FixedWeights([ACTION_WEIGHTS[a] for a in actions])
    if kind == "fixed":
        weights = cfg.get("weights") or {}
        missing = [a for a in actions if a not in weights]
        if missing:
            raise ValueError(f"nn.loss.weights lacks {', '.join(missing)}")
        return FixedWeights([float(weights[a]) for a in actions])
    if kind == "uncertainty":
        return UncertaintyWeighting(len(actions), float(cfg["init_log_var"]))
    raise ValueError(f"nn.loss.balancing={kind!r}; expected equal, competition, fixed or uncertainty")
