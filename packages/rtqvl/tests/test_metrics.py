"""Metrics against naive references (spec §5, §8d)."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalRecall

from rtqvl.metrics import (
    CaptionMetrics,
    NExTQAAccuracy,
    QAAccuracy,
    RetrievalMetrics,
    bleu4,
    caption_metrics,
    cider_d,
    nextqa_accuracy,
    normalize_answer,
    qa_accuracy,
    retrieval_metrics,
    rouge_l,
)


def _naive_ranks(scores, gt):
    out = []
    for i in range(scores.shape[0]):
        out.append(sum(1 for j in range(scores.shape[1]) if scores[i, j] > scores[i, gt[i]]))
    return torch.tensor(out)


def test_retrieval_against_naive_including_ties():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 4, (12, 12), generator=g).float()  # many ties
    gt = torch.arange(12)
    m = retrieval_metrics(s, gt)
    r = _naive_ranks(s, gt)
    for k in (1, 5, 10):
        assert m[f"t2v_R@{k}"] == pytest.approx(100 * (r < k).float().mean().item())
    assert m["t2v_MnR"] == pytest.approx((r + 1).float().mean().item())
    assert m["t2v_MdR"] == pytest.approx(
        float(
            torch.tensor((r + 1).tolist(), dtype=torch.float64).median()
            if len(r) % 2
            else (r + 1).float().quantile(0.5)
        )
    )
    rv = _naive_ranks(s.T, gt)
    assert m["v2t_R@1"] == pytest.approx(100 * (rv < 1).float().mean().item())
    assert m["r_mean"] == pytest.approx((m["t2v_R@1"] + m["t2v_R@5"] + m["t2v_R@10"]) / 3)


def test_retrieval_recall_matches_torchmetrics_without_ties():
    s = torch.randn(10, 10)
    gt = torch.arange(10)
    target = torch.eye(10, dtype=torch.bool)
    indexes = torch.arange(10).view(-1, 1).expand(10, 10)
    for k in (1, 5):
        ref = RetrievalRecall(top_k=k)(s.flatten(), target.flatten(), indexes=indexes.flatten())
        assert retrieval_metrics(s, gt)[f"t2v_R@{k}"] == pytest.approx(100 * ref.item(), abs=1e-4)


def test_v2t_uses_best_ranked_of_several_gt_texts():
    s = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.1]])  # texts 0, 2 → video 0; text 1 → video 1
    m = retrieval_metrics(s, torch.tensor([0, 1, 0]))
    assert m["v2t_R@1"] == 0.0  # video 0: best GT text 2 (0.3) is beaten by text 1 (0.8); video 1: text 0 beats 1
    metric = RetrievalMetrics()
    metric.update(s[:2], torch.tensor([0, 1]))
    metric.update(s[2:], torch.tensor([0]))
    assert metric.compute() == m


def test_caption_scores_hand_checked():
    p = [["a", "man", "is", "cooking", "food"]]
    r = [[["a", "man", "is", "cooking", "food"], ["someone", "cooks"]]]
    assert bleu4(p, r) == pytest.approx(1.0, abs=1e-6)
    assert rouge_l(p, r) == pytest.approx(1.0)
    # hand-worked ROUGE-L: hyp "a b c", ref "a c d e": LCS 2, P 2/3, R 1/2
    P, R, beta = 2 / 3, 1 / 2, 1.2
    assert rouge_l([["a", "b", "c"]], [[["a", "c", "d", "e"]]]) == pytest.approx(
        (1 + beta**2) * P * R / (R + beta**2 * P)
    )
    # CIDEr-D: a perfect match on a 2-image corpus scores 10× the cosine of identical TF-IDF vectors (= 10)
    refs = [[["a", "red", "car", "on", "the", "road"]], [["two", "dogs", "play", "in", "snow"]]]
    assert cider_d([refs[0][0], refs[1][0]], refs) == pytest.approx(10.0)
    assert cider_d([["x", "y"], ["z"]], refs) == 0.0


def test_caption_metric_class_matches_function():
    preds = ["a man is cooking", "dogs play"]
    refs = [["a man cooks food", "a man is cooking"], ["two dogs play in snow"]]
    m = CaptionMetrics("python")
    m.update(preds[:1], refs[:1], [0])
    m.update(preds[1:], refs[1:], [1])
    m.update(preds[1:], refs[1:], [1])  # a DistributedSampler duplicate
    assert m.compute() == caption_metrics(preds, refs, "python")
    assert "METEOR" not in m.compute()


def test_qa_normalisation_and_accuracy():
    assert normalize_answer("The Dog.") == "dog"
    assert normalize_answer("two") == "2"
    assert normalize_answer("a  man!") == "man"
    assert normalize_answer("wouldnt") == "wouldn't"  # the evaluator's whole contraction table (mmzoo)
    assert qa_accuracy(["The dog", "cat", "three"], ["dog", "dog", "3"]) == pytest.approx(200 / 3)
    m = QAAccuracy()
    m.update(["The dog"], ["dog"])
    m.update(["cat", "three"], ["dog", "3"])
    assert m.compute().item() == pytest.approx(200 / 3)


def test_nextqa_per_type():
    preds, labels = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 0, 2, 3, 0])
    types = ["CW", "CH", "TN", "DC", "DL"]
    got = nextqa_accuracy(preds, labels, types)
    assert got == pytest.approx({"acc": 60.0, "acc_C": 50.0, "acc_T": 100.0, "acc_D": 50.0})
    m = NExTQAAccuracy()
    m.update(preds[:2], labels[:2], types[:2])
    m.update(preds[2:], labels[2:], types[2:])
    assert m.compute() == pytest.approx(got)


def _brute_force_tie_mean(scores, positives, k):
    """Average over every order of each query's tied group: hit@k and rank of the best GT (plain loops)."""
    import itertools

    hits, ranks = [], []
    for s, pos in zip(scores.tolist(), positives.tolist(), strict=True):
        best = max(v for v, p in zip(s, pos, strict=True) if p)
        higher = sum(v > best for v in s)
        group = [p for v, p in zip(s, pos, strict=True) if v == best]
        perms = list(itertools.permutations(group))
        first = [next(i for i, p in enumerate(order) if p) for order in perms]
        hits.append(sum(higher + f < k for f in first) / len(perms))
        ranks.append(sum(higher + f for f in first) / len(perms))
    return torch.tensor(hits, dtype=torch.float64), torch.tensor(ranks, dtype=torch.float64)


def test_tie_rule_mean_against_brute_force():
    from rtqvl.metrics import recall_at_k, retrieval_ranks

    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 3, (10, 6), generator=g).float()  # many ties
    pos = torch.zeros(10, 6, dtype=torch.bool)
    pos[torch.arange(10), torch.arange(10) % 6] = True
    pos[0, 1] = pos[3, 5] = True  # two queries with two GT items
    for k in (1, 2, 5):
        want_hit, want_rank = _brute_force_tie_mean(s, pos, k)
        assert torch.allclose(recall_at_k(s, pos, k, ties="mean"), want_hit)
        assert torch.allclose(retrieval_ranks(s, pos, ties="mean"), want_rank)
        assert torch.equal(recall_at_k(s, pos, k), (retrieval_ranks(s, pos) < k).double())  # optimistic = spec


def test_tied_twin_counts_as_half_a_hit_under_mean_and_a_hit_under_spec_rule():
    # an order-blind model scores a clip and its order-swapped twin identically: the spec's strictly-higher rule
    # ranks both first (R@1 100); the mean rule (official argsort, on average) gives R@1 50
    s = torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1]])
    gt = torch.tensor([0, 1])
    assert retrieval_metrics(s, gt)["t2v_R@1"] == 100.0
    m = retrieval_metrics(s, gt, ties="mean")
    assert m["t2v_R@1"] == 50.0 and m["t2v_R@5"] == 100.0 and m["t2v_MnR"] == 1.5
    metric = RetrievalMetrics(ties="mean")
    metric.update(s, gt)
    assert metric.compute()["t2v_R@1"] == 50.0
    with pytest.raises(ValueError, match="ties"):
        RetrievalMetrics(ties="pessimistic")


def test_module_passes_the_tie_rule_to_its_retrieval_metrics():
    from rtqvl_testlib import tiny_config

    from rtqvl.module import RTQModule

    module = RTQModule(tiny_config(), rank_ties="mean")
    assert module.val_metric.ties == module.test_metric.ties == "mean"
    assert RTQModule(tiny_config()).test_metric.ties == "optimistic"  # the spec §5 rule by default


def test_first_of_each_id_keeps_every_unnamed_row():
    # ids < 0 are per-rank automatic ids: two ranks both number from -1, so they never mark a repeat
    from rtqvl.metrics import _first_of_each_id

    ids = torch.tensor([-1, 3, -1, 3, 2, -2, 2])
    assert _first_of_each_id(ids).tolist() == [True, True, True, False, True, True, False]
    assert _first_of_each_id(torch.empty(0, dtype=torch.long)).tolist() == []


def test_qa_accuracies_count_a_repeated_question_once():
    # DistributedSampler pads the last batches with repeated items; the official merge keeps one per question
    m = QAAccuracy()
    m.update(["dog", "cat"], ["dog", "dog"], [0, 1])
    m.update(["dog"], ["dog"], [0])  # padding: item 0 again
    assert m.compute().item() == pytest.approx(50.0)
    n = NExTQAAccuracy()
    n.update(torch.tensor([0, 1]), torch.tensor([0, 0]), ["CW", "TN"], [0, 1])
    n.update(torch.tensor([0]), torch.tensor([0]), ["CW"], [0])
    assert n.compute() == pytest.approx({"acc": 50.0, "acc_C": 100.0, "acc_T": 0.0})


def test_qa_accuracies_without_questions_are_nan_not_zero():
    """An evaluation that saw no question has no accuracy: 0 % would read as a measured result."""
    assert torch.isnan(QAAccuracy().compute())
    out = NExTQAAccuracy().compute()
    assert list(out) == ["acc"] and math.isnan(out["acc"])  # still logged under the monitored key
