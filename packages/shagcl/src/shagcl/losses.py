"""Losses of SHA-GCL (spec §3.6.5–3.6.7): per-classifier cross-entropy on the assigned pairs, collaborative
knowledge distillation between classifiers, and the object classification loss (SGCls/SGDet).

The paper has no numbered equations for these terms in our spec; each docstring cites the spec section that
states the formula (from the official code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice
from torch import nn

from shagcl.gcl import BackgroundMode, assign_pairs, classifier_sizes, map_labels_to_classifier

__all__ = [
    "KDMode",
    "group_ce_loss",
    "smoothed_kl",
    "collaborative_kd_loss",
    "object_loss",
    "GCLLoss",
    "ObjectLoss",
]

KDMode = Literal["KL_logit_TopDown", "KL_logit_Neighbor", "KL_logit_BiDirection", "KL_logit_BottomUp", "None"]


def group_ce_loss(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    assignment: torch.Tensor,
    num_active: int,
    sizes: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Per-classifier cross-entropy ``k_CE_loss`` (§3.6.5):  L_CE(k) = mean_{i∈S_k} CE(logits_k[i], ŷ_i^k)

    ŷ^k = y if y <= n_k else 0. logits[k]: (M, n_k + 1); labels (M,); assignment (K, M) bool rows S_k;
    only classifiers 1..num_active (= K_b) are trained. A classifier with no assigned pair is skipped (the
    official code would give NaN). Returns {k (1-based): scalar}.
    """
    out: dict[int, torch.Tensor] = {}
    for k in range(1, num_active + 1):
        rows = assignment[k - 1]
        if not bool(rows.any()):
            continue
        target = map_labels_to_classifier(labels[rows], sizes[k - 1])  # (|S_k|,)
        out[k] = F.cross_entropy(logits[k - 1][rows].float(), target)
    return out


def smoothed_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-row KL(P̃ ‖ Q̃) with P = softmax(teacher), Q = softmax(student), P̃ = (P + ε) / (1 + C ε) (§3.6.6).

    teacher_logits, student_logits: (M, C). Returns (M,).
    """
    num_classes = teacher_logits.shape[-1]
    p = (teacher_logits.float().softmax(-1) + eps) / (1 + num_classes * eps)  # (M, C) P̃
    q = (student_logits.float().softmax(-1) + eps) / (1 + num_classes * eps)  # (M, C) Q̃
    return (p * (p.log() - q.log())).sum(-1)  # Σ_c P̃ log(P̃ / Q̃)


def collaborative_kd_loss(
    logits: Sequence[torch.Tensor],
    labels: torch.Tensor,
    assignment: torch.Tensor,
    num_active: int,
    sizes: Sequence[int],
    mode: KDMode = "KL_logit_TopDown",
    coefficient: float = 1.0,
    restrain: bool = True,
    no_relation_penalty: float = 0.1,
    eps: float = 1e-8,
) -> dict[int, torch.Tensor]:
    """Collaborative knowledge distillation ``k_DKS_loss`` (§3.6.6), for classifiers k = 2..K_b.

    For every teacher j < k (Top-Down; Neighbor: only j = k − 1), on k's pairs S_k:
        P_j = softmax(logits_j[:, 1:n_j+1]),  Q_k = softmax(logits_k[:, 1:n_j+1])   (background excluded)
        KL_i = Σ_c P̃_ic log(P̃_ic / Q̃_ic),  w_i = 1 if 1 <= y_i <= n_j else ``no_relation_penalty``
        L_KD(j→k) = λ · mean_i (w_i KL_i);   L_KD(k) = Σ_j L_KD(j→k)
    Neither side is detached. ``KL_logit_BiDirection`` adds KL(Q̃ ‖ P̃) with the same weights.
    ``KL_logit_BottomUp`` [Reconstruction: listed by the README, not implemented for the transformer
    predictor]: only the reverse term KL(Q̃ ‖ P̃), i.e. the larger classifier teaches the smaller one.
    ``restrain=False`` drops the weights (plain mean). Returns {k: scalar} for the classifiers with a term.
    """
    check_choice("model.config.kd_mode", mode, get_args(KDMode))  # anything else would distil top-down
    out: dict[int, torch.Tensor] = {}
    if mode == "None":
        return out
    for k in range(2, num_active + 1):
        rows = assignment[k - 1]
        if not bool(rows.any()):
            continue
        y = labels[rows]
        teachers = [k - 1] if mode == "KL_logit_Neighbor" else range(1, k)
        total = None
        for j in teachers:
            n_j = sizes[j - 1]
            p_logits = logits[j - 1][rows][:, 1 : n_j + 1]  # (|S_k|, n_j) teacher j, foreground columns
            q_logits = logits[k - 1][rows][:, 1 : n_j + 1]  # (|S_k|, n_j) student k, same columns
            if mode == "KL_logit_BottomUp":
                kl = smoothed_kl(q_logits, p_logits, eps)
            else:
                kl = smoothed_kl(p_logits, q_logits, eps)
                if mode == "KL_logit_BiDirection":
                    kl = kl + smoothed_kl(q_logits, p_logits, eps)
            if restrain:
                w = torch.where((y >= 1) & (y <= n_j), 1.0, no_relation_penalty).to(kl)  # (|S_k|,)
                kl = w * kl
            term = coefficient * kl.mean()
            total = term if total is None else total + term
        out[k] = total
    return out


def object_loss(obj_logits: torch.Tensor, obj_labels: torch.Tensor) -> torch.Tensor:
    """Object classification loss ``obj_loss`` (§3.4 step 8): CE(obj_dists, object labels), mean over boxes."""
    return F.cross_entropy(obj_logits.float(), obj_labels)


class ObjectLoss(nn.Module):
    """Module wrapper of :func:`object_loss` (weight 1 in the total, §3.6.7)."""

    def forward(self, obj_logits: torch.Tensor, obj_labels: torch.Tensor) -> torch.Tensor:
        return object_loss(obj_logits, obj_labels)


class GCLLoss(nn.Module):
    """The GCL decoder loss (§3.6.5–3.6.7): assigns pairs to classifiers with the median re-sampling rates,
    then Σ_{k<=K_b} k_CE_loss + Σ_{k<=K_b} k_DKS_loss.

    Args:
        group_sizes: g_1..g_K.
        rates: (K, C_rel) median re-sampling rates (``gcl.median_resampling_rates``).
        background_mode: how background pairs are spread over classifiers (``ZERO_LABEL_PADDING_MODE``).
        kd_mode, kd_coefficient, restrain, no_relation_penalty: see :func:`collaborative_kd_loss`.
        resample: False disables the median re-sampling (every foreground pair joins every classifier up to
            K_b; an ablation switch).
    """

    def __init__(
        self,
        group_sizes: Sequence[int],
        rates: torch.Tensor,
        background_mode: BackgroundMode = "rand_insert",
        kd_mode: KDMode = "KL_logit_TopDown",
        kd_coefficient: float = 1.0,
        restrain: bool = True,
        no_relation_penalty: float = 0.1,
        resample: bool = True,
    ) -> None:
        super().__init__()
        # refused here rather than at the first training step (background_mode) or never (kd_mode: top-down)
        check_choice("model.config.background_mode", background_mode, get_args(BackgroundMode))
        check_choice("model.config.kd_mode", kd_mode, get_args(KDMode))
        self.group_sizes = [int(g) for g in group_sizes]
        self.sizes = classifier_sizes(self.group_sizes)
        self.register_buffer("rates", rates.float().clone(), persistent=False)
        self.background_mode = background_mode
        self.kd_mode = kd_mode
        self.kd_coefficient = kd_coefficient
        self.restrain = restrain
        self.no_relation_penalty = no_relation_penalty
        self.resample = resample

    def forward(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """logits: K tensors (M, n_k + 1); labels (M,). Returns named terms plus ``loss`` (their sum)."""
        if labels.numel() == 0:
            raise ValueError("GCLLoss: the batch has no relation pairs (every image has fewer than 2 objects?)")
        rates = self.rates if self.resample else (self.rates > 0).float()
        u = torch.rand(labels.shape, generator=generator, device=labels.device if generator is None else "cpu")
        v = torch.rand(labels.shape, generator=generator, device=labels.device if generator is None else "cpu")
        assignment, k_b = assign_pairs(
            labels, self.group_sizes, rates, u.to(labels.device), v.to(labels.device), self.background_mode
        )
        ce = group_ce_loss(logits, labels, assignment, k_b, self.sizes)
        kd = collaborative_kd_loss(
            logits,
            labels,
            assignment,
            k_b,
            self.sizes,
            self.kd_mode,
            self.kd_coefficient,
            self.restrain,
            self.no_relation_penalty,
        )
        terms: dict[str, torch.Tensor] = {f"{k}_CE_loss": v for k, v in ce.items()}
        terms.update({f"{k}_DKS_loss": v for k, v in kd.items()})
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
