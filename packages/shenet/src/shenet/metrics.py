"""Text-video retrieval metrics (spec §5): R@1/5/10, MdR, MnR for text→video and video→text.

Every query (text) has one ground-truth video; a video may have several texts (MSVD), and then video→text takes the
best rank among its texts. rank = number of gallery items scored strictly higher than the (best) ground truth, so
ties go in the ground truth's favour; R@K = 100·mean(rank < K), MdR = median(rank + 1), MnR = mean(rank + 1).

Deviation from stock torchmetrics: ``torchmetrics.retrieval`` has no median/mean rank and breaks ties by sort order,
so this module computes ranks itself; NaN/−inf scores (padding) never outrank a ground truth, and a query whose
ground truth has no score (all its positives NaN/−inf, e.g. a video without any readable frame, which
:meth:`shenet.models.SHENet.similarity_matrix` scores −inf) ranks last.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["retrieval_ranks", "rank_metrics", "retrieval_metrics", "RetrievalMetrics"]

KS = (1, 5, 10)


def retrieval_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """0-based rank of each query: #{gallery items with score > max positive score}.

    scores (Q, G) float (NaN/−inf entries are padding and never counted); positives (Q, G) bool, ≥ 1 per row.
    A query whose positives are all NaN/−inf has no score for its ground truth and ranks last: #{non-positive items}
    (ties would otherwise go in its favour, e.g. rank 0 for a video→text query of a video without frames).
    """
    if scores.shape != positives.shape or scores.dim() != 2:
        raise ValueError(
            f"retrieval_ranks: scores {tuple(scores.shape)} and positives {tuple(positives.shape)} must both be (Q, G)"
        )
    if not bool(positives.any(-1).all()):
        raise ValueError("retrieval_ranks: a query has no ground-truth gallery item")
    s = scores.float().nan_to_num(nan=float("-inf"), neginf=float("-inf"))  # keep −inf (the default makes it finite)
    best = s.masked_fill(~positives, float("-inf")).amax(-1, keepdim=True)  # (Q, 1)
    ahead = (s > best).sum(-1)  # (Q,)
    unscored = best[:, 0] == float("-inf")  # (Q,) no positive has a score
    return torch.where(unscored, (~positives).sum(-1), ahead)  # (Q,)


def rank_metrics(ranks: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """R@1/5/10 (percent), MdR and MnR from 0-based ranks (Q,)."""
    r = ranks.float()
    out = {f"{prefix}R@{k}": 100.0 * (r < k).float().mean() for k in KS}
    out[f"{prefix}MdR"] = torch.quantile(r + 1, 0.5)  # numpy's median (mean of the two middle values when even)
    out[f"{prefix}MnR"] = (r + 1).mean()
    return out


def retrieval_metrics(scores: torch.Tensor, query_gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Text→video and video→text metrics (keys ``t2v_R@1`` ... ``v2t_MnR``) of a (texts × videos) score matrix.

    scores (Q, G); query_gt (Q,) long: the video index of each text. Every video must have at least one text.
    """
    Q, G = scores.shape
    if query_gt.shape != (Q,):
        raise ValueError(f"retrieval_metrics: query_gt {tuple(query_gt.shape)} must be ({Q},)")
    pos = torch.zeros(Q, G, dtype=torch.bool, device=scores.device)
    pos[torch.arange(Q, device=scores.device), query_gt] = True  # (Q, G)
    if not bool(pos.any(0).all()):
        missing = int((~pos.any(0)).nonzero()[0])
        raise ValueError(f"retrieval_metrics: video {missing} has no text; video→text is undefined")
    out = rank_metrics(retrieval_ranks(scores, pos), "t2v_")
    out.update(rank_metrics(retrieval_ranks(scores.T, pos.T), "v2t_"))
    return out


class RetrievalMetrics(Metric):
    """Accumulates rows of the (texts × videos) score matrix and computes :func:`retrieval_metrics`.

    ``update(scores (q, G), query_gt (q,), query_ids (q,))``: ``query_ids`` are global text indices; duplicates (the
    repeats DistributedSampler adds) are dropped and rows are ordered by id before computing.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("query_gt", default=[], dist_reduce_fx="cat")
        self.add_state("query_ids", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, query_gt: torch.Tensor, query_ids: torch.Tensor) -> None:
        if scores.dim() != 2 or query_gt.shape != scores.shape[:1] or query_ids.shape != scores.shape[:1]:
            raise ValueError(
                f"RetrievalMetrics.update: scores (q, G), query_gt (q,), query_ids (q,) expected, got "
                f"{tuple(scores.shape)}, {tuple(query_gt.shape)}, {tuple(query_ids.shape)}"
            )
        self.scores.append(scores.float())
        self.query_gt.append(query_gt.long())
        self.query_ids.append(query_ids.long())

    def compute(self) -> dict[str, torch.Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        scores, gt, ids = cat(self.scores), cat(self.query_gt), cat(self.query_ids)
        if scores.numel() == 0:
            raise ValueError("RetrievalMetrics.compute: no scores were accumulated")
        order = torch.argsort(ids, stable=True)
        ids, scores, gt = ids[order], scores[order], gt[order]
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]  # drop DistributedSampler duplicates
        return retrieval_metrics(scores[keep], gt[keep])
