"""Retrieval metrics with several ground-truth videos per caption (spec §5). QA / MC accuracy is the mean of
per-question correctness (answers outside the vocabulary count as wrong) over distinct questions:
``mmzoo.metrics.IndexedMean`` keeps each value with its dataset index, so a question that a ``DistributedSampler``
repeats to pad its last round counts once.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["best_gt_rank", "retrieval_metrics", "RetrievalMetrics"]


def best_gt_rank(sim: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best-ranked ground-truth column per row, ranking columns by descending score.

    sim (N_q, N_c) scores, gt (N_q, N_c) bool -> (N_q,) long. Ties are broken pessimistically (a column with the
    same score as the best ground truth counts as ranked before it). A row without ground truth raises.
    """
    if sim.shape != gt.shape:
        raise ValueError(f"sim {tuple(sim.shape)} and gt {tuple(gt.shape)} must have the same shape")
    if not gt.any(1).all():
        raise ValueError("every query needs at least one ground-truth item")
    best = sim.float().masked_fill(~gt.bool(), float("-inf")).max(1).values  # (N_q,) best ground-truth score
    return ((sim.float() > best[:, None]) | ((sim.float() == best[:, None]) & ~gt.bool())).sum(1)  # (N_q,)


def retrieval_metrics(sim: torch.Tensor, gt: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, torch.Tensor]:
    """R@K = mean[r < K] (in %), MdR = median(r) + 1, MnR = mean(r) + 1, mean_recall = mean of the R@K (spec §5).

    sim (N_q, N_c), gt (N_q, N_c) bool; r from :func:`best_gt_rank`.
    """
    r = best_gt_rank(sim, gt).float()
    out = {f"R@{k}": (r < k).float().mean() * 100 for k in ks}
    out["MdR"] = r.quantile(0.5) + 1  # numpy-style median (mean of the middle two)
    out["MnR"] = r.mean() + 1
    out["mean_recall"] = torch.stack([out[f"R@{k}"] for k in ks]).mean()
    return out


class RetrievalMetrics(Metric):
    """Text→video and video→text retrieval metrics over full score-matrix rows.

    ``update(sim_rows, gt_rows)`` takes (n, N_c) rows (a chunk of queries against every candidate); ``compute``
    returns :func:`retrieval_metrics` on all rows. Rows are kept ("cat" state) because ranks need every column.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10)):
        super().__init__()
        self.ks = tuple(ks)
        self.add_state("ranks", default=[], dist_reduce_fx="cat")

    def update(self, sim: torch.Tensor, gt: torch.Tensor) -> None:
        self.ranks.append(best_gt_rank(sim, gt))

    def compute(self) -> dict[str, torch.Tensor]:
        r = dim_zero_cat(self.ranks).float()
        out = {f"R@{k}": (r < k).float().mean() * 100 for k in self.ks}
        out["MdR"] = r.quantile(0.5) + 1
        out["MnR"] = r.mean() + 1
        out["mean_recall"] = torch.stack([out[f"R@{k}"] for k in self.ks]).mean()
        return out
