"""EVE's temporal consistency constraints (spec §3.4): the objective of the per-step update of Ẑ_t.

Reconstruction: the paper's figure shows a text-only and a depth-guided UNet prediction feeding a "parameter
update" of the learnable latent Ẑ_t; the equations are not available, so the two terms below (inter-frame
constraint L_tmp and branch agreement L_agr) are this package's reconstruction (spec §3.4) and every choice is a
config key (`model.edit.tcc.*`). Squared norms are averaged over the latent's elements (‖·‖² / (C·h·w)), so the
weights do not depend on resolution.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["temporal_loss", "agreement_loss", "tcc_loss", "TemporalConsistencyLoss"]


def _check(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected latents (F, C, h, w), got {tuple(x.shape)}")


def temporal_loss(
    x0: torch.Tensor,
    ref: torch.Tensor | None = None,
    pairs: Literal["consecutive", "key"] = "consecutive",
) -> torch.Tensor:
    """Inter-frame constraint L_tmp (spec §3.4, reconstruction)::

        L_tmp = mean_f ‖(x̂_0^f − x̂_0^{g(f)}) − (R^f − R^{g(f)})‖² ,   g(f) = f−1 (consecutive) or 0 (key)

    x0 (F, C, h, w) depth-guided predicted clean latents x̂_0; ref (F, C, h, w) the reference R (source latents
    Z_0, or the inversion's x̂_0), None for R = 0 (plain smoothness). Returns a scalar; 0 for a single frame.
    """
    _check(x0, "temporal_loss")
    if ref is not None and ref.shape != x0.shape:
        raise ValueError(f"temporal_loss: ref {tuple(ref.shape)} must match x0 {tuple(x0.shape)}")
    if x0.shape[0] < 2:
        return x0.sum() * 0.0
    d = x0 - ref if ref is not None else x0  # (F, C, h, w)  x̂_0 − R
    other = d[:-1] if pairs == "consecutive" else d[:1]  # (F−1, C, h, w) or (1, C, h, w)
    diff = d[1:] - other  # (F−1, C, h, w)  change of x̂_0 minus change of R
    return diff.pow(2).mean()  # mean over pairs and elements


def agreement_loss(
    x0_depth: torch.Tensor,
    x0_text: torch.Tensor,
    target: Literal["text", "depth"] = "text",
) -> torch.Tensor:
    """Branch agreement L_agr (spec §3.4, reconstruction)::

        target = text:   L_agr = mean_f ‖x̂_0^f − sg(x̂'_0^f)‖²
        target = depth:  L_agr = mean_f ‖x̂'_0^f − sg(x̂_0^f)‖²

    x0_depth (F, C, h, w) x̂_0 of the depth-guided branch; x0_text (F, C, h, w) x̂'_0 of the text-only branch;
    sg = stop-gradient.
    """
    _check(x0_depth, "agreement_loss")
    if x0_text.shape != x0_depth.shape:
        raise ValueError(f"agreement_loss: shapes differ: {tuple(x0_depth.shape)} vs {tuple(x0_text.shape)}")
    if target == "text":
        return (x0_depth - x0_text.detach()).pow(2).mean()
    return (x0_text - x0_depth.detach()).pow(2).mean()


def tcc_loss(
    x0_depth: torch.Tensor,
    x0_text: torch.Tensor,
    ref: torch.Tensor | None,
    lambda_tmp: float = 1.0,
    lambda_agr: float = 0.5,
    pairs: Literal["consecutive", "key"] = "consecutive",
    agree_target: Literal["text", "depth"] = "text",
) -> dict[str, torch.Tensor]:
    """Total update objective L = λ_tmp·L_tmp(x̂_0) + λ_agr·L_agr(x̂_0, x̂'_0) (spec §3.4); returns its named terms."""
    tmp = temporal_loss(x0_depth, ref, pairs)
    agr = agreement_loss(x0_depth, x0_text, agree_target)
    return {"loss": lambda_tmp * tmp + lambda_agr * agr, "tmp": tmp, "agr": agr}


class TemporalConsistencyLoss(nn.Module):
    """Holds the weights and variants of :func:`tcc_loss` (``model.edit.tcc.*``)."""

    def __init__(
        self,
        lambda_tmp: float = 1.0,
        lambda_agr: float = 0.5,
        pairs: Literal["consecutive", "key"] = "consecutive",
        agree_target: Literal["text", "depth"] = "text",
    ):
        super().__init__()
        self.lambda_tmp = lambda_tmp
        self.lambda_agr = lambda_agr
        self.pairs = pairs
        self.agree_target = agree_target

    def forward(
        self, x0_depth: torch.Tensor, x0_text: torch.Tensor, ref: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """x0_depth, x0_text, ref: (F, C, h, w) (ref may be None). Returns {"loss", "tmp", "agr"} scalars."""
        return tcc_loss(x0_depth, x0_text, ref, self.lambda_tmp, self.lambda_agr, self.pairs, self.agree_target)
