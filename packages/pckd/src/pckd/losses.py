"""PCKD's losses (spec §3.4–3.6): each a pure function with its equation, plus an ``nn.Module`` wrapper.

Notation: B images per batch, V = 4 rotated views, N = V·B network inputs, C classes, d_s / d_t feature widths.
The paper's PDF numbers no equations in the spec's transcription; the equations are quoted from spec §3.4–3.6.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.distributed import gather_no_grad, gather_with_grad, rank_and_world
from torch import nn

__all__ = [
    "per_sample_kd_loss",
    "kd_loss",
    "feature_alignment_loss",
    "center_alignment_loss",
    "category_contrastive_loss",
    "preview_weights",
    "preview_threshold",
    "PerSampleKDLoss",
    "FeatureAlignmentLoss",
    "CenterAlignmentLoss",
    "CategoryContrastiveLoss",
    "PreviewWeights",
]


def per_sample_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample logit KD, spec §3.4(b):  KL_i = (T²/B) Σ_c p^T_ic (log p^T_ic − log p^S_ic),  p = softmax(z/T).

    student_logits, teacher_logits (B, C) on the un-rotated views. Returns (B,); the 1/B sits inside each term,
    so ``.sum()`` is RepDistiller's batch-mean ``DistillKL(T)``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"KD: student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    b = student_logits.shape[0]
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C) log p^S
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (B, C) log p^T
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (B,) Σ_c p^T (log p^T − log p^S)
    return kl * temperature**2 / b


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Vanilla KD (Hinton; RepDistiller ``DistillKL``): T² · KL(p^T ‖ p^S) averaged over the batch. Scalar."""
    return per_sample_kd_loss(student_logits, teacher_logits, temperature).sum()


def feature_alignment_loss(projected: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Feature alignment, spec §3.4(c):  L_FA = 2 − 2 · (1/N) Σ_j cos(H(f_S,j), f_T,j).

    projected (N, d_t) = H(f_S); teacher_feat (N, d_t), detached here. Scalar in [0, 4].
    """
    if projected.shape != teacher_feat.shape:
        raise ValueError(f"L_FA: H(f_S) {tuple(projected.shape)} != f_T {tuple(teacher_feat.shape)}")
    cos = F.cosine_similarity(projected.float(), teacher_feat.detach().float(), dim=1)  # (N,)
    return 2.0 - 2.0 * cos.mean()


def center_alignment_loss(
    student_weight: torch.Tensor, student_bias: torch.Tensor, teacher_weight: torch.Tensor, teacher_bias: torch.Tensor
) -> torch.Tensor:
    """Category-center alignment, spec §3.4(d):  L_CA = mean_{c,k} (M_S[c,k] − M_T[c,k])²,  M = [W | b].

    W (C, d), b (C,). The teacher side is detached. Returns 0 (a scalar that keeps the graph) when
    d_S ≠ d_T, as the release does; the module wrapper warns once.
    """
    m_s = torch.cat([student_weight, student_bias[:, None]], dim=1)  # (C, d_s + 1)
    m_t = torch.cat([teacher_weight, teacher_bias[:, None]], dim=1).detach()  # (C, d_t + 1)
    if m_s.shape != m_t.shape:
        return m_s.sum() * 0.0
    return ((m_s - m_t) ** 2).mean()


def category_contrastive_loss(
    u: torch.Tensor,
    w: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    base_temperature: float,
    u_all: torch.Tensor | None = None,
    w_all: torch.Tensor | None = None,
    labels_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Category-center contrast, spec §3.4(e) (a supervised-contrastive loss over the profiles).

    u_j = W_S E_s(f_j) and w_j = W_T E_t(f_j) (N, C) are the similarity profiles of view j to the student's
    and the teacher's category centers; every profile carries its image's label. Over the anchor set
    A = {u_1..u_N, w_1..w_N}:

        s_ab = a·b / τ   (minus the detached row max)
        log P(b|a) = s_ab − log(Σ_{k≠a} exp(s_ak) + 1e-7)
        ℓ_a = −(τ/τ_b) · mean_{b ∈ P(a)} log P(b|a),    P(a) = {b ≠ a : y_b = y_a}
        L_CC,j = ℓ_{u_j} + ℓ_{w_j}

    Returns L_CC (N,). For several ranks, pass the gathered profiles ``u_all, w_all, labels_all`` (W·N rows)
    and this rank's row ``offset`` (rank·N): the local anchors are contrasted with every gathered profile.
    """
    if u.shape != w.shape or u.shape[0] != labels.shape[0]:
        raise ValueError(f"L_CC: u {tuple(u.shape)}, w {tuple(w.shape)}, labels {tuple(labels.shape)} disagree")
    if u_all is None:
        u_all, w_all, labels_all = u, w, labels
    n, n_all = u.shape[0], u_all.shape[0]
    anchors = torch.cat([u, w], dim=0).float()  # (2N, C)
    contrast = torch.cat([u_all, w_all], dim=0).float()  # (2N_all, C)
    anchor_labels = torch.cat([labels, labels])  # (2N,)
    contrast_labels = torch.cat([labels_all, labels_all])  # (2N_all,)
    local = torch.arange(n, device=u.device) + offset
    self_index = torch.cat([local, local + n_all])  # (2N,) column of each anchor itself

    logits = anchors @ contrast.T / temperature  # (2N, 2N_all) s_ab
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # row max over all b, for stability
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(2 * n, device=u.device), self_index] = False  # (2N, 2N_all) b ≠ a
    positive = (anchor_labels[:, None] == contrast_labels[None, :]) & not_self  # (2N, 2N_all) P(a)
    denom = (logits.exp() * not_self).sum(dim=1, keepdim=True)  # Σ_{k≠a} exp(s_ak)
    log_prob = logits - torch.log(denom + 1e-7)  # (2N, 2N_all) log P(b|a)
    mean_log_prob_pos = (log_prob * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1)  # (2N,)
    per_anchor = -(temperature / base_temperature) * mean_log_prob_pos  # (2N,) ℓ_a
    return per_anchor[:n] + per_anchor[n:]  # (N,) ℓ_{u_j} + ℓ_{w_j}


def preview_threshold(epoch: int, lam: float) -> float:
    """Preview threshold schedule, spec §3.5:  τ_e = λ^e  (epoch e counted from 1)."""
    return lam**epoch


def preview_weights(ce: torch.Tensor, epoch: int, lam: float, detach: bool = True) -> torch.Tensor:
    """Preview (difficulty-aware) weights, spec §3.5.

        γ_i = CE_i / ((1/B) Σ_k CE_k),   v_i = 1 if γ_i ≤ λ^e else exp(−γ_i²)

    ce (B,) per-sample cross-entropy of the student on the un-rotated views; epoch e ≥ 1. Returns v (B,).
    ``detach=False`` keeps the gradient through exp(−γ²) into the CE terms (the release does this for L_KD).
    """
    if epoch < 1:
        raise ValueError(f"preview epoch is counted from 1, got {epoch}")
    ce = ce.detach() if detach else ce
    gamma = ce / ce.mean().clamp_min(1e-12)  # (B,) difficulty γ_i
    hard = gamma > preview_threshold(epoch, lam)  # (B,) bool
    return torch.where(hard, torch.exp(-(gamma**2)), torch.ones_like(gamma))  # (B,) v_i


class PerSampleKDLoss(nn.Module):
    """Module wrapper of :func:`per_sample_kd_loss` holding the KD temperature T."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return per_sample_kd_loss(student_logits, teacher_logits, self.temperature)


class FeatureAlignmentLoss(nn.Module):
    """Module wrapper of :func:`feature_alignment_loss`."""

    def forward(self, projected: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return feature_alignment_loss(projected, teacher_feat)


class CenterAlignmentLoss(nn.Module):
    """Module wrapper of :func:`center_alignment_loss`; warns once when d_S ≠ d_T (the term is then 0)."""

    def __init__(self) -> None:
        super().__init__()
        self._warned = False

    def forward(self, student_fc: nn.Linear, teacher_fc: nn.Linear) -> torch.Tensor:
        if student_fc.weight.shape != teacher_fc.weight.shape and not self._warned:
            rank_zero_warn(
                f"L_CA is inactive: student classifier {tuple(student_fc.weight.shape)} and teacher classifier "
                f"{tuple(teacher_fc.weight.shape)} differ in feature width (the official code drops it too)."
            )
            self._warned = True
        return center_alignment_loss(student_fc.weight, student_fc.bias, teacher_fc.weight, teacher_fc.bias)


class CategoryContrastiveLoss(nn.Module):
    """Module wrapper of :func:`category_contrastive_loss`: gathers the profiles of every rank (with gradients)."""

    def __init__(self, temperature: float = 4.0, base_temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(f"L_CC temperatures must be > 0, got {temperature}, {base_temperature}")
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, u: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """u, w (N, C), labels (N,) of this rank → L_CC,j (N,) over the anchors of this rank."""
        rank, world = rank_and_world()
        if world == 1:
            return category_contrastive_loss(u, w, labels, self.temperature, self.base_temperature)
        u_all, w_all = gather_with_grad(u), gather_with_grad(w)  # (W·N, C)
        labels_all = gather_no_grad(labels)  # (W·N,)
        return category_contrastive_loss(
            u, w, labels, self.temperature, self.base_temperature, u_all, w_all, labels_all, offset=rank * u.shape[0]
        )


class PreviewWeights(nn.Module):
    """Module wrapper of :func:`preview_weights` holding λ and the detach switch."""

    def __init__(self, lam: float = 1.005, detach: bool = True) -> None:
        super().__init__()
        if lam <= 0 or not math.isfinite(lam):
            raise ValueError(f"preview lambda must be a positive number, got {lam}")
        self.lam = lam
        self.detach = detach

    def forward(self, ce: torch.Tensor, epoch: int) -> torch.Tensor:
        return preview_weights(ce, epoch, self.lam, self.detach)
