"""Backbone shapes against RepDistiller's definitions where a checkpoint test does not already cover them."""

import math

import pytest
import torch

from pckd.models import build_backbone


def _repdistiller_shufflev2_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of RepDistiller's ``ShuffleV2`` (net size 1): a 1×1 stem 3 → 24, three stages of one
    down-sampling unit (conv1..5/bn1..5) and 3/7/3 basic units (conv1..3/bn1..3 on half the channels),
    a 1×1 conv 464 → 1024 with bn2, and ``linear``."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (24, 3, 1, 1), "bn1.weight": (24,)}
    cin = 24
    for s, (cout, blocks) in enumerate(zip((116, 232, 464), (3, 7, 3)), start=1):
        mid = cout // 2
        p = f"layer{s}.0"
        shapes |= {
            f"{p}.conv1.weight": (cin, 1, 3, 3),
            f"{p}.bn1.weight": (cin,),
            f"{p}.conv2.weight": (mid, cin, 1, 1),
            f"{p}.conv3.weight": (mid, cin, 1, 1),
            f"{p}.conv4.weight": (mid, 1, 3, 3),
            f"{p}.conv5.weight": (mid, mid, 1, 1),
        }
        for j in range(1, blocks + 1):
            p = f"layer{s}.{j}"
            shapes |= {
                f"{p}.conv1.weight": (mid, mid, 1, 1),
                f"{p}.conv2.weight": (mid, 1, 3, 3),
                f"{p}.conv3.weight": (mid, mid, 1, 1),
            }
        cin = cout
    shapes |= {"conv2.weight": (1024, 464, 1, 1), "bn2.weight": (1024,), "linear.weight": (num_classes, 1024)}
    return shapes


def test_shufflev2_matches_repdistiller_shapes():
    net = build_backbone("ShuffleV2", 100)
    state = net.state_dict()
    for key, shape in _repdistiller_shufflev2_shapes(100).items():
        assert tuple(state[key].shape) == shape, key
    assert net.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, 1024)


def test_shufflev1_stem_is_1x1():
    state = build_backbone("ShuffleV1", 100).state_dict()
    assert tuple(state["conv1.weight"].shape) == (24, 3, 1, 1)
    assert tuple(state["layer1.0.conv1.weight"].shape) == (54, 24, 1, 1)  # (240 − 24) / 4, groups 1 on the stem
    assert tuple(state["linear.weight"].shape) == (100, 960)


@pytest.mark.parametrize("arch", ["resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ResNet50"])
def test_convolutions_start_he_normal_fan_out_as_in_repdistiller(arch):
    """RepDistiller initialises these networks' convolutions from N(0, 2 / (k·k·C_out)) and their BatchNorms at
    weight 1, bias 0 (teacher training and students start from it). The sample std of every convolution with at
    least 1,000 weights must be within 15 % of sqrt(2 / fan_out)."""
    torch.manual_seed(0)
    net = build_backbone(arch, 100)
    checked = 0
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 1000:
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            ratio = float(m.weight.std()) / math.sqrt(2.0 / fan_out)
            assert 0.85 < ratio < 1.15, f"{arch}.{name}: std / sqrt(2/fan_out) = {ratio:.3f}"
            checked += 1
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    assert checked > 0
