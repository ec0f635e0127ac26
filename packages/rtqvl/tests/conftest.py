"""pytest setup: the tests folder on sys.path (helpers in rtqvl_testlib.py) and a fixed seed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
