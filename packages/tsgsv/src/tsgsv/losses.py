"""Labels and losses of the streaming grounding model (spec §3.8).

* :func:`gaussian_labels` — the Gaussian soft start/end/semantic labels.
* :func:`focal_bce_loss` — focal-modulated soft BCE per channel, masked.
* :func:`span_loss` — channel-weighted sum 0.5·L_start + 0.5·L_end + 1.0·L_sem.
* :func:`twin_kd_loss` — the official ``tpn_type='KD'`` total: main (1−λ) + twin + λ·KD(main ← stopgrad σ(twin)).
* :func:`twin_regression_loss` — the ``tpn_type='twinnet'`` variant: main + twin + λ·‖A(H_main) − sg(H_twin)‖².
* :func:`kd_weight_schedule` — the official (unused by default) λ warm-up λ_p = λ·(2/(1+e^{−10p}) − 1).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_range
from torch import nn

__all__ = [
    "gaussian_labels",
    "hard_labels",
    "focal_bce_loss",
    "span_loss",
    "twin_kd_loss",
    "twin_regression_loss",
    "kd_weight_schedule",
    "TSGSVLoss",
]

TpnType = Literal["KD", "twinnet"]
"""How the twin branch teaches the main one (``model.tpn_type``): logit distillation or feature regression."""


def gaussian_labels(
    frames: torch.Tensor, start: torch.Tensor, end: torch.Tensor, widths: tuple[float, float, float]
) -> torch.Tensor:
    """Gaussian soft labels, spec §3.8:  y_s(t) = exp(−(t−s*)² / (2(w_s ℓ)²)),  y_e likewise at e*,
    y_sem(t) = exp(−(t − (s*+e*)/2)² / (2(w_sem ℓ)²)),  ℓ = e* − s*.

    frames (..., T) absolute frame indices t (float); start/end (...,) s*, e* in frame units; widths (w_s, w_e,
    w_sem), official (0.25, 0.25, 0.21). Returns (..., T, 3) in order (start, end, sem).
    """
    s = start.unsqueeze(-1).to(torch.float32)  # (..., 1)
    e = end.unsqueeze(-1).to(torch.float32)
    length = (e - s).clamp(min=1e-6)
    t = frames.to(torch.float32)
    y_s = torch.exp(-((t - s) ** 2) / (2 * (widths[0] * length) ** 2))
    y_e = torch.exp(-((t - e) ** 2) / (2 * (widths[1] * length) ** 2))
    y_m = torch.exp(-((t - (s + e) / 2) ** 2) / (2 * (widths[2] * length) ** 2))
    return torch.stack([y_s, y_e, y_m], -1)  # (..., T, 3)


def hard_labels(frames: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Hard-label alternative (official ``gaussian_label=False``): one-hot at round(s*), round(e*), box on
    [round(s*), round(e*)]. Shapes as :func:`gaussian_labels`."""
    s = start.round().unsqueeze(-1)
    e = end.round().unsqueeze(-1)
    t = frames.to(torch.float32)
    return torch.stack([(t == s), (t == e), (t >= s) & (t <= e)], -1).to(torch.float32)


def focal_bce_loss(logits: torch.Tensor, targets: torch.Tensor, invalid: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal-modulated soft BCE, spec §3.8:  ℓ(x, y) = |σ(x) − y|^γ · BCE(x, y), the factor without gradient.

    logits, targets (B, T, C); invalid (B, T) bool, True = padding (excluded). Returns (C,): for each channel
    the mean of ℓ over the valid (b, t) positions (0 when none is valid).
    """
    logits = logits.float()
    targets = targets.float()
    factor = (torch.sigmoid(logits) - targets).abs().pow(gamma).detach()  # no gradient through the modulation
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, T, C)
    valid = (~invalid).unsqueeze(-1).to(bce.dtype)  # (B, T, 1)
    return (factor * bce * valid).sum((0, 1)) / valid.sum().clamp(min=1.0)


def span_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    invalid: torch.Tensor,
    gamma: float,
    channel_weights: tuple[float, float, float] = (0.5, 0.5, 1.0),
) -> torch.Tensor:
    """Span(x, y) = 0.5·L_start + 0.5·L_end + 1.0·L_sem (spec §3.8), each L_c from :func:`focal_bce_loss`."""
    per_channel = focal_bce_loss(logits, targets, invalid, gamma)  # (3,)
    return (per_channel * per_channel.new_tensor(channel_weights)).sum()


def twin_kd_loss(
    logits: torch.Tensor,
    twin_logits: torch.Tensor | None,
    targets: torch.Tensor,
    invalid: torch.Tensor,
    kd_weight: float,
    gamma: float,
    channel_weights: tuple[float, float, float] = (0.5, 0.5, 1.0),
) -> dict[str, torch.Tensor]:
    """Total loss of the official ``tpn_type='KD'`` (spec §3.8):

    L = Span(x_main, y)·(1−λ) + Span(x_twin, y) + Span(x_main, stopgrad(σ(x_twin)))·λ.

    Without a twin branch (``twin_logits`` None) the loss is Span(x_main, y) alone (weight 1).
    Returns the named terms (unweighted) and ``loss`` (the weighted total).
    """
    main = span_loss(logits, targets, invalid, gamma, channel_weights)
    if twin_logits is None:
        return {"loss": main, "loss_main": main}
    twin = span_loss(twin_logits, targets, invalid, gamma, channel_weights)
    kd_target = torch.sigmoid(twin_logits.float()).detach()  # the twin teaches; no gradient into the twin
    kd = span_loss(logits, kd_target, invalid, gamma, channel_weights)
    total = (1 - kd_weight) * main + twin + kd_weight * kd
    return {"loss": total, "loss_main": main, "loss_twin": twin, "loss_kd": kd}


def twin_regression_loss(
    logits: torch.Tensor,
    twin_logits: torch.Tensor | None,
    regressed_features: torch.Tensor | None,
    twin_features: torch.Tensor | None,
    targets: torch.Tensor,
    invalid: torch.Tensor,
    kd_weight: float,
    gamma: float,
    channel_weights: tuple[float, float, float] = (0.5, 0.5, 1.0),
) -> dict[str, torch.Tensor]:
    """Total loss of the ``tpn_type='twinnet'`` ablation (spec §3.8):

    L = Span(x_main, y) + Span(x_twin, y) + λ · mean_{valid b,t,c, dims} (A(H_main) − stopgrad(H_twin))².

    regressed_features = A(H_main) (B, T, 3, h); twin_features = H_twin (B, T, 3, h).
    """
    main = span_loss(logits, targets, invalid, gamma, channel_weights)
    if twin_logits is None or regressed_features is None or twin_features is None:
        return {"loss": main, "loss_main": main}
    twin = span_loss(twin_logits, targets, invalid, gamma, channel_weights)
    sq = (regressed_features.float() - twin_features.float().detach()) ** 2  # (B, T, 3, h)
    valid = (~invalid)[..., None, None].to(sq.dtype)  # (B, T, 1, 1)
    count = valid.sum() * sq.shape[2] * sq.shape[3]
    reg = (sq * valid).sum() / count.clamp(min=1.0)
    return {"loss": main + twin + kd_weight * reg, "loss_main": main, "loss_twin": twin, "loss_twinnet": reg}


def kd_weight_schedule(kd_weight: float, progress: float) -> float:
    """λ warm-up hook of the official code (spec §3.8):  λ_p = λ · (2 / (1 + exp(−10 p)) − 1),  p = iter / max_iter
    clamped to [0, 1]. λ_0 = 0, rising to λ · 0.99991 at p = 1 (half of λ at p ≈ 0.11). Off in every official config."""
    p = min(max(float(progress), 0.0), 1.0)
    return kd_weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class TSGSVLoss(nn.Module):
    """Loss module: holds λ, γ, the channel weights and (``twinnet`` variant) the regressor A = Linear(h, h).

    Args:
        hidden_dim: h (for the twinnet regressor).
        tpn_type: ``KD`` (paper / official default) or ``twinnet`` (feature-regression ablation).
        kd_weight: λ (ANet 0.4, TACoS 0.2, MAD 0.2).
        gamma: focal exponent γ (3).
        channel_weights: weights of (start, end, sem) (0.5, 0.5, 1.0).
    """

    def __init__(
        self,
        hidden_dim: int,
        tpn_type: TpnType = "KD",
        kd_weight: float = 0.4,
        gamma: float = 3.0,
        channel_weights: tuple[float, float, float] = (0.5, 0.5, 1.0),
    ):
        super().__init__()
        # anything but 'KD' would take the regression path without its regressor and fail at the first step
        check_choice("model.tpn_type", tpn_type, get_args(TpnType))
        # KD weighs the main loss by 1 − λ, so λ above 1 would push it the wrong way; the regression adds λ·‖·‖²
        check_range("model.kd_weight", kd_weight, ge=0, le=1 if tpn_type == "KD" else None)
        check_range("model.focal_gamma", gamma, ge=0)  # |σ(x) − y|^γ is infinite at a perfect prediction if γ < 0
        if len(channel_weights) != 3:
            raise ValueError(f"model.channel_weights={list(channel_weights)}: expected 3 weights (start, end, sem)")
        for w in channel_weights:  # 0 drops a channel
            check_range("model.channel_weights", w, ge=0)
        self.tpn_type = tpn_type
        self.kd_weight = kd_weight
        self.gamma = gamma
        self.channel_weights = tuple(channel_weights)
        self.regressor = nn.Linear(hidden_dim, hidden_dim) if tpn_type == "twinnet" else None

    def forward(
        self, output, targets: torch.Tensor, invalid: torch.Tensor, kd_weight: float | None = None
    ) -> dict[str, torch.Tensor]:
        """output: :class:`~tsgsv.models.TSGSVOutput`; targets (B, M_s, 3); invalid (B, M_s) bool.
        ``kd_weight`` overrides λ for this call (the warm-up schedule); None uses the configured λ."""
        if targets.shape != output.logits.shape:
            raise ValueError(f"targets {tuple(targets.shape)} do not match logits {tuple(output.logits.shape)}")
        lam = self.kd_weight if kd_weight is None else kd_weight
        if self.tpn_type == "KD":
            return twin_kd_loss(
                output.logits, output.twin_logits, targets, invalid, lam, self.gamma, self.channel_weights
            )
        regressed = self.regressor(output.head_features) if output.twin_head_features is not None else None
        return twin_regression_loss(
            output.logits, output.twin_logits, regressed, output.twin_head_features, targets, invalid,
            lam, self.gamma, self.channel_weights,
        )  # fmt: skip
