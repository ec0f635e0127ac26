"""Losses of spec §3.2–3.4: the multi-label "softmax + cross-entropy" per level, the hierarchical sum, and the
Euclidean self-distillation between the two streams' refined scores. Each: a function plus an ``nn.Module``."""

from __future__ import annotations

from typing import Literal

import torch
from mmzoo.config import check_choice
from torch import nn

__all__ = [
    "multilabel_ce_loss",
    "hierarchical_multilabel_loss",
    "self_distillation_loss",
    "MultiLabelCELoss",
    "HierarchicalLoss",
    "SelfDistillationLoss",
]


STOP_GRAD = ("none", "nt", "t")
"""Values of the distillation's stop-gradient option (spec §3.4)."""


def multilabel_ce_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label CE of spec §3.2 (Su's extension of softmax CE), averaged over videos:

        J = (1/|V|) Σ_v [ log(1 + Σ_{q ∉ P_v} exp(s_vq)) + log(1 + Σ_{q ∈ P_v} exp(−s_vq)) ]

    scores (B, L) refined scores, targets (B, L) in {0, 1}. Computed as logsumexp over [0, scores] so it is
    stable and finite for empty positive (or negative) sets. Scalar.
    """
    if scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ")
    s = scores.float()
    pos = targets.bool()
    neg_inf = torch.finfo(s.dtype).min
    zeros = s.new_zeros(s.shape[0], 1)
    neg_logits = torch.cat([zeros, s.masked_fill(pos, neg_inf)], dim=1)  # (B, 1+L) [0, s_q for q ∉ P]
    pos_logits = torch.cat([zeros, (-s).masked_fill(~pos, neg_inf)], dim=1)  # (B, 1+L) [0, −s_q for q ∈ P]
    return (torch.logsumexp(neg_logits, dim=1) + torch.logsumexp(pos_logits, dim=1)).mean()


def hierarchical_multilabel_loss(
    level1: torch.Tensor, level2: torch.Tensor, target1: torch.Tensor, target2: torch.Tensor, beta1: float, beta2: float
) -> torch.Tensor:
    """J = β1 J_1 + β2 J_2 over the refined scores of each level (spec §3.2, §3.3c). Scalar."""
    return beta1 * multilabel_ce_loss(level1, target1) + beta2 * multilabel_ce_loss(level2, target2)


def self_distillation_loss(
    t1: torch.Tensor,
    t2: torch.Tensor,
    nt1: torch.Tensor,
    nt2: torch.Tensor,
    beta1: float,
    beta2: float,
    stop_grad: Literal["none", "nt", "t"] = "none",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Self-distillation, spec §3.4:  J^distill_i = (1/|V|) Σ_v ‖s^t_{v,L_i} − s^nt_{v,L_i}‖_2,
    J^distill = β1 J_1 + β2 J_2, with ε inside the square root (finite gradient at 0).

    t1, nt1 (B, L1); t2, nt2 (B, L2): refined scores of S1 and S2 (the logits of the multi-label CE: no
    sigmoid, no temperature, no normalisation). ``stop_grad``: ``none`` (mutual, default), ``nt`` (detach S2:
    only S1 learns from S2) or ``t`` (detach S1). Scalar. The gradient w.r.t. one video's scores of a level is
    the unit vector (s^t − s^nt)/‖s^t − s^nt‖ divided by B, whatever the distance (README, Deviations).
    """
    check_choice("stop_grad", stop_grad, STOP_GRAD)  # anything else would silently mean "none"
    if stop_grad == "nt":
        nt1, nt2 = nt1.detach(), nt2.detach()
    elif stop_grad == "t":
        t1, t2 = t1.detach(), t2.detach()

    def level(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((a.float() - b.float()) ** 2).sum(dim=1) + eps).mean()  # mean_v ‖·‖_2

    return beta1 * level(t1, nt1) + beta2 * level(t2, nt2)


class MultiLabelCELoss(nn.Module):
    """Module wrapper of :func:`multilabel_ce_loss`."""

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multilabel_ce_loss(scores, targets)


class HierarchicalLoss(nn.Module):
    """Module wrapper of :func:`hierarchical_multilabel_loss` holding β1, β2."""

    def __init__(self, beta1: float = 1.0, beta2: float = 1.0) -> None:
        super().__init__()
        self.beta1, self.beta2 = beta1, beta2

    def forward(self, scores: dict[str, torch.Tensor], target1: torch.Tensor, target2: torch.Tensor) -> torch.Tensor:
        return hierarchical_multilabel_loss(
            scores["level1"], scores["level2"], target1, target2, self.beta1, self.beta2
        )


class SelfDistillationLoss(nn.Module):
    """Module wrapper of :func:`self_distillation_loss`."""

    def __init__(self, beta1: float = 1.0, beta2: float = 1.0, stop_grad: Literal["none", "nt", "t"] = "none") -> None:
        super().__init__()
        check_choice("model.distill_stop_grad", stop_grad, STOP_GRAD)
        self.beta1, self.beta2, self.stop_grad = beta1, beta2, stop_grad

    def forward(self, t: dict[str, torch.Tensor], nt: dict[str, torch.Tensor]) -> torch.Tensor:
        return self_distillation_loss(
            t["level1"], t["level2"], nt["level1"], nt["level2"], self.beta1, self.beta2, self.stop_grad
        )
