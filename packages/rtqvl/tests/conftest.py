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


@pytest.fixture(scope="session")
def two_process_results():
    """One 2-process gloo run shared by the DDP equivalence tests (process start-up dominates their cost)."""
    from mmzoo.testing import run_distributed
    from rtqvl_testlib import two_process_worker

    return run_distributed(two_process_worker, world_size=2)
