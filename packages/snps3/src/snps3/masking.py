"""Caption masking: MSSM (significant-word masking, spec §3.5), plain BERT MLM, attentive masking (spec §3.4 f),
and the LVWM word selection (spec §3.4 e steps 1-2). Labels are -1 where nothing is predicted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "mssm_num_masks",
    "MSSMasker",
    "bert_mlm_mask",
    "attention_importance",
    "attentive_mask",
    "restore_raw_ids",
    "select_lvwm_words",
]


def mssm_num_masks(n: int, prob: float = 0.15, round_up_at: float = 0.3) -> int:
    """n_mask = ⌊prob·n⌋, plus 1 if the fractional part of prob·n is >= 0.3 (double precision; spec §3.5 step 1).

    1 -> 0, 2 -> 1, 8 -> 1, 9 -> 2, 15 -> 2, 16 -> 3, 22 -> 3, 23 -> 4, 28 -> 4.
    """
    x = prob * n
    base = math.floor(x)
    return base + (1 if x - base >= round_up_at else 0)


class MSSMasker:
    """Masked Significant Semantic Modelling on one caption's WordPiece ids (spec §3.5).

    Args:
        significant: bool (V,), ``rank[id] <= K_top``.
        same_lemma_ids: per vocabulary id, the ids of the words sharing its lemma (may be empty).
        mask_id: id of [MASK].
        prob: masking probability (0.15); 0 returns no labels.

    Deviation (spec §7 weak spots 1, 2): when fewer significant words than ``n_mask`` exist, the remaining masks go
    to non-significant words, replaced by [MASK] and labelled with their original id (the official code indexes the
    wrong list and labels with the [MASK] id); a random replacement whose same-lemma list is empty uses the whole
    word, not its first character.
    """

    def __init__(
        self, significant: np.ndarray, same_lemma_ids: Sequence[Sequence[int]], mask_id: int, prob: float = 0.15
    ):
        self.significant = np.asarray(significant, dtype=bool)
        self.significant_ids = np.flatnonzero(self.significant)
        if len(self.significant_ids) == 0:
            raise ValueError("MSSM: no significant word in the vocabulary (check the significant-word file and top_k)")
        self.same_lemma_ids = same_lemma_ids
        self.mask_id = mask_id
        self.prob = prob

    def random_replacement(self, rng: random.Random) -> int:
        """A random significant id, then a random entry of its same-lemma list (the id itself if empty)."""
        wid = int(self.significant_ids[rng.randrange(len(self.significant_ids))])
        choices = self.same_lemma_ids[wid] if wid < len(self.same_lemma_ids) else ()
        return int(choices[rng.randrange(len(choices))]) if len(choices) else wid

    def __call__(self, tokens: Sequence[int], rng: random.Random) -> tuple[list[int], list[int]]:
        """tokens: caption WordPiece ids without [CLS]/[SEP] -> (masked ids, labels with -1 elsewhere)."""
        ids = list(tokens)
        labels = [-1] * len(ids)
        if self.prob <= 0 or not ids:
            return ids, labels
        n_mask = mssm_num_masks(len(ids), self.prob)
        omega = [p for p, w in enumerate(ids) if w < len(self.significant) and self.significant[w]]
        if n_mask <= len(omega):
            chosen = rng.sample(omega, n_mask)
            fill = []
        else:
            chosen = omega
            others = [p for p in range(len(ids)) if p not in set(omega)]
            fill = rng.sample(others, min(n_mask - len(omega), len(others)))
        for p in chosen:
            labels[p] = ids[p]
            u = rng.random()
            if u < 0.8:
                ids[p] = self.mask_id  # 80 %: [MASK]
            elif u < 0.9:
                ids[p] = self.random_replacement(rng)  # 10 %: same-lemma word of a random significant word
            # 10 %: unchanged
        for p in fill:
            labels[p] = ids[p]
            ids[p] = self.mask_id
        return ids, labels


def bert_mlm_mask(
    tokens: Sequence[int], rng: random.Random, mask_id: int, vocab_size: int, prob: float = 0.15
) -> tuple[list[int], list[int]]:
    """Plain BERT masking (the "MLM" ablation, spec §3.5 item 5): each token with probability ``prob``,
    80 % [MASK] / 10 % a uniformly random vocabulary id / 10 % unchanged."""
    ids = list(tokens)
    labels = [-1] * len(ids)
    for p in range(len(ids)):
        if rng.random() < prob:
            labels[p] = ids[p]
            u = rng.random()
            if u < 0.8:
                ids[p] = mask_id
            elif u < 0.9:
                ids[p] = rng.randrange(vocab_size)
    return ids, labels


def attention_importance(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Word importance for attentive masking (spec §3.4 f): a_p = Σ_layers Σ_queries mean_heads A[q, p].

    attentions: per layer (B, heads, L, L) attention maps of the text-only pass -> (B, L), detached. The sum runs
    over every query row, padding rows included, as in the official code: a padding query still spreads its
    attention over the caption's real tokens, so short captions get most of their importance from those rows.
    """
    return sum(a.detach().float().mean(1).sum(1) for a in attentions)  # (B, L)


def attentive_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    importance: torch.Tensor,
    special_ids: Sequence[int],
    mask_id: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-guided masking (spec §3.4 f): per caption sample ``max(⌊prob·n_valid⌋, 1)`` positions without
    replacement with probability ∝ ``a_p + 1e-6`` (a_p = 0 at [CLS]/[SEP]/[PAD]) and replace them by [MASK].

    input_ids, attention_mask, importance (B, L) -> (masked ids (B, L), labels (B, L) with -1 elsewhere).
    ``n_valid`` counts the non-special tokens.
    """
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        special |= input_ids == s
    valid = attention_mask.bool() & ~special  # (B, L)
    weights = (importance.detach().float().clamp_min(0) * valid) + 1e-6 * valid  # (B, L), 0 at special/pad
    ids = input_ids.clone()
    labels = torch.full_like(input_ids, -1)
    for b in range(input_ids.shape[0]):
        n_valid = int(valid[b].sum())
        if n_valid == 0:
            continue
        k = min(max(int(math.floor(prob * n_valid)), 1), n_valid)
        pos = torch.multinomial(weights[b].cpu(), k, replacement=False, generator=generator).to(ids.device)
        labels[b, pos] = input_ids[b, pos]
        ids[b, pos] = mask_id
    return ids, labels


def restore_raw_ids(masked_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Replace every labelled (masked) position by its label: the raw caption ids (spec §3.4 e step 1)."""
    return torch.where(labels >= 0, labels, masked_ids)


def select_lvwm_words(
    raw_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    significant: torch.Tensor | None,
    special_ids: Sequence[int],
    num_words: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose exactly ``num_words`` positions per caption for LVWM (spec §3.4 e step 2).

    Significant positions (``significant[id]``) first; if none, the other non-special positions; if none at all,
    positions 0, 1, 2. Longer lists are sampled without replacement; shorter ones are topped up by picks with
    replacement from the list. raw_ids, attention_mask (B, L), significant (B, L) bool per token (``rank(id) <=
    K_top``; None = no significant word known) -> positions (B, num_words).
    """
    special = torch.zeros_like(raw_ids, dtype=torch.bool)
    for s in special_ids:
        special |= raw_ids == s
    valid = attention_mask.bool() & ~special
    sig = valid & significant.bool() if significant is not None else torch.zeros_like(valid)
    out = torch.empty(raw_ids.shape[0], num_words, dtype=torch.long)
    for b in range(raw_ids.shape[0]):
        cand = torch.nonzero(sig[b]).flatten().cpu()
        if len(cand) == 0:
            cand = torch.nonzero(valid[b]).flatten().cpu()
        if len(cand) == 0:
            cand = torch.arange(min(num_words, raw_ids.shape[1]))
        if len(cand) >= num_words:
            pick = cand[torch.randperm(len(cand), generator=generator)[:num_words]]
        else:
            extra = cand[torch.randint(len(cand), (num_words - len(cand),), generator=generator)]
            pick = torch.cat([cand, extra])
        out[b] = pick
    return out.to(raw_ids.device)
