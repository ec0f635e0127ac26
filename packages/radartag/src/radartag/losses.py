"""Losses of RADAR (spec §3.4, §3.5).

* :func:`tagging_loss` — 333 · mean BCEWithLogits over the batch videos × all tags (dense label matrix).
* :func:`adversarial_lambda` — the λ_p schedule of the common-feature adversarial loss.
* :func:`discriminator_losses` — L_du (unique features, no reversal) and L_dc (common features behind the GRL,
  scaled by λ_p), averaged over the layers.
* :class:`RadarLoss` — the total L = 333·BCE + L_du + L_dc, with the training-step counter of the schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["tagging_loss", "adversarial_lambda", "discriminator_losses", "RadarLoss"]


def tagging_loss(scores: torch.Tensor, labels: torch.Tensor, weight: float = 333.0) -> torch.Tensor:
    """Classification term of Eq. (loss), spec §3.5:  weight · mean_{v ∈ batch, t ∈ all tags} BCE(s(v,t), y_vt).

    scores (B, K) logits ⟨h_v, h_t⟩; labels (B, K) 0/1 (1 iff (v, t) is a has_tag link).
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
    return weight * F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def adversarial_lambda(step: int, total_step: int, lambda0: float = 0.01, gamma: float = 20.0) -> float:
    """λ_p = λ0 · (2 / (1 + exp(−γ p)) − 1),  p = step / total_step (spec §3.4; p = 0.05 -> 0.004621)."""
    p = step / max(total_step, 1)
    return lambda0 * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def discriminator_losses(layer_logits: list[dict[str, torch.Tensor]], lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L_du = mean_l L_du^l / 2 and L_dc = mean_l L_dc^l / 2 (spec §3.4), where per layer
    L_du^l = mean BCEWithLogits(D(u_k), y_k) and L_dc^l = λ_p · mean BCEWithLogits(D(GRL(c_k)), y_k), source labels
    y = 0 for the visual branch (first half of the logits) and 1 for the linguistic branch (second half)."""
    if not layer_logits:
        zero = torch.zeros(())
        return zero, zero
    du, dc = [], []
    for logits in layer_logits:
        n = logits["unique"].shape[0] // 2
        y = torch.cat([logits["unique"].new_zeros(n), logits["unique"].new_ones(n)])
        du.append(F.binary_cross_entropy_with_logits(logits["unique"].float(), y.float()))
        dc.append(lam * F.binary_cross_entropy_with_logits(logits["common"].float(), y.float()))
    return torch.stack(du).mean() / 2, torch.stack(dc).mean() / 2


class RadarLoss(nn.Module):
    """Total loss L = bce_weight · BCE + L_du + L_dc (spec §3.5). Keeps the schedule's step counter k (a buffer,
    saved in checkpoints): every training call increments k before use, so the first step uses p = 1/total_step.

    Args:
        bce_weight: 333 (official loss weight).
        lambda0 / gamma: schedule constants (0.01, 20).
        total_step: training batches per epoch × epochs, in the unit of k (official: ⌈N_train/1024⌉·40); the module
            sets it when None.
    """

    def __init__(self, bce_weight: float = 333.0, lambda0: float = 0.01, gamma: float = 20.0,
                 total_step: int | None = None):  # fmt: skip
        super().__init__()
        self.bce_weight, self.lambda0, self.gamma, self.total_step = bce_weight, lambda0, gamma, total_step
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, layer_logits: list[dict[str, torch.Tensor]]):
        if self.training:
            self.step += 1
        lam = adversarial_lambda(int(self.step), self.total_step or 1, self.lambda0, self.gamma)
        bce = tagging_loss(scores, labels, self.bce_weight)
        du, dc = discriminator_losses(layer_logits, lam)
        du, dc = du.to(bce.device), dc.to(bce.device)
        return {"loss": bce + du + dc, "loss_bce": bce, "loss_du": du, "loss_dc": dc, "lambda_p": torch.tensor(lam)}
