import torch
from sklearn.metrics import average_precision_score

from radartag.metrics import TaggingMetrics, label_map, precision_recall_at_k, row_average_precision, sample_map


def test_hand_example():
    s = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    y = torch.tensor([[0, 1, 1, 0]])
    assert abs(float(row_average_precision(s, y)[0]) - 0.5833) < 1e-4
    p1, _ = precision_recall_at_k(s, y, 1)
    p3, r3 = precision_recall_at_k(s, y, 3)
    assert float(p1[0]) == 0.0 and abs(float(p3[0]) - 0.6667) < 1e-4 and float(r3[0]) == 1.0
    assert float(row_average_precision(torch.tensor([[0.5, 0.5]]), torch.tensor([[1, 0]]))[0]) == 0.5


def test_matches_sklearn_with_ties():
    torch.manual_seed(0)
    s = torch.randint(0, 5, (20, 12)).float()  # many ties
    y = (torch.rand(20, 12) > 0.7).long()
    y[0] = 0  # a video without positives is skipped
    ap = row_average_precision(s, y)
    assert ap[0].isnan()
    for i in range(1, 20):
        if y[i].sum():
            assert abs(float(ap[i]) - average_precision_score(y[i].numpy(), s[i].numpy())) < 1e-6
    ref = [average_precision_score(y[:, j].numpy(), s[:, j].numpy()) for j in range(12) if y[:, j].sum()]
    assert abs(float(label_map(s, y)) - sum(ref) / len(ref)) < 1e-6


def test_topk_tie_break_toward_larger_index():
    s = torch.tensor([[0.5, 0.5, 0.1]])
    p1, _ = precision_recall_at_k(s, torch.tensor([[0, 1, 0]]), 1)
    assert float(p1[0]) == 1.0  # index 1 wins the tie


def test_metric_over_batches():
    torch.manual_seed(1)
    s, y = torch.randn(30, 10), (torch.rand(30, 10) > 0.7).long()
    m = TaggingMetrics()
    for i in range(0, 30, 7):
        m.update(s[i : i + 7], y[i : i + 7])
    out = m.compute()
    valid = y.sum(1) > 0
    assert abs(float(out["sample_mAP"]) - float(sample_map(s, y))) < 1e-6
    assert abs(float(out["label_mAP"]) - float(label_map(s, y))) < 1e-6
    assert abs(float(out["P@3"]) - float(precision_recall_at_k(s, y, 3)[0].mean())) < 1e-6  # every video
    assert abs(float(out["R@10"]) - float(precision_recall_at_k(s[valid], y[valid], 10)[1].mean())) < 1e-6


def _precision_at_k_reference(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Spec §5 by hand: per video |top-k ∩ positives| / k (top-k: stable ascending sort, reversed), averaged over
    every video, a video without a positive included (its precision is 0)."""
    total = 0.0
    for row_s, row_y in zip(scores.tolist(), labels.tolist(), strict=True):
        ascending = sorted(range(len(row_s)), key=lambda j: row_s[j])  # Python's sort is stable
        top = ascending[::-1][:k]
        total += sum(row_y[j] for j in top) / k
    return total / len(scores)


def test_precision_at_k_averages_over_every_video():
    """P@k counts a video without a positive tag as precision 0 (spec §5, official top_k_precision), unlike sample
    mAP and R@k, which are undefined there and skip it. Hand case: P@1 = (1 + 0 + 0) / 3, P@3 = (1/3 + 2/3 + 0) / 3."""
    s = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.7, 0.9], [0.5, 0.4, 0.3, 0.2]])
    y = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    m = TaggingMetrics()
    m.update(s[:2], y[:2])
    m.update(s[2:], y[2:])
    out = m.compute()
    assert abs(float(out["P@1"]) - 1 / 3) < 1e-6
    assert abs(float(out["P@3"]) - 1 / 3) < 1e-6
    assert abs(float(out["R@5"]) - 1.0) < 1e-6 and abs(float(out["sample_mAP"]) - (1.0 + 7 / 12) / 2) < 1e-6
    torch.manual_seed(3)
    s, y = torch.randint(0, 4, (25, 9)).float(), (torch.rand(25, 9) > 0.75).long()  # ties, some rows empty
    y[:4] = 0
    m = TaggingMetrics()
    for i in range(0, 25, 6):
        m.update(s[i : i + 6], y[i : i + 6])
    out = m.compute()
    for k in (1, 3):
        assert abs(float(out[f"P@{k}"]) - _precision_at_k_reference(s, y, k)) < 1e-6, k


def test_no_video_with_a_positive_tag_gives_nan_not_zero():
    """A mean over no video is not a score of 0: with every video skipped sample mAP and R@k are NaN (as label mAP
    is, with no tag holding a positive), while P@k is a mean over the scored videos, each with precision 0; one
    video with a positive makes them all finite."""
    m = TaggingMetrics()
    m.update(torch.randn(3, 5), torch.zeros(3, 5))
    out = m.compute()
    assert int(m.skipped) == 3 and int(m.count) == 0
    for key in ("sample_mAP", "R@5", "R@10", "label_mAP"):
        assert out[key].isnan(), key
    assert float(out["P@1"]) == 0.0 and float(out["P@3"]) == 0.0
    m.update(torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0]]), torch.tensor([[1, 0, 0, 0, 0]]))
    out = m.compute()
    assert float(out["sample_mAP"]) == 1.0 and float(out["R@5"]) == 1.0
    assert abs(float(out["P@1"]) - 0.25) < 1e-6  # 1 hit over 4 videos


def test_no_video_at_all_gives_nan():
    """Without any update (no evaluation video) every metric is NaN, as with no scorable video, and not an error."""
    out = TaggingMetrics().compute()
    assert set(out) == {"sample_mAP", "label_mAP", "P@1", "P@3", "R@5", "R@10"}
    assert all(v.isnan() for v in out.values()), out
