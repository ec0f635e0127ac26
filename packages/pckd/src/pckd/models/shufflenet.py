"""ShuffleNet V1 (groups 3, 960-d) and V2 (net size 1, 1024-d) of the RepDistiller zoo for 32×32 inputs.

Module names follow RepDistiller: V1 ``conv1, bn1, layer{1,2,3}.{j}.conv1/bn1/conv2/bn2/conv3/bn3, linear``;
V2 ``conv1, bn1, layer{1,2,3}.{j}.conv*/bn*, conv2, bn2, linear``. Both stems are a 1×1 convolution 3 → 24.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) with C = g·c → interleave the g groups' channels, (B, C, H, W)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)


class ShuffleV1Bottleneck(nn.Module):
    """Grouped 1×1 → shuffle → depthwise 3×3 (stride) → grouped 1×1; stride 2 concatenates an avg-pooled input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res  # (B, C_out, H', W')
        return F.relu(out)


class ShuffleV1(nn.Module):
    """Shapes: (B, 3, 32, 32) → features (B, 960) → logits (B, K)."""

    def __init__(self, num_classes: int, out_planes: tuple[int, int, int] = (240, 480, 960), groups: int = 3) -> None:
        super().__init__()
        num_blocks = (4, 8, 4)
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.feature_dim = out_planes[2]

    def _make_layer(self, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for j in range(blocks):
            stride = 2 if j == 0 else 1
            cat_planes = self.in_planes if j == 0 else 0  # stride-2 blocks concatenate their pooled input
            layers.append(ShuffleV1Bottleneck(self.in_planes, out_planes - cat_planes, stride, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 960)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)  # (B, 960)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x))


class ShuffleV2Block(nn.Module):
    """Channel split in halves; the right half goes 1×1 → depthwise 3×3 → 1×1; concatenate; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)  # (B, C/2, H, W) each
        right = F.relu(self.bn1(self.conv1(right)))
        right = self.bn2(self.conv2(right))
        right = F.relu(self.bn3(self.conv3(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)  # (B, C, H, W)


class ShuffleV2Down(nn.Module):
    """Spatial down-sampling unit: both branches stride 2, concatenated to ``out_channels``, shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)  # (B, C_out, H/2, W/2)


class ShuffleV2(nn.Module):
    """Shapes: (B, 3, 32, 32) → features (B, 1024) → logits (B, K)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        out_channels = (116, 232, 464, 1024)
        num_blocks = (3, 7, 3)
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)  # 1×1 stem, as RepDistiller's ShuffleV2 (and V1)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.feature_dim = out_channels[3]

    def _make_layer(self, out_channels: int, blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2Down(self.in_channels, out_channels)]
        layers += [ShuffleV2Block(out_channels) for _ in range(blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 1024)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.pool(x).flatten(1)  # (B, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x))
