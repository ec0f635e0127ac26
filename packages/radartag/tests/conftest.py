"""Test settings for radartag: one intra-op thread (the shared CI/dev machines are oversubscribed, where several
OpenMP threads per process slow tiny models down by an order of magnitude)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
