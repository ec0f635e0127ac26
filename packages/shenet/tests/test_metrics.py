"""Retrieval metrics (spec §5, §8d) against a naive argsort reference."""

import numpy as np
import pytest
import torch

from shenet.metrics import RetrievalMetrics, retrieval_metrics, retrieval_ranks


def naive(scores: np.ndarray, gt: np.ndarray) -> dict:
    """CLIP4Clip-style reference: sort each row descending; rank = position of the first positive, ties resolved
    for the ground truth (stable sort with positives placed first among equals)."""
    Q, G = scores.shape
    out = {}
    for prefix, S, pos in (
        ("t2v_", scores, [[g] for g in gt]),
        ("v2t_", scores.T, [list(np.nonzero(gt == v)[0]) for v in range(G)]),
    ):
        ranks = []
        for row, p in zip(S, pos, strict=True):
            row = np.nan_to_num(row, nan=-np.inf)
            best = max(row[j] for j in p)
            order = sorted(range(len(row)), key=lambda j: (-row[j], 0 if row[j] == best and j in p else 1))
            ranks.append(min(order.index(j) for j in p if row[j] == best))
        r = np.array(ranks, dtype=float)
        out.update({f"{prefix}R@{k}": 100 * np.mean(r < k) for k in (1, 5, 10)})
        out[f"{prefix}MdR"] = np.median(r + 1)
        out[f"{prefix}MnR"] = np.mean(r + 1)
    return out


def check(scores, gt):
    got = retrieval_metrics(torch.tensor(scores, dtype=torch.float32), torch.tensor(gt))
    ref = naive(scores, gt)
    for k, v in ref.items():
        assert float(got[k]) == pytest.approx(v, abs=1e-4), k


def test_hand_worked_example():
    S = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.2, 0.3], [0.1, 0.1, 0.1]])
    out = retrieval_metrics(S, torch.arange(3))
    # t2v ranks: 0, 2, 0 (row 2 all tied -> ground truth's favour)
    assert float(out["t2v_R@1"]) == pytest.approx(200 / 3)
    assert float(out["t2v_MdR"]) == 1.0 and float(out["t2v_MnR"]) == pytest.approx(5 / 3)
    # v2t columns: video0 -> text0 0.9 best (rank 0); video1 -> text1 0.2 < 0.5 (rank 1); video2 -> 0.1 < 0.3 (rank 1)
    assert float(out["v2t_R@1"]) == pytest.approx(100 / 3) and float(out["v2t_MnR"]) == pytest.approx(5 / 3)


def test_random_and_tied_against_naive():
    rng = np.random.default_rng(0)
    check(rng.normal(size=(12, 12)), np.arange(12))
    check(rng.integers(0, 3, size=(15, 15)).astype(float), np.arange(15))  # many ties


def test_multi_caption_best_rank():
    rng = np.random.default_rng(1)
    gt = np.repeat(np.arange(5), 3)  # MSVD-like: 3 captions per video
    scores = rng.normal(size=(15, 5))
    check(scores, gt)
    pos = torch.zeros(5, 15, dtype=torch.bool)
    pos[torch.tensor(gt), torch.arange(15)] = True
    ranks = retrieval_ranks(torch.tensor(scores.T), pos)
    for v in range(5):
        per_caption = [(scores.T[v] > scores.T[v, j]).sum() for j in np.nonzero(gt == v)[0]]
        assert int(ranks[v]) == min(per_caption)


def test_padding_ignored():
    S = torch.tensor([[0.5, float("-inf"), 0.2], [float("nan"), 0.1, 0.0]])
    pos = torch.tensor([[True, False, False], [False, True, False]])
    assert retrieval_ranks(S, pos).tolist() == [0, 0]
    with pytest.raises(ValueError, match="no ground-truth"):
        retrieval_ranks(S, torch.zeros_like(pos))


def test_unscored_ground_truth_ranks_last():
    """Video 1 has no valid frame, so evaluation scores it −inf against every text: it must rank last for its own
    caption (text→video) and its caption last for it (video→text), not win the all-tied row."""
    inf = float("-inf")
    S = torch.tensor([[0.5, inf, 0.2, -0.6], [0.3, inf, 0.4, -0.7], [0.1, inf, 0.6, -0.8], [-0.4, inf, -0.5, -0.3]])
    out = retrieval_metrics(S, torch.tensor([0, 1, 2, 3]))
    t2v = retrieval_ranks(S, torch.eye(4, dtype=torch.bool))
    v2t = retrieval_ranks(S.T, torch.eye(4, dtype=torch.bool))
    assert t2v.tolist() == [0, 3, 0, 0]  # text 3 scores every real video below 0: video 1 still comes last
    assert v2t.tolist() == [0, 3, 0, 0]
    assert float(out["t2v_R@1"]) == float(out["v2t_R@1"]) == 75.0
    assert float(out["v2t_MnR"]) == pytest.approx((1 + 4 + 1 + 1) / 4)
    # a multi-caption video without frames: rank = #non-positive items (here the 2 texts of other videos)
    pos = torch.tensor([[True, True, False, False]])
    assert retrieval_ranks(torch.full((1, 4), inf), pos).tolist() == [2]


def test_metric_accumulates_and_drops_duplicates():
    rng = np.random.default_rng(2)
    scores = torch.tensor(rng.normal(size=(10, 6)), dtype=torch.float32)
    gt = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    m = RetrievalMetrics()
    m.update(scores[5:], gt[5:], torch.arange(5, 10))
    m.update(scores[:6], gt[:6], torch.arange(6))  # id 5 twice (DistributedSampler padding)
    got = m.compute()
    ref = retrieval_metrics(scores, gt)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    with pytest.raises(ValueError, match=r"\(q, G\)"):
        m.update(scores, gt[:3], torch.arange(3))
