"""Group Collaborative Learning bookkeeping (spec §3.6): predicate grouping, growing label spaces, median
re-sampling rates and the per-batch assignment of relation pairs to classifiers.

Everything here is plain tensor arithmetic on predicate counts; the classifiers themselves live in
:mod:`shagcl.models` and the losses in :mod:`shagcl.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from mmzoo.config import check_choice

__all__ = [
    "OFFICIAL_PREDICATE_COUNTS",
    "VG150_PREDICATE_REMAP",
    "VG150_PREDICATES_FREQ_ORDER",
    "group_predicates",
    "group_of_label",
    "classifier_sizes",
    "map_labels_to_classifier",
    "median_resampling_rates",
    "assign_pairs",
    "GroupSplit",
    "BackgroundMode",
]

GroupSplit = Literal["divide", "average"]
"""Grouping rules of the predicates (``model.config.group_split``)."""
BackgroundMode = Literal["rand_insert", "rand_choose", "all_include"]
"""How background pairs are spread over the classifiers (ZERO_LABEL_PADDING_MODE, ``model.config.background_mode``)."""

# Training triplet counts per predicate in frequency order; index 0 is the background count (spec §3.6.4).
OFFICIAL_PREDICATE_COUNTS: dict[str, list[int]] = {
    "vg150": [
        3024465,
        109355,
        67144,
        47326,
        31347,
        21748,
        15300,
        10011,
        11059,
        10764,
        6712,
        5086,
        4810,
        3757,
        4260,
        3167,
        2273,
        1829,
        1603,
        1413,
        1225,
        793,
        809,
        676,
        352,
        663,
        752,
        565,
        504,
        644,
        601,
        551,
        460,
        394,
        379,
        397,
        429,
        364,
        333,
        299,
        270,
        234,
        171,
        208,
        163,
        157,
        151,
        71,
        114,
        44,
        4,
    ],
    "gqa200": [
        200000,
        64218,
        47205,
        32126,
        25203,
        21104,
        15890,
        15676,
        7688,
        6966,
        6596,
        6044,
        5250,
        4260,
        4180,
        4131,
        2859,
        2559,
        2368,
        2351,
        2134,
        1673,
        1532,
        1373,
        1273,
        1175,
        1139,
        1123,
        1077,
        941,
        916,
        849,
        835,
        808,
        782,
        767,
        628,
        603,
        569,
        540,
        494,
        416,
        412,
        412,
        398,
        395,
        394,
        390,
        345,
        327,
        302,
        301,
        292,
        275,
        270,
        267,
        267,
        264,
        258,
        251,
        233,
        233,
        229,
        224,
        215,
        214,
        209,
        204,
        198,
        195,
        192,
        191,
        185,
        181,
        176,
        158,
        158,
        154,
        151,
        148,
        143,
        136,
        131,
        130,
        130,
        128,
        127,
        125,
        124,
        124,
        121,
        118,
        112,
        112,
        106,
        105,
        104,
        103,
        102,
        52,
        52,
    ],
}

# Original (alphabetical) VG150 predicate id -> frequency-order id (spec §4.3); entry 0 is background.
VG150_PREDICATE_REMAP: list[int] = [
    0, 10, 42, 43, 34, 28, 17, 19, 7, 29, 33, 18, 35, 32, 27, 50, 22, 44, 45, 25, 2, 9, 5, 15,
    26, 23, 37, 48, 41, 6, 4, 1, 38, 21, 46, 30, 36, 47, 14, 49, 11, 16, 39, 13, 31, 40, 20, 24,
    3, 12, 8,
]  # fmt: skip

VG150_PREDICATES_FREQ_ORDER: list[str] = [
    "__background__", "on", "has", "wearing", "of", "in", "near", "behind", "with", "holding", "above",
    "sitting on", "wears", "under", "riding", "in front of", "standing on", "at", "carrying", "attached to",
    "walking on", "over", "for", "looking at", "watching", "hanging from", "laying on", "eating", "and",
    "belonging to", "parked on", "using", "covering", "between", "along", "covered in", "part of", "lying on",
    "on back of", "to", "walking in", "mounted on", "across", "against", "from", "growing on", "painted on",
    "playing", "made of", "says", "flying in",
]  # fmt: skip


def group_predicates(
    counts: Sequence[int],
    mu: float = 4.0,
    min_count: int = 200,
    mode: GroupSplit = "divide",
    num_average_groups: int = 5,
) -> list[int]:
    """Split predicates (already in descending-frequency order, background excluded) into groups (§3.6.2).

    Rule "divide μ": walk the predicates; a group opens at the current predicate with head count h and keeps
    taking predicates while their count >= floor(h / μ) or floor(h / μ) < ``min_count``; otherwise it closes and
    a new group opens at that predicate. Rule "average": ``num_average_groups`` groups of equal size (the last
    takes the remainder).

    Returns the group sizes in order (they sum to ``len(counts)``).
    """
    check_choice("model.config.group_split", mode, get_args(GroupSplit))  # else: the divide rule, silently
    counts = [int(c) for c in counts]
    if not counts:
        raise ValueError("group_predicates: empty count list")
    if mode == "average":
        size = len(counts) // num_average_groups
        if size == 0:
            raise ValueError(
                f"model.config.group_split=average with {num_average_groups} groups needs >= that many predicates"
            )
        sizes = [size] * num_average_groups
        sizes[-1] += len(counts) - size * num_average_groups
        return sizes
    if mu <= 1:
        raise ValueError(f"model.config.group_mu={mu} must be > 1")
    sizes: list[int] = []
    size, threshold = 0, 0
    for c in counts:
        if size == 0:  # open a group at this predicate
            size, threshold = 1, int(c // mu)
        elif c >= threshold or threshold < min_count:
            size += 1
        else:  # close the group, open a new one at this predicate
            sizes.append(size)
            size, threshold = 1, int(c // mu)
    sizes.append(size)
    return sizes


def classifier_sizes(group_sizes: Sequence[int]) -> list[int]:
    """n_k = g_1 + ... + g_k: the number of foreground predicates classifier k covers (§3.6.3)."""
    out, total = [], 0
    for g in group_sizes:
        total += int(g)
        out.append(total)
    return out


def group_of_label(group_sizes: Sequence[int]) -> torch.Tensor:
    """(C_rel,) long: 1-based group index of every predicate label; background (0) gets group 0."""
    groups = [0]
    for k, g in enumerate(group_sizes, start=1):
        groups += [k] * int(g)
    return torch.tensor(groups, dtype=torch.long)


def map_labels_to_classifier(labels: torch.Tensor, n_k: int) -> torch.Tensor:
    """Labels in classifier k's space: y if y <= n_k else 0 (rarer predicates are background there, §3.6.3)."""
    return torch.where(labels <= n_k, labels, torch.zeros_like(labels))


def median_resampling_rates(
    counts: Sequence[float], group_sizes: Sequence[int], min_rate: float = 0.01, background_factor: float = 10.0
) -> torch.Tensor:
    """Median re-sampling rates φ_k(c) of every classifier (§3.6.4), as a (K, C_rel) float tensor.

    counts: (C_rel,) training counts, index 0 = background. With m_k = median(N_1..N_{n_k}):
        φ_k(c) = 1 if N_c <= m_k;  max(min_rate, m_k / N_c) if N_c > m_k, c > 0;
        φ_k(0) = max(min_rate, background_factor * m_k / N_0) if N_0 > m_k;  φ_k(c) = 0 for c > n_k.
    """
    counts_t = torch.as_tensor(counts, dtype=torch.float64)
    sizes = classifier_sizes(group_sizes)
    if sizes[-1] != counts_t.numel() - 1:
        raise ValueError(f"group sizes sum to {sizes[-1]} but there are {counts_t.numel() - 1} predicate counts")
    rates = torch.zeros(len(sizes), counts_t.numel(), dtype=torch.float64)
    for k, n_k in enumerate(sizes):
        median = (
            counts_t[1 : n_k + 1].median()
            if n_k % 2 == 1
            else counts_t[1 : n_k + 1].sort().values[n_k // 2 - 1 : n_k // 2 + 1].mean()
        )  # the usual median (mean of the two middle values when n_k is even)
        n = counts_t[: n_k + 1].clamp_min(1e-12)
        r = torch.where(n > median, (median / n).clamp_min(min_rate), torch.ones_like(n))
        if counts_t[0] > median:
            r[0] = max(min_rate, float(background_factor * median / counts_t[0]))
        rates[k, : n_k + 1] = r
    return rates.float()


def assign_pairs(
    labels: torch.Tensor,
    group_sizes: Sequence[int],
    rates: torch.Tensor,
    uniform: torch.Tensor,
    background_choice: torch.Tensor,
    background_mode: BackgroundMode = "rand_insert",
    rand_choose_prob: float = 0.6,
) -> tuple[torch.Tensor, int]:
    """Assign a batch's relation pairs to classifiers (parallel classifier optimisation, §3.6.5).

    labels: (M,) predicate labels (0 = background); rates: (K, C_rel) from :func:`median_resampling_rates`;
    uniform: (M,) draws u ~ U[0, 1) (one per pair); background_choice: (M,) draws in [0, 1) used to pick the
    classifier of a background pair (``rand_insert``: classifier floor(v * K_b) + 1; ``rand_choose``: joins all
    classifiers 1..K_b when v < ``rand_choose_prob``, otherwise no classifier at all, as the official code drops it).

    Returns ``(assignment, K_b)``: assignment (K, M) bool, row k-1 = pairs classifier k trains on; K_b = group of
    the rarest label present (only classifiers 1..K_b get a loss). A batch of background only gives K_b = K and
    every classifier gets every pair.
    """
    num_groups = len(group_sizes)
    group = group_of_label(group_sizes).to(labels.device)[labels]  # (M,) 1-based group, 0 for background
    num_pairs = labels.numel()
    assignment = torch.zeros(num_groups, num_pairs, dtype=torch.bool, device=labels.device)
    if num_pairs == 0:
        return assignment, 0
    if bool((labels == 0).all()):
        assignment[:] = True
        return assignment, num_groups
    k_b = int(group.max())
    ks = torch.arange(1, num_groups + 1, device=labels.device)[:, None]  # (K, 1)
    fg = labels > 0
    # foreground: k* = largest k in [g, K_b] with u <= φ_k(y), else g - 1; join classifiers 1..k*
    phi = rates.to(labels.device)[:, labels]  # (K, M) φ_k(y_i)
    accept = (uniform[None, :] <= phi) & (ks >= group[None, :]) & (ks <= k_b)  # (K, M)
    k_star = torch.where(accept, ks.expand_as(accept), torch.zeros_like(accept, dtype=torch.long)).amax(0)
    k_star = torch.where(k_star > 0, k_star, group - 1)  # (M,)
    assignment |= fg[None, :] & (ks <= k_star[None, :])
    # background: one classifier uniformly from 1..K_b (rand_insert), or the variants
    chosen = (background_choice * k_b).long().clamp_max(k_b - 1) + 1  # (M,)
    one = (~fg)[None, :] & (ks == chosen[None, :])
    if background_mode == "rand_insert":
        assignment |= one
    elif background_mode == "all_include":
        assignment |= (~fg)[None, :] & (ks <= k_b)
    elif background_mode == "rand_choose":
        # kept by every classifier 1..K_b with probability rand_choose_prob, otherwise left out of this batch
        assignment |= (~fg & (background_choice < rand_choose_prob))[None, :] & (ks <= k_b)
    else:
        raise ValueError(
            f"model.config.background_mode={background_mode!r}: expected rand_insert|rand_choose|all_include"
        )
    return assignment, k_b
