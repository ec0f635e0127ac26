"""Losses: the per-sample autoregressive loss and the Social Fairness Loss (SFLoss, loss rescaling).

Spec §3.1 (per-sample autoregressive loss ``L_i``) and §3.5 (``L_fair = 1/N Σ_i exp(-Skew(P_i)) L_i``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["token_log_likelihood", "autoregressive_loss", "social_fairness_loss", "SocialFairnessLoss"]


def token_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Per-sample log-likelihood of the supervised tokens: ``Σ_t log p(y_t | y_<t, ...)`` (``sum``) or its mean.

    logits (B, L, V) where position t predicts token t+1; labels (B, L) with -100 on unsupervised positions
    → (B,). Computed in float32. A row without supervised tokens raises (it would silently score 0).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits (B, L, V) and labels (B, L) expected, got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"token reduction must be 'mean' or 'sum', got {reduction!r}")
    shift_logits = logits[:, :-1].float()  # (B, L-1, V) predicts positions 1..L-1
    shift_labels = labels[:, 1:]  # (B, L-1)
    mask = shift_labels != -100  # (B, L-1)
    counts = mask.sum(-1)  # (B,) T_i
    if bool((counts == 0).any()):
        raise ValueError("token_log_likelihood: a sample has no supervised (answer) tokens")
    log_probs = shift_logits.log_softmax(-1)  # (B, L-1, V)
    picked = log_probs.gather(-1, shift_labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    total = (picked * mask).sum(-1)  # (B,)
    return total / counts if reduction == "mean" else total


def autoregressive_loss(
    logits: torch.Tensor, labels: torch.Tensor, token_reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Per-sample autoregressive loss, spec §3.1:  L_i = -(1/T_i) Σ_{t=1..T_i} log p_θ(y_{i,t} | y_{i,<t}, x^ins, x^img).

    Reconstruction: the paper writes the token sum; ``token_reduction="mean"`` (default) divides by T_i so that
    the fairness weights are not confounded with answer length. logits (B, L, V), labels (B, L) → (B,).
    """
    return -token_log_likelihood(logits, labels, token_reduction)


def social_fairness_loss(
    per_sample_loss: torch.Tensor, skew: torch.Tensor, normalize_weights: bool = False
) -> torch.Tensor:
    """Social Fairness Loss (SFLoss), spec §3.5:  L_fair = (1/N) Σ_{i=1..N} exp(-Skew(P_i)) · L_i(θ).

    per_sample_loss (N,) L_i; skew (N,) Skew(P_i) (already clipped, §3.2). The weights are detached constants.
    Reconstruction: ``normalize_weights`` divides the weights by their batch mean (not described in the paper).
    """
    if per_sample_loss.ndim != 1 or per_sample_loss.shape != skew.shape:
        raise ValueError(
            f"per_sample_loss and skew must both be (N,), got {tuple(per_sample_loss.shape)}, {tuple(skew.shape)}"
        )
    if per_sample_loss.numel() == 0:
        raise ValueError("social_fairness_loss: empty batch")
    weights = torch.exp(-skew.detach().float())  # (N,) exp(-Skew): <1 for over-, >1 for under-represented pairs
    if normalize_weights:
        weights = weights / weights.mean()
    return (weights * per_sample_loss).mean()  # 1/N Σ_i w_i L_i


class SocialFairnessLoss(nn.Module):
    """SFLoss on top of the autoregressive loss (spec §3.5); ``enabled=False`` is plain FT (all weights 1).

    forward(logits (B, L, V), labels (B, L), skew (B,)) → dict(loss, loss_ar, mean_weight); ``mean_weight`` is the
    batch mean of the raw weights exp(−Skew), before any ``normalize_weights`` (after it the mean would always be 1).
    """

    def __init__(
        self, enabled: bool = True, token_reduction: Literal["mean", "sum"] = "mean", normalize_weights: bool = False
    ) -> None:
        super().__init__()
        self.enabled = enabled
        self.token_reduction = token_reduction
        self.normalize_weights = normalize_weights

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, skew: torch.Tensor) -> dict[str, torch.Tensor]:
        per_sample = autoregressive_loss(logits, labels, self.token_reduction)  # (B,)
        plain = per_sample.mean()
        if not self.enabled:
            return {"loss": plain, "loss_ar": plain.detach(), "mean_weight": plain.new_ones(())}
        loss = social_fairness_loss(per_sample, skew, self.normalize_weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"SFLoss is not finite ({loss.item()}); check model.skew.clip and the learning rate"
            )
        return {"loss": loss, "loss_ar": plain.detach(), "mean_weight": torch.exp(-skew.float()).mean()}
