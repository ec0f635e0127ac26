"""Small CNNs for scikit-learn's 8×8 ``digits`` (demo and repro, spec §8c).

Not part of the paper: they let the whole method run on CPU in seconds. Each has the zoo interface
(``forward_features``, ``classifier_layer``, ``feature_dim``).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 (stride) → BN → ReLU [→ 1×1 projection] → GAP → ``fc``.

    Shapes: (B, C_in, 8, 8) → features (B, D) → logits (B, K). ``digits_teacher``: 32/64 channels, D = 64;
    ``digits_student``: 8/16 channels with stride 2, D = 16; ``digits_student64``: the student plus a 1×1
    projection to D = 64 (same width as the teacher, so L_CA is active).
    """

    def __init__(
        self, widths: tuple[int, int], stride: int, proj_dim: int | None, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers = _conv_bn_relu(in_channels, widths[0], 3, 1) + _conv_bn_relu(widths[0], widths[1], 3, stride)
        if proj_dim is not None:
            layers += _conv_bn_relu(widths[1], proj_dim, 1, 1)
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = proj_dim if proj_dim is not None else widths[1]
        self.fc = nn.Linear(self.feature_dim, num_classes)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
