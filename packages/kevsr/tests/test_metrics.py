"""F1 and RP@90% against plain references (spec §5, §8d)."""

import pytest
import torch
from torchmetrics.classification import MultilabelF1Score

from kevsr.metrics import RPAtAccuracy, micro_f1, rp_at_accuracy


def rp_bruteforce(scores, targets, acc, mode):
    n = scores.shape[0]
    best = 0.0
    for theta in sorted(set(scores.flatten().tolist())):
        if mode == "threshold":
            recv = scores >= theta
            n_recv = int(recv.sum())
            correct = int((recv & targets.bool()).sum())
            labelled = int(recv.any(dim=1).sum())
        else:
            conf, idx = scores.max(dim=1)
            recv = conf >= theta
            n_recv = int(recv.sum())
            correct = int(targets[torch.arange(n), idx][recv].sum())
            labelled = n_recv
        if n_recv and correct / n_recv >= acc:
            best = max(best, labelled / n)
    return best


def test_rp_matches_bruteforce_both_modes():
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        scores = torch.randn(30, 6, generator=g).round(decimals=1)  # ties included
        targets = (torch.rand(30, 6, generator=g) < 0.3).float()
        targets += (scores > 0.8).float()  # make high scores more often correct
        targets = targets.clamp(max=1)
        for mode in ("threshold", "top1"):
            got = rp_at_accuracy(scores, targets, 0.9 if trial % 2 else 0.6, mode).item()
            assert abs(got - rp_bruteforce(scores, targets, 0.9 if trial % 2 else 0.6, mode)) < 1e-6


def test_rp_metric_accumulates_like_function():
    g = torch.Generator().manual_seed(1)
    scores, targets = torch.randn(20, 4, generator=g), (torch.rand(20, 4, generator=g) < 0.4).float()
    metric = RPAtAccuracy(0.7)
    metric.update(scores[:7], targets[:7])
    metric.update(scores[7:], targets[7:])
    assert abs(metric.compute().item() - rp_at_accuracy(scores, targets, 0.7).item()) < 1e-6


def test_f1_manual_counts_and_torchmetrics_agree():
    scores = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.2, -3.0]])
    targets = torch.tensor([[1, 0, 0], [1, 1, 1]])
    # predicted positive: (0,0) (0,2) (1,0) (1,1); tp = 3, fp = 1, fn = 1 → F1 = 6 / 8
    assert abs(micro_f1(scores, targets).item() - 0.75) < 1e-6
    tm = MultilabelF1Score(num_labels=3, average="micro", threshold=0.5)
    assert abs(tm(torch.sigmoid(scores), targets).item() - 0.75) < 1e-6


def test_rp_edge_cases_ties_no_positive_one_video_and_nan():
    """All scores tied: one threshold, every label received at once. No positive at all: no threshold reaches
    90 % (RP = 0). One video whose top label is right: RP = 1. NaN scores used to sort as confident correct labels
    (RP = 1 for a model that output only NaN); they are refused."""
    tied = torch.zeros(4, 3)
    targets = torch.zeros(4, 3)
    targets[:, 0] = 1  # one right label in three: accuracy 1/3 at the only threshold
    for mode in ("threshold", "top1"):
        assert float(rp_at_accuracy(tied, torch.zeros(4, 3), mode=mode)) == 0.0
    assert float(rp_at_accuracy(tied, targets)) == 0.0
    assert float(rp_at_accuracy(tied, torch.ones(4, 3))) == 1.0
    assert float(rp_at_accuracy(torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]]))) == 1.0
    for mode in ("threshold", "top1"):
        with pytest.raises(ValueError, match=r"RP@90%: 6 scores are NaN"):
            rp_at_accuracy(torch.full((3, 2), float("nan")), torch.ones(3, 2), mode=mode)
