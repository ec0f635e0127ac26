"""Trainable auxiliary heads of PCKD (spec §3.3); all are discarded after training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Embed(nn.Module):
    """``E_s`` / ``E_t``: Linear(d_in → d_out) then L2-normalise each row. Shapes: (N, d_in) → (N, d_out)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x), dim=1)  # (N, d_out), unit rows


class AlignHead(nn.Module):
    """``H``: Linear(d_s → h) → BatchNorm1d(h) → ReLU → Linear(h → d_t), h = 16·d_t by default.

    Reconstruction: the release imports this head from a missing file whose constructor signature
    (in_channels, mlp_hidden_size, projection_size) matches the BYOL projection head (spec §3.3).
    Shapes: (N, d_s) → (N, d_t).
    """

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, d_t)
