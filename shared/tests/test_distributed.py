import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import mmzoo_dist_helpers as dist_helpers  # noqa: E402

import mmzoo.distributed as distributed  # noqa: E402
from mmzoo.distributed import gather_no_grad, gather_with_grad, rank_and_world, rank_offset_labels  # noqa: E402
from mmzoo.testing import run_distributed  # noqa: E402


def test_identity_outside_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    assert rank_and_world() == (0, 1)
    assert torch.equal(rank_offset_labels(3), torch.arange(3))


def test_two_processes_match_one_process_on_whole_batch():
    loss1, grad1 = dist_helpers.single_process()
    results = run_distributed(dist_helpers.ddp_rank, world_size=2)
    for loss2, grad2 in results:
        # Each rank's loss is the mean over its rows; their average is the whole-batch mean.
        torch.testing.assert_close(loss2, loss1)
        torch.testing.assert_close(grad2, grad1)


def test_a_run_that_does_not_end_is_killed_and_named():
    import time

    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"run_distributed\(stuck_rank, world_size=2\): no end after 5 s"):
        run_distributed(dist_helpers.stuck_rank, world_size=2, timeout=5)
    assert time.monotonic() - start < 60


def test_unequal_shapes_raise_naming_both_sizes():
    msgs = run_distributed(dist_helpers.uneven_rank, world_size=2)
    assert "(3, 2)" in msgs[0] and "(4, 2)" in msgs[0] and "drop_last" in msgs[0]


@pytest.mark.parametrize("gather", [gather_with_grad, gather_no_grad])
def test_shape_mismatch_names_the_gather_called(monkeypatch, gather):
    """Collectives stubbed: this rank holds (3, 2), the other rank (4, 2)."""

    def all_gather(out, x):
        for k, o in enumerate(out):
            o.copy_(x if k == 0 or x.numel() == 1 else torch.tensor([4, 2]))

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    with pytest.raises(
        ValueError, match=rf"^{gather.__name__}: this rank holds shape \(3, 2\) but another rank holds \(4, 2\)"
    ):
        gather(torch.zeros(3, 2))


def test_gather_backward_leaves_a_gradient_shared_with_another_branch_alone(monkeypatch):
    """Collectives stubbed as rank 0 of 2 whose peer holds the same rows. In ``gathered + b`` autograd hands both
    summands one gradient tensor; the gather's backward sums it over ranks and must do so in a copy."""

    def all_gather(out, x):
        for o in out:
            o.copy_(x)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: t.mul_(2))  # both ranks' equal grads
    w = torch.ones(4, 3, requires_grad=True)
    x = torch.ones(2, 3, requires_grad=True)
    b = w * 3.0  # made before the gather, so its backward runs after the gather's
    gathered = gather_with_grad(x, check_shapes=False)  # (4, 3)
    c = torch.arange(12.0).view(4, 3)
    ((gathered + b) * c).sum().backward()
    assert torch.equal(w.grad, 3 * c)
    assert torch.equal(x.grad, 2 * c[:2])  # this rank's rows, summed over the two ranks


def test_gather_uneven_rows_concatenates_in_rank_order_with_an_empty_rank():
    counts = [2, 0, 3]
    results = run_distributed(dist_helpers.gather_uneven_rank, 3, args=(counts,))
    expected = [torch.cat(parts) for parts in zip(*(dist_helpers.uneven_rows(r, n) for r, n in enumerate(counts)))]
    for gathered, got_counts in results:
        assert got_counts == counts
        for got, want in zip(gathered, expected, strict=True):
            assert got.dtype == want.dtype
            assert torch.equal(got, want)


def test_gather_uneven_rows_refuses_ranks_that_disagree_on_the_row_layout():
    results = run_distributed(dist_helpers.gather_uneven_rank, 2, args=([1, 2], 1))
    assert all("disagree on the bytes per row" in r for r in results)


def test_gather_uneven_rows_on_one_process_returns_the_tensors():
    x, y = torch.arange(3), torch.zeros(3, 2)
    (gx, gy), counts = distributed.gather_uneven_rows([x, y])
    assert gx is x and gy is y and counts == [3]
    with pytest.raises(ValueError, match="rows"):
        distributed.gather_uneven_rows([x, torch.zeros(2)])
