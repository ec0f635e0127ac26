"""Retrieval metrics with several ground-truth videos per caption (spec §5). QA / MC accuracy is the mean of
per-question correctness (answers outside the vocabulary count as wrong) over distinct questions:
``mmzoo.metrics.IndexedMean`` keeps each value with its dataset index, so a question that a ``DistributedSampler``
repeats to pad its last round counts once. The pre-training validation losses and monitors are averaged the same
way, over distinct items (:class:`ItemWeightedMean`).
"""

from __future__ import annotations

import logging

import torch
from mmzoo.metrics import ListStateMetric, first_of_each_id
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

log = logging.getLogger(__name__)

__all__ = ["best_gt_rank", "retrieval_metrics", "RetrievalMetrics", "item_weighted_mean", "ItemWeightedMean"]


def best_gt_rank(sim: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best-ranked ground-truth column per row, ranking columns by descending score.

    sim (N_q, N_c) scores, gt (N_q, N_c) bool -> (N_q,) long. Ties are broken pessimistically (a column with the
    same score as the best ground truth counts as ranked before it). A NaN score ranks as −inf, below every number,
    with a warning (left as NaN, every comparison with it is false: a ground truth scored NaN would count as ranked
    first, and a model whose scores turned NaN would show perfect recall). A row without ground truth raises.
    """
    if sim.shape != gt.shape:
        raise ValueError(f"sim {tuple(sim.shape)} and gt {tuple(gt.shape)} must have the same shape")
    if not gt.any(1).all():
        raise ValueError("every query needs at least one ground-truth item")
    scores = sim.float()
    nan = scores.isnan()
    if nan.any():
        log.warning("retrieval metrics: %d of %d scores are NaN and rank last", int(nan.sum()), nan.numel())
        scores = scores.masked_fill(nan, float("-inf"))
    gt = gt.bool()
    best = scores.masked_fill(~gt, float("-inf")).max(1).values  # (N_q,) best ground-truth score
    return ((scores > best[:, None]) | ((scores == best[:, None]) & ~gt)).sum(1)  # (N_q,)


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


def item_weighted_mean(values: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per column n: Σ_i values[i, n] / Σ_i weights[i, n] over the rows i of distinct ``ids`` (the first row of an id
    that occurs more than once; a padding repeat's rows are its repeats).

    values, weights (N_rows, N) float; ids (N_rows,) long -> ``{"mean": (N,), "weight": (N,), "items": ()}``, float64:
    the ratios (NaN where the weights sum to 0), the weight sums and the number of distinct ids. With weights 1 this
    is the mean over distinct items; with an item's masked-token count as weight and its token-loss sum as value,
    the mean over their tokens.
    """
    keep = first_of_each_id(ids)
    total = weights[keep].to(torch.float64).sum(0)  # (N,)
    mean = values[keep].to(torch.float64).sum(0) / total  # (N,)
    mean = torch.where(total > 0, mean, torch.full_like(mean, float("nan")))
    items = torch.tensor(float(len(keep)), dtype=torch.float64, device=total.device)
    return {"mean": mean, "weight": total, "items": items}


class ItemWeightedMean(ListStateMetric):
    """:func:`item_weighted_mean` of ``num_terms`` per-item terms over batches and ranks, each item counted once.

    ``update(values (B, N), weights (B, N), ids (B,))``; ``compute()`` -> the function's dict (``items`` 0 and every
    mean NaN when no rank added anything). A rank without items takes part in the sync and adds nothing.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, num_terms: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_terms = num_terms
        self._row_specs = {
            "values": ((num_terms,), torch.float64),
            "weights": ((num_terms,), torch.float64),
            "ids": ((), torch.long),
        }
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("weights", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, values: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> None:
        b = ids.shape[0]
        if ids.ndim != 1 or values.shape != (b, self.num_terms) or weights.shape != values.shape:
            raise ValueError(
                f"ItemWeightedMean({self.num_terms}): values {tuple(values.shape)} and weights "
                f"{tuple(weights.shape)} must be (B, {self.num_terms}) for ids {tuple(ids.shape)} (B,)"
            )
        self.values.append(values.detach().to(torch.float64))
        self.weights.append(weights.detach().to(torch.float64))
        self.ids.append(ids.long())

    def compute(self) -> dict[str, torch.Tensor]:
        return item_weighted_mean(self._rows("values"), self._rows("weights"), self._rows("ids"))
