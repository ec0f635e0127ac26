"""mmzoo.metrics: per-sample metrics that count each id once and survive a rank without samples."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from mmzoo_dist_helpers import indexed_mean_rank  # noqa: E402

from mmzoo.metrics import IndexedMean, first_of_each_id  # noqa: E402
from mmzoo.testing import run_distributed  # noqa: E402


def test_first_of_each_id_keeps_the_first_row_of_each_id_in_id_order():
    assert first_of_each_id(torch.tensor([5, 2, 5, 9, 2])).tolist() == [1, 0, 3]


def test_indexed_mean_counts_each_id_once():
    m = IndexedMean()
    m.update(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([4, 7, 9]))
    m.update(torch.tensor([1.0]), torch.tensor([4]))  # a repeat that a padding DistributedSampler adds
    assert m.compute().item() == pytest.approx(2 / 3)
    assert math.isnan(IndexedMean().compute().item())
    with pytest.raises(ValueError, match="must be"):
        m.update(torch.ones(2, 1), torch.arange(2))


def test_indexed_mean_syncs_with_a_rank_that_added_nothing():
    # torchmetrics would send the empty rank's integer ids as float32 and the gather would fail
    assert run_distributed(indexed_mean_rank, 2) == [pytest.approx(2 / 3)] * 2
