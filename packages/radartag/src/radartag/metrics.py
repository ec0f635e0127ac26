"""Ranking metrics of micro-video tagging (spec §5): sample-based mAP (model selection), label-based mAP, P@k, R@k.

All take a score matrix S (N, K) and a binary ground truth Y (N, K). AP is the step-wise definition with tied
scores grouped (scikit-learn's ``average_precision_score``). Top-k uses the official ranking: a stable ascending
sort, reversed (ties broken toward the larger tag index).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["row_average_precision", "sample_map", "label_map", "precision_recall_at_k", "TaggingMetrics"]


def row_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of every row (N, K) with ties grouped; NaN for rows without a positive.

    AP = Σ_thresholds (R_n − R_{n−1}) · P_n over the distinct score thresholds (descending).
    """
    scores, labels = scores.float(), labels.float()
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    s = torch.gather(scores, 1, order)
    y = torch.gather(labels, 1, order)
    tp = y.cumsum(1)  # (N, K)
    rank = torch.arange(1, s.shape[1] + 1, device=s.device, dtype=torch.float32)
    group_end = torch.ones_like(s, dtype=torch.bool)
    group_end[:, :-1] = s[:, 1:] != s[:, :-1]  # last position of each tie group
    tp_end = torch.where(group_end, tp, torch.zeros_like(tp))
    prev = torch.cummax(torch.cat([torch.zeros_like(tp[:, :1]), tp_end[:, :-1]], 1), 1).values
    gain = torch.where(group_end, (tp - prev) * tp / rank, torch.zeros_like(tp))
    pos = labels.sum(1)
    return torch.where(pos > 0, gain.sum(1) / pos.clamp(min=1), torch.full_like(pos, float("nan")))


def sample_map(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over videos of the AP over the tag ranking; videos without a positive tag are skipped."""
    ap = row_average_precision(scores, labels)
    return ap[~ap.isnan()].mean() if (~ap.isnan()).any() else ap.new_tensor(float("nan"))


def label_map(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over tags of the AP over videos; tags without a positive video are skipped (NaN APs dropped)."""
    return sample_map(scores.T, labels.T)


def precision_recall_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video P@k = |top-k ∩ positives| / k and R@k = |top-k ∩ positives| / |positives| (NaN without positives).
    Top-k from a stable ascending sort, reversed (official tie-breaking). Returns two (N,) tensors."""
    order = torch.argsort(scores.float(), dim=1, stable=True).flip(1)[:, :k]
    hits = torch.gather(labels.float(), 1, order).sum(1)
    pos = labels.float().sum(1)
    recall = torch.where(pos > 0, hits / pos.clamp(min=1), torch.full_like(pos, float("nan")))
    return hits / k, recall


class TaggingMetrics(Metric):
    """sample mAP, label mAP, P@1, P@3, R@5, R@10 (spec §5) over all evaluation videos.

    Sample-based metrics are accumulated as sums per video. Sample mAP and R@k are undefined for a video without a
    positive tag (the official means turn NaN): such videos are skipped there and counted in ``skipped``, and with
    every video skipped those two are NaN. P@k = |top-k ∩ positives| / k is defined for every video (0 without a
    positive) and, as in the official code, averaged over all evaluation videos, the skipped ones included. Label
    mAP needs the whole matrix, so scores and labels are kept (``cat`` states, N_eval × K).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, precision_at: tuple[int, ...] = (1, 3), recall_at: tuple[int, ...] = (5, 10)):
        super().__init__()
        self.precision_at, self.recall_at = tuple(precision_at), tuple(recall_at)
        self.add_state("ap_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), "sum")
        self.add_state("skipped", torch.zeros((), dtype=torch.long), "sum")
        self.add_state("p_sum", torch.zeros(len(self.precision_at), dtype=torch.float64), "sum")
        self.add_state("r_sum", torch.zeros(len(self.recall_at), dtype=torch.float64), "sum")
        self.add_state("scores", [], "cat")
        self.add_state("labels", [], "cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        if scores.shape != labels.shape or scores.ndim != 2:
            raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be equal (N, K)")
        scores, labels = scores.detach().float(), labels.detach().float()
        valid = labels.sum(1) > 0
        self.skipped += int((~valid).sum())
        s, y = scores[valid], labels[valid]
        if len(s):
            self.ap_sum += row_average_precision(s, y).double().sum()
            self.count += len(s)
            for i, k in enumerate(self.precision_at):  # the skipped videos' P@k is 0: nothing to add for them
                self.p_sum[i] += precision_recall_at_k(s, y, k)[0].double().sum()
            for i, k in enumerate(self.recall_at):
                self.r_sum[i] += precision_recall_at_k(s, y, k)[1].double().sum()
        self.scores.append(scores)
        self.labels.append(labels.to(torch.uint8))

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics over every video seen (all processes' sums). With no video holding a positive tag sample mAP
        and R@k are NaN, as label mAP is with no tag holding a positive video: a mean over no video, not a score of
        0; P@k is then 0 (every video scored, none with a hit). Without any video (no update) all of them are NaN."""
        n = self.count.double()  # videos with a positive tag; 0 -> the sums (also 0) give NaN
        n_all = (self.count + self.skipped).double()  # every evaluation video: the P@k denominator
        out = {"sample_mAP": (self.ap_sum / n).float()}
        if isinstance(self.scores, list) and not self.scores:  # nothing was scored: no matrix to concatenate
            out["label_mAP"] = torch.tensor(float("nan"), device=self.ap_sum.device)
        else:
            scores = self.scores if isinstance(self.scores, torch.Tensor) else torch.cat(self.scores)
            labels = self.labels if isinstance(self.labels, torch.Tensor) else torch.cat(self.labels)
            out["label_mAP"] = label_map(scores, labels.float())
        for i, k in enumerate(self.precision_at):
            out[f"P@{k}"] = (self.p_sum[i] / n_all).float()  # a video without a positive adds 0 to the sum
        for i, k in enumerate(self.recall_at):
            out[f"R@{k}"] = (self.r_sum[i] / n).float()
        return out
