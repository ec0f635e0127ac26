import pytest
import torch

from shagcl.gcl import (
    OFFICIAL_PREDICATE_COUNTS,
    VG150_PREDICATE_REMAP,
    VG150_PREDICATES_FREQ_ORDER,
    assign_pairs,
    classifier_sizes,
    group_predicates,
    map_labels_to_classifier,
    median_resampling_rates,
)

VG = OFFICIAL_PREDICATE_COUNTS["vg150"]
GQA = OFFICIAL_PREDICATE_COUNTS["gqa200"]


@pytest.mark.parametrize(
    ("counts", "mu", "expected"),
    [
        (VG, 3, [3, 3, 8, 6, 20, 10]),
        (VG, 4, [4, 6, 9, 19, 12]),
        (VG, 5, [4, 8, 10, 28]),
        (GQA, 3, [4, 4, 11, 16, 31, 34]),
        (GQA, 4, [5, 10, 20, 65]),
        (GQA, 5, [7, 14, 28, 51]),
    ],
)
def test_grouping_reproduces_official_presets(counts, mu, expected):
    assert group_predicates(counts[1:], mu, 200) == expected


def test_average_grouping_and_vg_divide4_names():
    assert group_predicates(VG[1:], mode="average") == [10] * 5
    assert group_predicates(GQA[1:], mode="average") == [20] * 5
    with pytest.raises(ValueError, match=r"model\.config\.group_split=average with 3 groups"):
        group_predicates([5, 3], mode="average", num_average_groups=3)
    sizes = classifier_sizes(group_predicates(VG[1:], 4))
    assert VG150_PREDICATES_FREQ_ORDER[1 : sizes[0] + 1] == ["on", "has", "wearing", "of"]
    assert VG150_PREDICATES_FREQ_ORDER[sizes[3] + 1 :][-1] == "flying in"
    assert VG150_PREDICATE_REMAP[31] == 1 and VG150_PREDICATE_REMAP[20] == 2 and VG150_PREDICATE_REMAP[15] == 50
    assert sorted(VG150_PREDICATE_REMAP) == list(range(51))


def test_median_rates_worked_values():
    rates = median_resampling_rates(VG, [4, 6, 9, 19, 12])
    torch.testing.assert_close(rates[0, :5], torch.tensor([0.1892, 0.5234, 0.8524, 1, 1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        rates[1, :6], torch.tensor([0.0612, 0.1694, 0.2759, 0.3914, 0.5909, 0.8518]), atol=1e-4, rtol=0
    )
    assert (rates[0, 5:] == 0).all() and (rates[1, 11:] == 0).all()  # zero beyond n_k
    assert rates.min() >= 0 and (rates[rates > 0] >= 0.01).all()  # floor 0.01
    # medians m_3..m_5 = 6712, 1319, 653.5: a class with count == median has rate 1
    counts = torch.tensor(VG, dtype=torch.float)
    for k, m in ((2, 6712.0), (3, 1319.0), (4, 653.5)):
        expected = torch.where(counts[1:] > m, (m / counts[1:]).clamp_min(0.01), torch.ones(50))
        n_k = classifier_sizes([4, 6, 9, 19, 12])[k]
        torch.testing.assert_close(rates[k, 1 : n_k + 1], expected[:n_k])


def test_label_mapping():
    assert map_labels_to_classifier(torch.tensor([0, 3, 4, 5, 9]), 4).tolist() == [0, 3, 4, 0, 0]


def test_assignment_rules():
    groups = [2, 2, 2]  # classifiers cover 1..2, 1..4, 1..6
    rates = torch.zeros(3, 7)
    rates[0, :3] = torch.tensor([1.0, 0.3, 1.0])
    rates[1, :5] = torch.tensor([1.0, 0.2, 0.5, 0.5, 1.0])
    rates[2, :7] = torch.tensor([1.0, 0.1, 0.4, 0.6, 0.8, 1.0, 1.0])
    labels = torch.tensor([1, 1, 3, 4, 0, 0])  # rarest label 4 -> group 2 -> K_b = 2
    u = torch.tensor([0.15, 0.5, 0.9, 0.0, 0.0, 0.0])
    bg = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 0.9])
    a, k_b = assign_pairs(labels, groups, rates, u, bg)
    assert k_b == 2
    assert a[2].sum() == 0  # classifier 3 untouched
    assert a[:, 0].tolist() == [True, True, False]  # u=.15 <= φ_2(1)=.2 -> k*=2
    assert a[:, 1].tolist() == [False, False, False]  # u=.5 > φ_1(1)=.3 -> k*=0
    assert a[:, 2].tolist() == [True, False, False]  # group 2, u=.9 > φ_2(3)=.5 -> k*=1 (mapped to bg there)
    assert a[:, 3].tolist() == [True, True, False]
    assert a[:, 4].tolist() == [True, False, False] and a[:, 5].tolist() == [False, True, False]  # one each
    a, k_b = assign_pairs(torch.zeros(3, dtype=torch.long), groups, rates, torch.zeros(3), torch.zeros(3))
    assert k_b == 3 and a.all()
    a, _ = assign_pairs(labels, groups, rates, u, bg, background_mode="all_include")
    assert a[:2, 4:].all() and not a[2, 4:].any()


def test_rand_choose_keeps_or_drops_background_pairs():
    """ZERO_LABEL_PADDING_MODE rand_choose (official predictor): a background pair joins every classifier
    1..K_b with probability 0.6 and is otherwise left out of the batch; it never lands in a single classifier."""
    groups = [2, 2, 2]
    rates = torch.ones(3, 7)
    labels = torch.tensor([4, 0, 0, 0])  # K_b = 2
    bg = torch.tensor([0.0, 0.1, 0.59, 0.9])
    a, k_b = assign_pairs(labels, groups, rates, torch.zeros(4), bg, background_mode="rand_choose")
    assert k_b == 2
    assert a[:, 1].tolist() == [True, True, False] and a[:, 2].tolist() == [True, True, False]
    assert a[:, 3].tolist() == [False, False, False]  # dropped, not handed to one classifier
    draws = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    a, _ = assign_pairs(
        torch.cat([torch.tensor([4]), torch.zeros(20000, dtype=torch.long)]),
        groups,
        rates,
        torch.zeros(20001),
        torch.cat([torch.zeros(1), draws]),
        background_mode="rand_choose",
    )
    kept = a[:, 1:].sum(0)  # classifiers per background pair
    assert set(kept.unique().tolist()) == {0, 2}
    assert abs(float((kept == 2).float().mean()) - 0.6) < 0.02
