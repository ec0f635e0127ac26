import pytest
import torch
from mmzoo.metrics import IndexedMean

from snps3.metrics import ItemWeightedMean, RetrievalMetrics, best_gt_rank, item_weighted_mean, retrieval_metrics


def test_multi_gt_rank_and_mdr_hand_example():
    sim = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0],  # gt {1, 2}: best gt (0.8) ranked second -> r = 1
            [0.1, 0.2, 0.3, 0.4],  # gt {3}: r = 0
            [0.5, 0.4, 0.3, 0.2],  # gt {2}: r = 2
            [0.0, 0.9, 0.8, 0.7],  # gt {0}: r = 3
        ]
    )
    gt = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert best_gt_rank(sim, gt).tolist() == [1, 0, 2, 3]
    m = retrieval_metrics(sim, gt, ks=(1, 2, 3))
    assert m["R@1"] == 25.0 and m["R@2"] == 50.0 and m["R@3"] == 75.0
    assert m["MdR"] == 2.5  # median([1, 0, 2, 3]) + 1
    assert m["MnR"] == 2.5
    torch.testing.assert_close(m["mean_recall"], torch.tensor(50.0))


def test_metric_class_matches_function_over_batches():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(13, 9, generator=g)
    gt = torch.zeros(13, 9, dtype=torch.bool)
    gt[torch.arange(13), torch.randint(0, 9, (13,), generator=g)] = True
    gt[0, 3] = True
    ref = retrieval_metrics(sim, gt)
    metric = RetrievalMetrics()
    for rows in (slice(0, 5), slice(5, 6), slice(6, 13)):
        metric.update(sim[rows], gt[rows])
    out = metric.compute()
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
    # plain loop reference for R@5
    r5 = sum(int(sorted(sim[i].tolist(), reverse=True).index(max(sim[i][gt[i]].tolist())) < 5) for i in range(13))
    torch.testing.assert_close(out["R@5"], torch.tensor(100.0 * r5 / 13))


def test_ties_are_pessimistic():
    sim = torch.tensor([[1.0, 1.0, 0.0]])
    assert best_gt_rank(sim, torch.tensor([[False, True, False]])).tolist() == [1]


def test_nan_scores_rank_last(caplog):
    nan = float("nan")
    sim = torch.tensor(
        [
            [nan, 0.5, 0.9, 0.1],  # gt 0 scored NaN: behind the three numbers -> r = 3
            [0.2, nan, 0.9, 0.1],  # gt 2 (0.9): the NaN column ranks below it -> r = 0
            [0.3, nan, nan, 0.1],  # gt 1 scored NaN ties with the other NaN (pessimistic) -> r = 3
        ]
    )
    gt = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    with caplog.at_level("WARNING", logger="snps3.metrics"):
        assert best_gt_rank(sim, gt).tolist() == [3, 0, 3]
    assert "4 of 12 scores are NaN" in caplog.text
    # a model whose scores are all NaN ranks every ground truth behind every other column: no recall at all
    m = retrieval_metrics(torch.full((5, 5), nan), torch.eye(5, dtype=torch.bool), ks=(1, 4))
    assert m["R@1"] == 0.0 and m["R@4"] == 0.0 and m["MdR"] == 5.0


def test_qa_accuracy_counts_out_of_vocabulary_as_wrong():
    from snps3.module import SNPS3Module

    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    correct = SNPS3Module.qa_correct(logits, {"label": torch.tensor([1, 1, -1])})
    acc = IndexedMean()  # what the module accumulates QA accuracy in
    acc.update(correct, torch.arange(3))
    torch.testing.assert_close(acc.compute(), torch.tensor(1 / 3, dtype=torch.float64))
    multi = SNPS3Module.qa_correct(logits, {"labels": torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])})
    assert multi.tolist() == [1.0, 0.0, 1.0]


def test_item_weighted_mean_counts_each_item_once():
    """Σ values / Σ weights per term over distinct ids, against a plain loop; a repeated id (a padding repeat) is
    dropped, a term without weight is NaN, and the Metric over batches equals the function on all rows."""
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([3, 0, 4, 1, 2, 3, 0])  # items 3 and 0 repeated at the end
    values = torch.randn(7, 3, generator=g, dtype=torch.float64)
    weights = torch.randint(1, 4, (7, 3), generator=g).double()
    weights[:, 2] = 0.0  # e.g. no masked token anywhere
    values[5:] += 100.0  # the repeats' rows differ (another batch): only the first row of an id counts
    got = item_weighted_mean(values, weights, ids)
    first = {}
    for row, i in enumerate(ids.tolist()):
        first.setdefault(i, row)
    assert got["items"] == 5
    for n in range(2):
        num = sum(values[r, n].item() for r in first.values())
        den = sum(weights[r, n].item() for r in first.values())
        torch.testing.assert_close(got["mean"][n].item(), num / den)
        torch.testing.assert_close(got["weight"][n].item(), den)
    assert torch.isnan(got["mean"][2]) and got["weight"][2] == 0
    metric = ItemWeightedMean(3)
    with pytest.warns(UserWarning, match="called before the ``update``"):
        empty = metric.compute()  # nothing added yet
    assert empty["items"] == 0 and torch.isnan(empty["mean"]).all()
    for rows in (slice(0, 2), slice(2, 5), slice(5, 7)):
        metric.update(values[rows], weights[rows], ids[rows])
    out = metric.compute()
    for key in got:
        torch.testing.assert_close(out[key], got[key], equal_nan=True)
    with pytest.raises(ValueError, match=r"must be \(B, 3\)"):
        metric.update(values[:, :2], weights[:, :2], ids)
