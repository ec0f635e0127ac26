"""VGG-BN networks of the RepDistiller zoo (vgg8, vgg11, vgg13, vgg16, vgg19) for 32×32 inputs.

Module names follow RepDistiller: ``block0..block4`` (Sequential conv/BN/ReLU with the last ReLU removed),
``classifier`` = Linear(512, K). Each stage is followed by a ReLU and 2×2 max pooling; the last stage is
average-pooled to 1×1.
"""

from __future__ import annotations

import torch
from torch import nn

from pckd.models.init import he_fan_out_init, normal_001

# Channels per stage; vgg8 = one conv per stage.
VGG_STAGES: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _stage(channels: list[int], in_channels: int) -> nn.Sequential:
    """conv3×3(+bias) → BN → ReLU per entry; the final ReLU is applied by the caller (RepDistiller layout)."""
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        in_channels = c
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Shapes: (B, 3, 32, 32) → features (B, 512) → logits (B, K)."""

    def __init__(self, stages: list[list[int]], num_classes: int) -> None:
        super().__init__()
        self.block0 = _stage(stages[0], 3)
        self.block1 = _stage(stages[1], stages[0][-1])
        self.block2 = _stage(stages[2], stages[1][-1])
        self.block3 = _stage(stages[3], stages[2][-1])
        self.block4 = _stage(stages[4], stages[3][-1])
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(512, num_classes)
        self.feature_dim = 512
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_fan_out_init(self, normal_001)

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 512). The 4th max-pool runs only for 64×64 inputs, as in RepDistiller."""
        h = x.shape[2]
        x = self.pool0(self.relu(self.block0(x)))
        x = self.pool1(self.relu(self.block1(x)))
        x = self.pool2(self.relu(self.block2(x)))
        x = self.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.relu(self.block4(x))
        return self.pool4(x).flatten(1)  # (B, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
