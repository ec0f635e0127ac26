"""Metrics of spec §5: micro F1 (stock torchmetrics) and RP@90% (a custom Metric), per level."""

from __future__ import annotations

from typing import Literal

import torch
from mmzoo.config import check_choice
from torchmetrics import Metric
from torchmetrics.classification import MultilabelF1Score

__all__ = ["rp_at_accuracy", "RPAtAccuracy", "micro_f1", "MultilabelF1Score"]


RP_MODES = ("threshold", "top1")
"""Definitions of RP@90% (spec §5): every label scoring ≥ θ, or each video's top-1 label only."""


def micro_f1(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Micro F1 over all (video, label) pairs, positive iff score > 0 (sigmoid > 0.5). Scalar in [0, 1]."""
    pred = scores > 0
    tgt = targets.bool()
    tp = (pred & tgt).sum().float()
    denom = pred.sum() + tgt.sum()
    return 2 * tp / denom if denom > 0 else tp.new_tensor(0.0)


def _rp_threshold(scores: torch.Tensor, targets: torch.Tensor, accuracy: float) -> torch.Tensor:
    """Sweep θ over the distinct scores (descending): received = {(v,q): s ≥ θ}; keep the largest fraction of
    videos with ≥ 1 label among the θ whose label accuracy (correct / received) ≥ ``accuracy``."""
    n_videos = scores.shape[0]
    flat_s = scores.flatten().double()
    flat_t = targets.flatten().double()
    video = torch.arange(n_videos, device=scores.device).repeat_interleave(scores.shape[1])
    order = torch.argsort(flat_s, descending=True, stable=True)
    s, t, v = flat_s[order], flat_t[order], video[order]
    correct = torch.cumsum(t, 0)  # (N·L,)
    received = torch.arange(1, len(s) + 1, device=s.device, dtype=torch.float64)
    first = torch.zeros(n_videos, dtype=torch.long, device=s.device).scatter_reduce(
        0, v, torch.arange(len(v), device=s.device), reduce="amin", include_self=False
    )  # position where each video receives its first label
    new_video = torch.zeros(len(s), dtype=torch.float64, device=s.device)
    new_video[first] = 1.0
    labelled = torch.cumsum(new_video, 0)  # (N·L,) distinct videos labelled so far
    # θ = s[i] is only valid at the last position of a run of ties
    last_of_tie = torch.ones(len(s), dtype=torch.bool, device=s.device)
    last_of_tie[:-1] = s[1:] != s[:-1]
    ok = last_of_tie & (correct / received >= accuracy)
    if not ok.any():
        return scores.new_tensor(0.0)
    return (labelled[ok].max() / n_videos).to(scores.dtype)


def _rp_top1(scores: torch.Tensor, targets: torch.Tensor, accuracy: float) -> torch.Tensor:
    """Each video offers its top-1 label with confidence = its score; sweep θ as above over the N videos."""
    conf, idx = scores.max(dim=1)  # (N,)
    hit = targets.gather(1, idx[:, None]).squeeze(1).double()  # (N,)
    order = torch.argsort(conf, descending=True, stable=True)
    c, h = conf[order], hit[order]
    n = torch.arange(1, len(c) + 1, device=c.device, dtype=torch.float64)
    last_of_tie = torch.ones(len(c), dtype=torch.bool, device=c.device)
    last_of_tie[:-1] = c[1:] != c[:-1]
    ok = last_of_tie & (torch.cumsum(h, 0) / n >= accuracy)
    if not ok.any():
        return scores.new_tensor(0.0)
    return (n[ok].max() / len(c)).to(scores.dtype)


def rp_at_accuracy(
    scores: torch.Tensor, targets: torch.Tensor, accuracy: float = 0.9, mode: Literal["threshold", "top1"] = "threshold"
) -> torch.Tensor:
    """RP@90% (spec §5; definition reconstructed): the largest fraction of videos that receive a label while
    the accuracy of the received labels stays ≥ 90%, over all thresholds θ.

    scores, targets (N, L). ``threshold``: video v receives {q : s_vq ≥ θ}; accuracy = correct / received
    labels. ``top1``: each video receives only its top-1 label, if its score ≥ θ. Scalar in [0, 1].
    """
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must be equal (N, L)")
    if scores.shape[0] == 0:
        raise ValueError("RP@90%: no videos")
    if torch.isnan(scores).any():  # NaN sorts as a score of its own and would count as a confident correct label
        raise ValueError(f"RP@90%: {int(torch.isnan(scores).sum())} scores are NaN (a diverged model or NaN inputs)")
    check_choice("mode", mode, RP_MODES)  # anything else would silently mean top1
    fn = _rp_threshold if mode == "threshold" else _rp_top1
    return fn(scores, targets, accuracy)


class RPAtAccuracy(Metric):
    """:func:`rp_at_accuracy` accumulated over batches (stores every score; ``dist_reduce_fx="cat"``)."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, accuracy: float = 0.9, mode: Literal["threshold", "top1"] = "threshold") -> None:
        super().__init__()
        check_choice("model.rp_mode", mode, RP_MODES)
        self.accuracy, self.mode = accuracy, mode
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().float())

    def compute(self) -> torch.Tensor:
        scores = torch.cat(self.scores) if isinstance(self.scores, list) else self.scores
        targets = torch.cat(self.targets) if isinstance(self.targets, list) else self.targets
        return rp_at_accuracy(scores, targets, self.accuracy, self.mode)
