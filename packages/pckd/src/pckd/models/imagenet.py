"""torchvision ResNet18/34 for the ImageNet setting (spec §3.2, §4.3), with the zoo interface.

Subclasses torchvision's ResNet so torchvision weight files (``resnet34-b627a593.pth``) load without remapping.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class TorchvisionResNet(ResNet):
    """torchvision ResNet with ``forward_features`` (B, 3, H, W) → (B, 512) and ``classifier_layer`` = ``fc``."""

    def __init__(self, depth: int, num_classes: int) -> None:
        layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
        if depth not in layers:
            raise ValueError(f"torchvision ResNet depth must be 18 or 34, got {depth}")
        super().__init__(BasicBlock, layers[depth], num_classes=num_classes)
        self.feature_dim = 512

    @property
    def classifier_layer(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)  # (B, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
