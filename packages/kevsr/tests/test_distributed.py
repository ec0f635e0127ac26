"""Multi-process validation counts every video once and equals one process (gloo CPU processes)."""

import sys
from pathlib import Path

import torch
from mmzoo.testing import run_distributed

from kevsr.synthetic import write_random_dataset

sys.path.insert(0, str(Path(__file__).parent))
import kevsr_dist_helpers as h  # noqa: E402


def test_ddp_validation_counts_each_video_once_and_equals_one_process(tmp_path):
    root, kg = tmp_path / "data", tmp_path / "data" / "kg.txt.gz"
    write_random_dataset(root, kg, seed=0, sizes=(4, 7, 4))  # 7 validation videos: not divisible by 2
    single = h.validate_rank(0, 1, str(root), str(kg))
    ranks = run_distributed(h.validate_rank, world_size=2, args=(str(root), str(kg)))
    seen = [vid for r in ranks for vid in r["seen"]]
    assert len(single["seen"]) == 7 and sorted(seen) == sorted(single["seen"])
    assert len(ranks[0]["seen"]) != len(ranks[1]["seen"])  # uneven ranks, as the sampler allows
    for r in ranks:
        for name, value in single["metrics"].items():
            torch.testing.assert_close(r["metrics"][name], value, msg=name)
