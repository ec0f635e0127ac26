"""Wide ResNets of the RepDistiller zoo (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Module names follow RepDistiller (``conv1``, ``block{1,2,3}.layer.{j}.bn1/conv1/bn2/conv2/convShortcut``,
``bn1``, ``fc``) so public teacher checkpoints load as they are. Depth 6n+4, pre-activation blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pckd.models.init import he_fan_out_init, zero_bias


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN → ReLU → 3×3 conv → BN → ReLU → 3×3 conv, plus the (1×1-projected) input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None  # noqa: N815 (RepDistiller checkpoint key)
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.relu2(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return out + shortcut


class NetworkBlock(nn.Module):
    """A stage of ``n`` WideBasicBlocks under the attribute ``layer`` (RepDistiller key layout)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if j == 0 else out_planes, out_planes, stride if j == 0 else 1, drop_rate)
                for j in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for 32×32 inputs. Shapes: (B, 3, H, W) → features (B, 64·widen) → logits (B, K)."""

    def __init__(self, depth: int, widen: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.feature_dim = channels[3]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_fan_out_init(self, zero_bias)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, D)."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.pool(x).flatten(1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
