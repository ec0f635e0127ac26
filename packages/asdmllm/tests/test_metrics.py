import math

import pytest
import torch

from asdmllm.metrics import (
    SkewMetric,
    VQAAccuracy,
    circular_eval_accuracy,
    max_min_skew,
    multiple_choice_accuracy,
    normalize_vqa_answer,
    per_sample_skew,
    resolve_k,
    skew_at_k,
    skew_rate,
    skew_table,
    vqa_accuracy,
)
from asdmllm.sampling import ResampledEpochSampler, bias_aware_resample


def _pool_all_a_on_top():
    scores = torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1])
    values = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # top-4 all A
    return scores, values


def test_skew_at_k_official_zero_hand_case():
    scores, values = _pool_all_a_on_top()
    s = skew_at_k(scores, values, 2, 4, "official_zero", clip=10)
    assert s[0].item() == pytest.approx(math.log(2)) and s[1].item() == 0.0


def test_skew_at_k_laplace_hand_case():
    scores, values = _pool_all_a_on_top()
    s = skew_at_k(scores, values, 2, 4, "laplace", alpha=1.0, clip=10)
    assert s[0].item() == pytest.approx(math.log(5 / 3), rel=1e-5)
    assert s[1].item() == pytest.approx(math.log(1 / 3), rel=1e-5)
    assert skew_at_k(scores, values, 2, 4, "laplace", clip=0.5)[1].item() == pytest.approx(-0.5)  # clipped


def test_skew_at_k_laplace_counts_every_value_of_the_type():
    # Spec §3.2: the denominator is K + α·|A_τ| with |A_τ| the number of values of the type, present or not.
    # Pool of 8 (4 A, 4 B) of a type with 3 values; C never appears. Top-4 all A:
    # Skew_A = ln((4+1)/(4+3)/0.5) = ln(10/7), Skew_B = ln((0+1)/(4+3)/0.5) = ln(2/7); C undefined.
    scores, values = _pool_all_a_on_top()
    s = skew_at_k(scores, values, 3, 4, "laplace", alpha=1.0, clip=10)
    assert s[0].item() == pytest.approx(math.log(10 / 7), rel=1e-5)
    assert s[1].item() == pytest.approx(math.log(2 / 7), rel=1e-5)
    assert math.isnan(s[2].item())


def test_skew_absent_value_is_nan_and_unknown_ignored():
    s = skew_at_k(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, -1]), 3, 1, "official_zero")
    assert s[0].item() == 0.0 and math.isnan(s[1].item()) and math.isnan(s[2].item())


def _official_reference(scores, labels, k):
    """SocialCounterfactuals procedure: per concept top-K, count labels, skew per present label (0 if absent from
    the top K), average max and min over concepts."""
    maxes, mins = [], []
    for c in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda i: -scores[c, i].item())[:k]
        skews = []
        for a in sorted(set(labels[c].tolist())):
            n_top = sum(1 for i in order if labels[c, i] == a)
            desired = (labels[c] == a).sum().item() / labels.shape[1]
            skews.append(math.log((n_top / k) / desired) if n_top else 0.0)
        maxes.append(max(skews))
        mins.append(min(skews))
    return sum(maxes) / len(maxes), sum(mins) / len(mins)


def test_max_min_skew_matches_official_procedure():
    g = torch.Generator().manual_seed(1)
    n_concepts, pool, k = 5, 12, 4
    scores = torch.rand(n_concepts, pool, generator=g)
    labels = torch.randint(0, 3, (n_concepts, pool), generator=g)
    # flatten to the package's (N, C) layout: image i of concept c scored only against c
    flat_scores = torch.full((n_concepts * pool, n_concepts), float("nan"))
    for c in range(n_concepts):
        flat_scores[c * pool : (c + 1) * pool, c] = scores[c]
    concept = torch.arange(n_concepts).repeat_interleave(pool)
    table = skew_table(
        flat_scores, labels.reshape(-1, 1), concept, [3], [0] * n_concepts, "topk", k, "official_zero", clip=100
    )
    max_s, min_s = max_min_skew(table)
    ref_max, ref_min = _official_reference(scores, labels, k)
    assert max_s.item() == pytest.approx(ref_max, rel=1e-5) and min_s.item() == pytest.approx(ref_min, rel=1e-5)


@pytest.mark.parametrize("zero_count", ["official_zero", "laplace"])
def test_max_skew_nonneg_min_skew_nonpos(zero_count):
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(60, 3, generator=g)
    attrs = torch.randint(0, 4, (60, 2), generator=g)
    concept = torch.randint(0, 3, (60,), generator=g)
    table = skew_table(scores, attrs, concept, [4, 4], [0, 0, 1], "topk", 0.25, zero_count)
    max_s, min_s = max_min_skew(table)
    assert (max_s >= -1e-6).all() and (min_s <= 1e-6).all()


def test_resolve_k():
    assert resolve_k(0.25, 100, 2) == 25 and resolve_k(0.25, 4, 3) == 3 and resolve_k(10, 4, 2) == 4


def test_skew_rate_hand_case():
    # 4 images of value 0 all predicted concept 0, 4 of value 1 split 2/2 between concepts 0 and 1
    predicted = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    values = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    s = skew_rate(predicted, values, [0, 1], 2, alpha=1.0, clip=10)
    p_c0 = (6 + 1) / (8 + 2)
    assert s[0, 0].item() == pytest.approx(math.log(((4 + 1) / (4 + 2)) / p_c0), rel=1e-5)
    assert s[0, 1].item() == pytest.approx(math.log(((2 + 1) / (4 + 2)) / p_c0), rel=1e-5)


def test_per_sample_skew_signed_max_abs():
    table = torch.full((2, 2, 3), float("nan"))
    table[0, 0, :2] = torch.tensor([0.4, -0.4])  # concept 0, type 0 (2 values)
    table[0, 1, :3] = torch.tensor([-0.9, 0.2, 0.7])  # concept 0, type 1 (3 values)
    concept = torch.tensor([0, 0, 0])
    attrs = torch.tensor([[0, 0], [0, 2], [1, 1]])
    assert per_sample_skew(table, concept, attrs).tolist() == pytest.approx([-0.9, 0.7, -0.4])
    assert per_sample_skew(table, concept, attrs, "max").tolist() == pytest.approx([0.4, 0.7, 0.2])
    assert per_sample_skew(table, concept, attrs, "min").tolist() == pytest.approx([-0.9, 0.4, -0.4])
    assert per_sample_skew(table, concept, torch.tensor([[-1, -1]] * 3)).tolist() == [0.0, 0.0, 0.0]


def test_skew_metric_batches_equal_function_and_drop_duplicates():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(40, 2, generator=g)
    attrs = torch.randint(0, 2, (40, 2), generator=g)
    concept = torch.randint(0, 2, (40,), generator=g)
    ids = torch.arange(40)
    metric = SkewMetric(["race", "gender"], [2, 2], [0, 0])
    for sl in (slice(0, 13), slice(13, 40), slice(30, 40)):  # the last batch repeats ids (DistributedSampler padding)
        metric.update(scores[sl], attrs[sl], concept[sl], ids[sl])
    out = metric.compute()
    max_s, min_s = max_min_skew(skew_table(scores, attrs, concept, [2, 2], [0, 0]))
    assert out["race/max_skew"].item() == pytest.approx(max_s[0].item())
    assert out["gender/min_skew"].item() == pytest.approx(min_s[1].item())
    assert out["max_skew"].item() == pytest.approx(max_s.mean().item())


def test_vqa_accuracy_and_metric():
    answers = ["two"] * 3 + ["3"] * 7
    assert vqa_accuracy("2", answers) == pytest.approx(sum(min(c / 3, 1) for c in [2] * 3 + [3] * 7) / 10)
    assert vqa_accuracy("Three.", answers) == pytest.approx(1.0)
    assert normalize_vqa_answer("The Dog!") == "dog"
    assert normalize_vqa_answer("None") == "0"  # official manualMap: 'none' -> '0' (answer "none" to "how many")
    m = VQAAccuracy()
    m.update(["2"], [answers])
    m.update(["3"], [answers])
    assert m.compute().item() == pytest.approx((vqa_accuracy("2", answers) + 1.0) / 2)


def test_vqa_soft_accuracy_compares_normalised_answers():
    """Spec §5: the standard (official VQA evaluation) answer normalisation (tested in mmzoo), then soft accuracy."""
    # 3 of 10 annotators wrote "red white"; leaving one of them out leaves 2 matches (2/3), any other leaves 3 (1)
    answers = ["red white"] * 3 + ["blue"] * 7
    assert vqa_accuracy("red-white", answers) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert vqa_accuracy("dont", ["don't"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("Two", ["2"] * 4 + ["two dogs"] * 6) == pytest.approx(1.0)


def test_multiple_choice_and_circular():
    assert multiple_choice_accuracy(["A", "b. cat", "C"], ["A", "B", "D"]) == pytest.approx(2 / 3)
    assert circular_eval_accuracy(["q1", "q1", "q2", "q2"], [True, True, True, False]) == 0.5


def test_option_letter_skips_capitals_inside_words():
    """'The answer is B' names B (not the H of 'The'); 'Answer: C' names C (not the A of 'Answer')."""
    preds = ["The answer is B", "Answer: C", "(D) a cat", "b.", "none of them"]
    assert multiple_choice_accuracy(preds, ["B", "C", "D", "B", "A"]) == pytest.approx(4 / 5)


# ------------------------------------------------------------------------------------------ resampling (§3.4)
def test_resample_zero_skew_is_permutation():
    idx = bias_aware_resample(torch.zeros(50), generator=torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == list(range(50))


def test_resample_keep_rate_monte_carlo():
    s, tau1 = 0.5, 1.0
    idx = bias_aware_resample(torch.full((10000,), s), tau1, 1.0, torch.Generator().manual_seed(0))
    assert idx.numel() / 10000 == pytest.approx(tau1 / (s + tau1), abs=0.02)


def test_resample_upsampling_every_second_sample():
    n = 11
    idx = bias_aware_resample(torch.full((n,), -0.5), 1.0, 1.0, torch.Generator().manual_seed(0))
    assert idx.numel() == n + n // 2  # length formula N + floor(N·0.5/τ2)
    counts = torch.bincount(idx, minlength=n)
    assert int((counts == 2).sum()) == n // 2 and int((counts == 1).sum()) == n - n // 2


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        bias_aware_resample(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="tau1"):
        bias_aware_resample(torch.zeros(3), tau1=0)


def test_epoch_sampler_cycles_and_truncates():
    sampler = ResampledEpochSampler(6, seed=0, fixed_length=True)
    assert sorted(sampler) == list(range(6))
    sampler.set_indices(torch.tensor([1, 2]))
    assert list(sampler) == [1, 2, 1, 2, 1, 2]
    sampler.set_indices(torch.arange(6).repeat(2))
    assert list(sampler) == list(range(6)) and len(sampler) == 6
    with pytest.raises(ValueError):
        sampler.set_indices(torch.tensor([7]))


def test_epoch_sampler_length_follows_resampled_list():
    """Default (spec §3.4, ``epoch_length: resampled``): the epoch is exactly the resampled list."""
    sampler = ResampledEpochSampler(6, seed=0)
    assert len(sampler) == 6 and sorted(sampler) == list(range(6))
    sampler.set_indices(torch.tensor([1, 2, 2]))
    assert len(sampler) == 3 and list(sampler) == [1, 2, 2]
    sampler.set_indices(torch.arange(6).repeat(2))
    assert len(sampler) == 12 and list(sampler) == list(range(6)) * 2
    loader = torch.utils.data.DataLoader(range(6), batch_size=4, sampler=sampler, drop_last=True)
    assert len(loader) == 3 and len(list(loader)) == 3


def test_skew_ties_at_the_kth_score_share_the_slots():
    """Tied scores must not be ranked by file order (a counterfactual set writes its attribute values in a fixed
    order): all-equal scores give no Skew, and a tie at the boundary is split in proportion."""
    values = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])  # value 0 always written first
    flat = skew_at_k(torch.zeros(8), values, 2, 4, "official_zero")
    torch.testing.assert_close(flat, torch.zeros(2))
    # one clear winner (value 1), then 4 tied images (2 of each value) for the 3 remaining slots: 1 + 1.5 vs 1.5
    scores = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0, 5.0, -1.0, -1.0])
    got = skew_at_k(scores, values, 2, 4, "official_zero")
    expected = torch.tensor([math.log((1.5 / 4) / 0.5), math.log((2.5 / 4) / 0.5)])
    torch.testing.assert_close(got, expected)


def test_unknown_skew_options_name_their_keys():
    scores, values = torch.tensor([0.9, 0.1, 0.5, 0.3]), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"model\.skew\.zero_count='none'"):
        skew_at_k(scores, values, 2, 2, "none")
    with pytest.raises(ValueError, match=r"model\.skew\.mode='rank'"):
        skew_table(scores[:, None], values[:, None], torch.zeros(4, dtype=torch.long), [2], [0], "rank")
    with pytest.raises(ValueError, match=r"model\.skew\.per_sample='mean'"):
        per_sample_skew(torch.zeros(1, 1, 2), torch.zeros(4, dtype=torch.long), values[:, None], "mean")
