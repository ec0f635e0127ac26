"""Evaluation under DDP equals one process: repeats a DistributedSampler pads with count once, and a rank whose
whole shard was skipped as corrupt takes part in the epoch-end gathers with nothing (2 gloo processes)."""

import sys
from pathlib import Path

import pytest
import torch
from mmzoo.testing import run_distributed

sys.path.insert(0, str(Path(__file__).parent))
import asdmllm_dist_helpers as helpers  # noqa: E402

from asdmllm.data import make_socialcounterfactuals  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(
        make_socialcounterfactuals(
            tmp_path_factory.mktemp("sc_dist"), ["nurse", "chef"], ["White", "Black"], ["male", "female"], 3, 32
        )
    )


def assert_same_metrics(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], equal_nan=True, msg=key)


def test_ddp_evaluation_equals_one_process(root):
    single_padded = helpers.evaluate(root, list(range(helpers.NUM_ITEMS)))
    single_remaining = helpers.evaluate(root, list(range(0, 22, 2)))  # the items the corrupt shard leaves
    assert {"val/concept_acc", "val/loss", "val/bias/socialcounterfactuals/race/min_skew"} <= set(single_padded)
    assert 0 < single_padded["val/concept_acc"] < 1  # the repeated item's hit or miss would move it
    for got in run_distributed(helpers.two_ranks, world_size=2, args=(root,)):
        assert_same_metrics(got["padded"], single_padded)
        assert_same_metrics(got["shard_corrupt"], single_remaining)
