"""Backbones (RepDistiller CIFAR zoo, torchvision ImageNet ResNets, small digits CNNs) and PCKD's heads.

Every backbone exposes ``forward_features(x) -> f`` (B, D), ``classifier_layer`` (the final ``nn.Linear``
whose rows are the category centers) and ``feature_dim``; ``forward(x)`` returns logits (B, K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmzoo.config import check_range
from torch import nn

from pckd.models.cifar_resnet import CifarResNet
from pckd.models.digits import DigitsCNN
from pckd.models.heads import AlignHead, Embed
from pckd.models.imagenet import TorchvisionResNet
from pckd.models.mobilenetv2 import MobileNetV2
from pckd.models.resnet_bottleneck import CifarResNet50
from pckd.models.shufflenet import ShuffleV1, ShuffleV2
from pckd.models.vgg import VGG, VGG_STAGES
from pckd.models.wrn import WideResNet

__all__ = ["Arch", "ARCHS", "PCKDConfig", "build_backbone", "Embed", "AlignHead"]

Arch = Literal[
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet50",
    "tv_resnet18",
    "tv_resnet34",
    "digits_teacher",
    "digits_student",
    "digits_student64",
]
ARCHS: tuple[str, ...] = Arch.__args__  # type: ignore[attr-defined]
DIGITS_ARCHS = ("digits_teacher", "digits_student", "digits_student64")


def build_backbone(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build one network of the zoo by its RepDistiller name (explicit branches, no registry)."""
    if arch.startswith("resnet") and arch.endswith("x4"):
        return CifarResNet(int(arch[len("resnet") : -2]), (32, 64, 128, 256), num_classes)
    if arch.startswith("resnet"):
        return CifarResNet(int(arch[len("resnet") :]), (16, 16, 32, 64), num_classes)
    if arch.startswith("wrn_"):
        _, depth, widen = arch.split("_")
        return WideResNet(int(depth), int(widen), num_classes)
    if arch in VGG_STAGES:
        return VGG(VGG_STAGES[arch], num_classes)
    if arch == "MobileNetV2":
        return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)  # RepDistiller `mobile_half`
    if arch == "ShuffleV1":
        return ShuffleV1(num_classes)
    if arch == "ShuffleV2":
        return ShuffleV2(num_classes)
    if arch == "ResNet50":
        return CifarResNet50(num_classes)
    if arch == "tv_resnet18":
        return TorchvisionResNet(18, num_classes)
    if arch == "tv_resnet34":
        return TorchvisionResNet(34, num_classes)
    if arch == "digits_teacher":
        return DigitsCNN((32, 64), 1, None, num_classes, in_channels)
    if arch == "digits_student":
        return DigitsCNN((8, 16), 2, None, num_classes, in_channels)
    if arch == "digits_student64":
        return DigitsCNN((8, 16), 2, 64, num_classes, in_channels)
    raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")


@dataclass
class PCKDConfig:
    """Networks and auxiliary heads of PCKD (spec §3.2–3.3)."""

    student_arch: Arch = "wrn_16_2"
    """Student network (RepDistiller name, spec §3.2)."""
    teacher_arch: Arch | None = "wrn_40_2"
    """Teacher network; null for CE-only / teacher training (no teacher is built)."""
    num_classes: int = 100
    """Number of classes C (CIFAR-100: 100, ImageNet: 1000, digits: 10); must match the data."""
    in_channels: int = 3
    """Input channels (3; the digits CNNs also accept 1)."""
    align_hidden_mult: int = 16
    """Hidden width of the align MLP H as a multiple of d_t (spec §3.3: 16·d_t)."""

    def __post_init__(self) -> None:
        check_range("model.config.in_channels", self.in_channels, ge=1, integer=True)
        for key in ("student_arch", "teacher_arch"):
            arch = getattr(self, key)
            if arch is not None and arch not in ARCHS:
                raise ValueError(f"model.config.{key}={arch!r} is not one of {', '.join(ARCHS)}")
            if arch is not None and arch not in DIGITS_ARCHS and self.in_channels != 3:
                raise ValueError(f"model.config.in_channels={self.in_channels}: {arch} takes RGB input (3)")
        if self.num_classes < 2:
            raise ValueError(f"model.config.num_classes={self.num_classes} must be >= 2")
        if self.align_hidden_mult < 1:
            raise ValueError(f"model.config.align_hidden_mult={self.align_hidden_mult} must be >= 1")
