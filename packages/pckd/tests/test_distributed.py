"""L_CC gathers profiles across ranks and CRD keeps its memory banks in step: 2 processes equal 1 process on the whole
batch (STYLE 2.10)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import pckd_dist_helpers  # noqa: E402
from mmzoo.testing import run_distributed  # noqa: E402

from pckd.losses import CategoryContrastiveLoss, CRDLoss  # noqa: E402


@pytest.fixture(scope="module")
def two_ranks():
    """L_CC, a CRD step and the `test` loop on 2 processes (one spawn for all)."""
    return run_distributed(pckd_dist_helpers.two_rank_checks, world_size=2)


def test_two_ranks_equal_one_process(two_ranks):
    u, w, labels = pckd_dist_helpers.cc_inputs()
    u1, w1 = u.clone().requires_grad_(True), w.clone().requires_grad_(True)
    full = CategoryContrastiveLoss(4.0, 0.07)(u1, w1, labels).mean()
    full.backward()
    outs = [r["cc"] for r in two_ranks]
    # relative: the loss is ~3e2 in float32, where one rounding step is ~3e-5 and the two paths sum in other orders
    assert sum(o[0] for o in outs) / 2 == pytest.approx(full.item(), rel=1e-6, abs=0)
    torch.testing.assert_close(torch.cat([outs[0][1], outs[1][1]]), u1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([outs[0][2], outs[1][2]]), w1.grad, rtol=1e-4, atol=1e-6)


def test_crd_memory_banks_stay_identical_across_ranks(two_ranks):
    """Each rank updates the banks with every rank's batch (gathered) and sets Z from every rank's first batch: the
    banks and Z are identical on both ranks and equal one process's on the whole batch, as is the mean loss."""
    single = pckd_dist_helpers.crd_step(*pckd_dist_helpers.crd_inputs())
    r0, r1 = (r["crd"] for r in two_ranks)
    for key in ("memory_s", "memory_t", "z_s", "z_t"):
        assert torch.equal(r0[key], r1[key]), key
        torch.testing.assert_close(r0[key], single[key], rtol=1e-6, atol=1e-7)
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(single["loss"], rel=1e-5)
    torch.manual_seed(0)
    fresh = CRDLoss(feat_dim=4, num_negatives=5)
    fresh.init_memory(torch.arange(12) % 3)
    assert not torch.equal(fresh.memory_s, r0["memory_s"])  # the step changed the banks


def test_crd_banks_start_from_rank_zeros(two_ranks):
    """Ranks seeded differently draw different banks; broadcast_memory (on_fit_start) gives every rank rank 0's,
    since DDP is told to leave the banks alone."""
    (s0, t0, *_), (s1, t1, after_s1, after_t1) = (r["broadcast"] for r in two_ranks)
    assert not torch.equal(s0, s1) and not torch.equal(t0, t1)
    assert torch.equal(after_s1, s0) and torch.equal(after_t1, t0)


def test_ddp_test_counts_each_image_once_and_equals_one_process(two_ranks):
    """497 test images on 2 processes: each image is evaluated once and top-1 / top-5 equal one process's
    (Lightning's default sampler would repeat one image)."""
    single = pckd_dist_helpers.test_rank(0, 1)
    ranks = [r["test"] for r in two_ranks]
    seen = [i for r in ranks for i in r["seen"]]
    assert len(single["seen"]) == 497 and sorted(seen) == sorted(single["seen"])
    for r in ranks:
        torch.testing.assert_close(r["acc1"], single["acc1"])
        torch.testing.assert_close(r["acc5"], single["acc5"])
