"""Diagnostics of repro.py (spec §8c, claim 3): the alternative distillation distances it tries."""

import math
from pathlib import Path

import pytest
import torch
from mmzoo.testing import load_script


@pytest.fixture(scope="module")
def repro():
    return load_script(Path(__file__).parents[1] / "repro.py")


def test_probability_distillation_by_hand(repro):
    t = {"level1": torch.tensor([[0.0, 0.0]]), "level2": torch.tensor([[0.0], [50.0]])}
    nt = {"level1": torch.tensor([[math.log(3.0), 0.0]]), "level2": torch.tensor([[0.0], [-50.0]])}
    # level 1: |σ(0) − σ(ln 3)| = |0.5 − 0.75| = 0.25; level 2: video 1 agrees (0), video 2 saturates at distance 1
    want = 0.25 + (0.0 + 1.0) / 2
    assert float(repro.ProbabilityDistillation()(t, nt)) == pytest.approx(want, abs=1e-4)
    far = {k: v + 1e4 for k, v in t.items()}
    assert float(repro.ProbabilityDistillation()(far, nt)) <= math.sqrt(2) + 1 + 1e-4  # bounded by √L per level
