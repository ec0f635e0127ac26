"""ResNet50 for CIFAR (bottleneck blocks, 2048-d features) of the RepDistiller zoo.

Module names follow RepDistiller: ``conv1, bn1, layer{1..4}.{j}.conv1..3/bn1..3/shortcut.{0,1}, linear``.
Initialisation as RepDistiller's ``resnetv2.ResNet``: He-normal (fan-out) convolutions, BatchNorm at (1, 0),
PyTorch's default for the final Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pckd.models.init import he_fan_out_init


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels) with a projected shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * 4:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet50(nn.Module):
    """Shapes: (B, 3, 32, 32) → features (B, 2048) → logits (B, K)."""

    def __init__(self, num_classes: int, num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * 4, num_classes)
        self.feature_dim = 512 * 4
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_fan_out_init(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for j in range(blocks):
            layers.append(Bottleneck(self.in_planes, planes, stride if j == 0 else 1))
            self.in_planes = planes * 4
        return nn.Sequential(*layers)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 2048)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)  # (B, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x))
