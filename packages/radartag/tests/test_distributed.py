"""Multi-process validation/test score every video once and equal one process (gloo CPU processes)."""

import math
import sys
from pathlib import Path

import pytest
import torch
from mmzoo.testing import run_distributed

from radartag.synthetic import write_synthetic_vertical

sys.path.insert(0, str(Path(__file__).parent))
import radartag_dist_helpers as h  # noqa: E402


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both checks' shares on 2 processes (one spawn), and the vertical they evaluate."""
    root = str(tmp_path_factory.mktemp("kwai"))
    write_synthetic_vertical(root, "v", h.DEMO)
    return root, run_distributed(h.both_checks_rank, world_size=2, args=(root,))


def test_ddp_evaluation_counts_each_video_once_and_equals_one_process(two_ranks):
    root, both = two_ranks
    single = h.evaluate_rank(0, 1, root)
    assert single["val"]["count"] == 9 and single["test"]["count"] == 19
    ranks = [r["evaluate"] for r in both]
    for stage in ("val", "test"):
        assert sum(r[stage]["count"] for r in ranks) == single[stage]["count"]  # Lightning's default repeats one
        for r in ranks:
            assert r[stage]["metrics"].keys() == single[stage]["metrics"].keys()
            for name, value in single[stage]["metrics"].items():
                torch.testing.assert_close(r[stage]["metrics"][name], value, msg=f"{stage}/{name}")


def test_skipped_videos_are_counted_over_all_ranks(two_ranks):
    # the metric's sync in compute() is undone afterwards; the count and the line must still cover both ranks
    ranks = [r["skipped"] for r in two_ranks[1]]
    for r in ranks:
        some = r["some"]
        assert some["logged"]["val/skipped_videos"] == 2.0 and not some["warnings"]
        assert len(some["lines"]) == 1 and "2 of 5 evaluation videos" in some["lines"][0]
        # a rank holding only skipped videos adds nothing to the sums: both ranks log rank 0's finite metrics
        one = r["rank1_all"]
        assert one["logged"]["val/skipped_videos"] == 2.0 and not one["warnings"]
        assert one["logged"]["val/sample_mAP"] == ranks[0]["rank1_all"]["logged"]["val/sample_mAP"]
        assert 0.0 < one["logged"]["val/sample_mAP"] <= 1.0
        # no positive tag on any rank: sample mAP / R@k NaN on both ranks (not 0), a warning instead of the info line
        none = r["all"]
        assert none["logged"]["val/skipped_videos"] == 5.0 and not none["lines"]
        assert math.isnan(none["logged"]["val/sample_mAP"]) and math.isnan(none["logged"]["val/R@5"])
        assert none["logged"]["val/P@1"] == 0.0  # P@k averages over every video, each with precision 0 here
        assert len(none["warnings"]) == 1 and "none of the 5 evaluation videos" in none["warnings"][0]
