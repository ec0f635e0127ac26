"""mmzoo.metrics: per-sample metrics that count each id once and survive a rank without samples."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from mmzoo_dist_helpers import indexed_mean_rank  # noqa: E402

from mmzoo.metrics import IndexedMean, first_of_each_id, normalize_vqa_answer  # noqa: E402
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


def test_vqa_normalisation_follows_the_official_evaluator():
    """Worked by hand from the official VQA evaluation's rules."""
    cases = {
        "red-white": "red white",  # a '-' touching no space becomes a space
        "hello - world": "hello world",  # ... and is deleted when one of its occurrences touches a space
        "1,000": "1000",  # a digit-comma-digit group deletes every listed character
        "10:30": "10:30",  # ':' is not in the evaluator's list
        "don't": "don't",  # nor is the apostrophe
        "dont": "don't",  # apostrophe-less contractions are restored
        "twas": "'twas",
        "3.5": "3.5",  # a period before a digit is kept
        ".5": ".5",
        "Yes.": "yes",
        "Two Dogs!": "2 dogs",
        "None": "0",  # the evaluator's number map also holds 'none'
        "the\tcat": "cat",
        "a  man!": "man",
    }
    assert {raw: normalize_vqa_answer(raw) for raw in cases} == cases
