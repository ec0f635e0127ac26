"""MobileNetV2 of the RepDistiller zoo (``mobile_half``: expansion T=6, width 0.5) for 32×32 inputs.

Module names follow RepDistiller: ``conv1`` (Sequential conv/BN/ReLU), ``blocks.{i}.{j}.conv.{0..7}``,
``conv2`` (1×1 conv/BN/ReLU to 1280), ``classifier`` = Sequential(Linear(1280, K)).
"""

from __future__ import annotations

import torch
from torch import nn

from pckd.models.init import he_fan_out_init, normal_001


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise (stride) → 1×1 linear projection; identity shortcut when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Shapes: (B, 3, 32, 32) → features (B, 1280) → logits (B, K)."""

    def __init__(self, expansion: int, width_mult: float, num_classes: int) -> None:
        super().__init__()
        # (t, c, n, s) rows of the CIFAR variant: expansion, channels, repeats, first stride
        setting = [
            [1, 16, 1, 1],
            [expansion, 24, 2, 1],
            [expansion, 32, 3, 2],
            [expansion, 64, 4, 2],
            [expansion, 96, 3, 1],
            [expansion, 160, 3, 2],
            [expansion, 320, 1, 1],
        ]
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            out_ch = int(c * width_mult)
            layers = []
            for j in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if j == 0 else 1, t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = 1280
        self.conv2 = _conv_bn_relu(in_ch, self.last_channel, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.feature_dim = self.last_channel
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_fan_out_init(self, normal_001)  # leaky_relu gain at slope 0 = relu gain: the same draw

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.classifier[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1280)."""
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.pool(self.conv2(x)).flatten(1)  # (B, 1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
