"""L_CC gathers profiles across ranks: 2 processes equal 1 process on the whole batch (STYLE 2.10)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import pckd_dist_helpers  # noqa: E402
from mmzoo.testing import run_distributed  # noqa: E402

from pckd.losses import CategoryContrastiveLoss  # noqa: E402


def test_two_ranks_equal_one_process():
    u, w, labels = pckd_dist_helpers.cc_inputs()
    u1, w1 = u.clone().requires_grad_(True), w.clone().requires_grad_(True)
    full = CategoryContrastiveLoss(4.0, 0.07)(u1, w1, labels).mean()
    full.backward()
    outs = run_distributed(pckd_dist_helpers.cc_rank, world_size=2)
    # relative: the loss is ~3e2 in float32, where one rounding step is ~3e-5 and the two paths sum in other orders
    assert sum(o[0] for o in outs) / 2 == pytest.approx(full.item(), rel=1e-6, abs=0)
    torch.testing.assert_close(torch.cat([outs[0][1], outs[1][1]]), u1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([outs[0][2], outs[1][2]]), w1.grad, rtol=1e-4, atol=1e-6)


def test_ddp_test_counts_each_image_once_and_equals_one_process():
    """497 test images on 2 processes: each image is evaluated once and top-1 / top-5 equal one process's
    (Lightning's default sampler would repeat one image)."""
    single = pckd_dist_helpers.test_rank(0, 1)
    ranks = run_distributed(pckd_dist_helpers.test_rank, world_size=2)
    seen = [i for r in ranks for i in r["seen"]]
    assert len(single["seen"]) == 497 and sorted(seen) == sorted(single["seen"])
    for r in ranks:
        torch.testing.assert_close(r["acc1"], single["acc1"])
        torch.testing.assert_close(r["acc5"], single["acc5"])
