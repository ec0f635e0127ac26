"""CIFAR ResNets of the RepDistiller zoo (resnet8 ... resnet110, resnet8x4, resnet32x4).

Module names follow RepDistiller (``conv1``, ``bn1``, ``layer{1,2,3}.{j}.conv1/bn1/conv2/bn2/downsample.{0,1}``,
``fc``) so its public teacher checkpoints load without key remapping (spec §3.2).
Depth 6n+2 with BasicBlocks; filters ``[16, 16, 32, 64]`` (``x4``: ``[32, 64, 128, 256]``).
"""

from __future__ import annotations

import torch
from torch import nn

from pckd.models.init import he_fan_out_init


class BasicBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN, plus the (projected) input, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """RepDistiller CIFAR ResNet: stem 3×3 conv, three stages of n BasicBlocks (strides 1, 2, 2), GAP, ``fc``.

    Shapes: input (B, 3, H, W) → ``forward_features`` (B, D) with D = filters[3] → logits (B, K).
    """

    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.in_planes = filters[0]
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(filters[1], n, stride=1)
        self.layer2 = self._make_layer(filters[2], n, stride=2)
        self.layer3 = self._make_layer(filters[3], n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(filters[3], num_classes)
        self.feature_dim = filters[3]
        self.reset_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for j in range(blocks):
            layers.append(BasicBlock(self.in_planes, planes, stride if j == 0 else 1))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        he_fan_out_init(self)

    @property
    def classifier_layer(self) -> nn.Linear:
        """The final Linear whose rows are the category centers (spec §3.0)."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → pooled penultimate feature f (B, D)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → logits (B, K)."""
        return self.fc(self.forward_features(x))
