import random

import numpy as np
import pytest
import torch

from snps3.masking import MSSMasker, attentive_mask, bert_mlm_mask, mssm_num_masks, restore_raw_ids, select_lvwm_words

MASK = 103


@pytest.mark.parametrize("n,expected", [(1, 0), (2, 1), (8, 1), (9, 2), (15, 2), (16, 3), (22, 3), (23, 4), (28, 4)])
def test_mssm_rounding_rule(n, expected):
    assert mssm_num_masks(n) == expected


def make_masker(prob=0.15):
    significant = np.zeros(300, dtype=bool)
    significant[[200, 201, 202, 203]] = True
    lemma = [[] for _ in range(300)]
    lemma[200] = [200, 250]
    return MSSMasker(significant, lemma, MASK, prob)


def test_only_significant_positions_when_enough():
    masker = make_masker()
    tokens = [150, 200, 151, 201, 152, 202, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162]  # n=16 -> 3 masks
    rng = random.Random(0)
    for _ in range(200):
        ids, labels = masker(tokens, rng)
        chosen = [p for p, y in enumerate(labels) if y >= 0]
        assert len(chosen) == 3
        assert set(chosen) <= {1, 3, 5}
        assert all(labels[p] == tokens[p] for p in chosen)
        assert all(ids[p] == tokens[p] for p in range(len(tokens)) if p not in chosen)


def test_fill_up_uses_other_positions_with_true_labels():
    masker = make_masker()
    tokens = [150 + i for i in range(23)]  # 23 tokens -> 4 masks
    tokens[4] = 203  # one significant word
    ids, labels = masker(tokens, random.Random(1))
    chosen = [p for p, y in enumerate(labels) if y >= 0]
    assert len(chosen) == 4 and 4 in chosen
    for p in chosen:
        assert labels[p] == tokens[p]  # the original id, not [MASK] (official bug not reproduced)
        if p != 4:
            assert ids[p] == MASK


def test_80_10_10_frequencies():
    masker = make_masker()
    tokens = [200, 150]  # n=2 -> one mask, always position 0 (the only significant word)
    rng = random.Random(0)
    counts = {"mask": 0, "replace": 0, "keep": 0}
    for _ in range(10_000):
        ids, labels = masker(tokens, rng)
        assert labels == [200, -1]
        counts["mask" if ids[0] == MASK else "keep" if ids[0] == 200 else "replace"] += 1
    # "keep" also absorbs replacements that drew 200 itself (1/4 of 10% · 1/2)
    assert abs(counts["mask"] / 1e4 - 0.8) < 0.02
    assert abs(counts["replace"] / 1e4 - (0.1 - 0.1 * 0.25 * 0.5)) < 0.015
    assert abs(counts["keep"] / 1e4 - (0.1 + 0.1 * 0.25 * 0.5)) < 0.015


def test_replacement_draws_from_same_lemma_list():
    masker = make_masker()
    seen = {masker.random_replacement(random.Random(s)) for s in range(300)}
    assert seen == {200, 250, 201, 202, 203}


def test_probability_zero_returns_no_labels():
    ids, labels = make_masker(prob=0.0)([200, 201, 150], random.Random(0))
    assert ids == [200, 201, 150] and labels == [-1, -1, -1]


def test_bert_mlm_rate():
    rng = random.Random(0)
    tokens = list(range(150, 250))
    n = sum(sum(y >= 0 for y in bert_mlm_mask(tokens, rng, MASK, 300)[1]) for _ in range(100))
    assert abs(n / 10_000 - 0.15) < 0.02


def test_attentive_mask_count_specials_and_mask_token():
    ids = torch.tensor([[101, 150, 151, 152, 153, 154, 155, 156, 102, 0, 0], [101, 160, 102, 0, 0, 0, 0, 0, 0, 0, 0]])
    attn = (ids != 0).long()
    importance = torch.rand(ids.shape)
    importance[:, 0] = 1e6  # huge importance on [CLS] must not matter
    for seed in range(20):
        masked, labels = attentive_mask(
            ids, attn, importance, (101, 102, 0), MASK, generator=torch.Generator().manual_seed(seed)
        )
        chosen0 = (labels[0] >= 0).nonzero().flatten().tolist()
        assert len(chosen0) == max(int(0.15 * 7), 1) == 1
        assert (labels[1] >= 0).sum() == 1 and labels[1, 1] == 160  # at least one mask
        for b in range(2):
            sel = labels[b] >= 0
            assert (masked[b][sel] == MASK).all()
            assert not torch.isin(ids[b][sel], torch.tensor([101, 102, 0])).any()
            torch.testing.assert_close(labels[b][sel], ids[b][sel])


def test_restore_raw_ids():
    raw = torch.tensor([[101, 5, 6, 7, 102]])
    masked = torch.tensor([[101, MASK, 6, 9, 102]])
    labels = torch.tensor([[-1, 5, -1, 7, -1]])
    torch.testing.assert_close(restore_raw_ids(masked, labels), raw)


def test_lvwm_word_selection_fallbacks():
    ids = torch.tensor(
        [
            [101, 10, 11, 12, 13, 102],  # significant 11, 12 -> topped up to 3 from {2, 3}
            [101, 20, 21, 22, 23, 102],  # none significant -> other positions 1..4
            [101, 102, 0, 0, 0, 0],  # nothing -> 0, 1, 2
            [101, 30, 31, 32, 33, 102],  # 4 significant -> 3 distinct of them
        ]
    )
    attn = (ids != 0).long()
    sig = torch.zeros_like(ids, dtype=torch.bool)
    sig[0, [2, 3]] = True
    sig[3, 1:5] = True
    pos = select_lvwm_words(ids, attn, sig, (101, 102, 0), 3, torch.Generator().manual_seed(0))
    assert pos.shape == (4, 3)
    assert set(pos[0].tolist()) == {2, 3}
    assert set(pos[1].tolist()) <= {1, 2, 3, 4} and len(set(pos[1].tolist())) == 3
    assert sorted(pos[2].tolist()) == [0, 1, 2]
    assert set(pos[3].tolist()) <= {1, 2, 3, 4} and len(set(pos[3].tolist())) == 3
