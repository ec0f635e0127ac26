"""Settings for every test in the workspace (pytest loads this file for any test path below the root)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny models, which run fastest on one intra-op thread; on a 2-core machine more threads only
    spin-wait (and oversubscribe when pytest spawns worker processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
