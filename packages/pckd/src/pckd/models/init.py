"""RepDistiller's weight initialisation, shared by the CIFAR zoo."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def he_fan_out_init(model: nn.Module, linear: Callable[[nn.Linear], None] | None = None) -> None:
    """Convolutions He-normal with fan-out (their bias, if any, at 0), BatchNorm at weight 1 and bias 0, and each
    ``nn.Linear`` through ``linear`` (``None``: PyTorch's default kept), in ``model.modules()`` order as the zoo's
    own loops draw them, so a seed gives the same weights."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear is not None:
            linear(m)


def zero_bias(m: nn.Linear) -> None:
    nn.init.zeros_(m.bias)


def normal_001(m: nn.Linear) -> None:
    """N(0, 0.01) weights and a zero bias (VGG, MobileNetV2)."""
    nn.init.normal_(m.weight, 0, 0.01)
    nn.init.zeros_(m.bias)
