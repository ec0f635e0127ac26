"""Multi-process validation/test score every video once and equal one process (gloo CPU processes)."""

import sys
from pathlib import Path

import torch
from mmzoo.testing import run_distributed

from radartag.synthetic import write_synthetic_vertical

sys.path.insert(0, str(Path(__file__).parent))
import radartag_dist_helpers as h  # noqa: E402


def test_ddp_evaluation_counts_each_video_once_and_equals_one_process(tmp_path):
    root = str(tmp_path / "kwai")
    write_synthetic_vertical(root, "v", h.DEMO)
    single = h.evaluate_rank(0, 1, root)
    assert single["val"]["count"] == 9 and single["test"]["count"] == 19
    ranks = run_distributed(h.evaluate_rank, world_size=2, args=(root,))
    for stage in ("val", "test"):
        assert sum(r[stage]["count"] for r in ranks) == single[stage]["count"]  # Lightning's default repeats one
        for r in ranks:
            assert r[stage]["metrics"].keys() == single[stage]["metrics"].keys()
            for name, value in single[stage]["metrics"].items():
                torch.testing.assert_close(r[stage]["metrics"][name], value, msg=f"{stage}/{name}")


def test_skipped_videos_are_counted_over_all_ranks():
    # the metric's sync in compute() is undone afterwards; the count and the line must still cover both ranks
    for logged, lines in run_distributed(h.skipped_videos_rank, world_size=2):
        assert logged["skipped"] == 2.0
        assert len(lines) == 1 and "2 of 5 evaluation videos" in lines[0]
