"""Streaming post-processing and metrics (spec §3.9 and §5).

Post-processing of one annotation's streamed scores (T', 3): :func:`median_filter3`, :func:`downsample_scores`,
:func:`proposal_grid`, :func:`temporal_nms`, all chained in :func:`streaming_proposals`.

Metrics: frame-level AP / calibrated AP (:func:`average_precision`, :func:`calibrated_average_precision`) of
p_sem against the (extended) moment, and recall R@n,IoU=m (:func:`recall_hits`). :class:`StreamingGroundingMetrics`
accumulates a few numbers per annotation (deduplicated by annotation index, so DDP padding is not counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from mmzoo.config import check_range
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_average_precision

__all__ = [
    "GroundingEvalConfig",
    "median_filter3",
    "downsample_scores",
    "proposal_grid",
    "temporal_iou",
    "temporal_nms",
    "streaming_proposals",
    "frame_labels",
    "average_precision",
    "calibrated_average_precision",
    "recall_hits",
    "evaluate_annotation",
    "StreamingGroundingMetrics",
]


@dataclass
class GroundingEvalConfig:
    """Post-processing and metric settings (official defaults for ActivityNet Captions / TACoS, spec §3.9, §5)."""

    min_num_segments: int = 128
    """Smoothing and downsampling run only when the streamed length T' exceeds this (official 128)."""
    downsample_stride: int = 4
    """n_seg = max(min_num_segments, ⌊T'/stride⌋) (ANet/TACoS 4, MAD 1)."""
    group_size: int = 4
    """g of the 2D-TAN-style sparse proposal grid (ANet/TACoS 4, MAD 2)."""
    max_proposal_len: int | None = None
    """Longest proposal k = e − s in (downsampled) steps; None = unlimited (ANet/TACoS), MAD 128."""
    nms_threshold: float = 0.5
    """Temporal NMS IoU threshold (ANet/TACoS 0.5, MAD 0.3)."""
    recall_at: list[int] = field(default_factory=lambda: [1, 5])
    """n of R@n (ANet/TACoS [1, 5], MAD [1, 5, 10, 50, 100]); NMS keeps max(recall_at) proposals."""
    iou_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    """m of R@n,IoU=m (ANet/TACoS [0.3, 0.5, 0.7], MAD [0.1, 0.3, 0.5]); success needs IoU strictly > m."""
    map_label_extension: float = 1.0
    """ρ: frames within ρ·ℓ of the moment count as positive for (c)AP. Official default 1.0; 0 = strict moment."""
    chunk_interval: int = 1
    """Stream every k-th frame at test time (ANet/TACoS 1, MAD 4)."""
    median_filter: bool = True
    """Median-filter (window 3) the streamed scores before downsampling (official)."""
    strict_iou: bool = True
    """R@n,IoU=m counts a moment when its IoU is strictly greater than m (official); false counts IoU ≥ m."""

    def __post_init__(self) -> None:
        if not self.recall_at:
            raise ValueError(f"model.evaluation.recall_at={self.recall_at} must list positive integers")
        for n in self.recall_at:
            check_range("model.evaluation.recall_at", n, ge=1, integer=True)
        for key in ("group_size", "downsample_stride", "chunk_interval"):
            check_range(f"model.evaluation.{key}", getattr(self, key), ge=1, integer=True)
        check_range("model.evaluation.min_num_segments", self.min_num_segments, ge=0, integer=True)
        if self.max_proposal_len is not None:  # a negative length would leave no proposal at all
            check_range("model.evaluation.max_proposal_len", self.max_proposal_len, ge=0, integer=True)
        # IoU > threshold suppresses: 1 or more switches NMS off, a negative one keeps a single moment
        check_range("model.evaluation.nms_threshold", self.nms_threshold, ge=0)
        for m in self.iou_thresholds:  # success needs IoU > m: m >= 1 never succeeds, m < 0 always does
            check_range("model.evaluation.iou_thresholds", m, ge=0, lt=1)
        check_range("model.evaluation.map_label_extension", self.map_label_extension, ge=0)


def median_filter3(x: torch.Tensor) -> torch.Tensor:
    """Median filter of window 3 along dim 0 of (T, C), zero-padded at both ends (as ``scipy.signal.medfilt``)."""
    padded = torch.cat([x.new_zeros(1, *x.shape[1:]), x, x.new_zeros(1, *x.shape[1:])])  # (T+2, C)
    windows = torch.stack([padded[:-2], padded[1:-1], padded[2:]], 0)  # (3, T, C)
    return windows.median(0).values


def downsample_scores(scores: torch.Tensor, cfg: GroundingEvalConfig) -> torch.Tensor:
    """Spec §3.9 step 2: for T' > min_num_segments, median filter then resample to n_seg = max(min, ⌊T'/stride⌋)
    rows at round_down(linspace(0, T'−1, n_seg)); shorter sequences are returned untouched."""
    T = scores.shape[0]
    if T <= cfg.min_num_segments:
        return scores
    if cfg.median_filter:
        scores = median_filter3(scores)
    n_seg = max(cfg.min_num_segments, T // cfg.downsample_stride)
    if n_seg != T:
        # numpy's linspace, truncated, as the official evaluator: an index that is an integer in exact arithmetic can
        # come out one ulp low there (T' = 556, n_seg = 139: 92·555/138 = 370 gives 369); torch.linspace rounds
        # differently and would pick another row for ~7 % of lengths
        idx = torch.from_numpy(np.linspace(0, T - 1, n_seg).astype(np.int64)).to(scores.device)
        scores = scores[idx]
    return scores


def proposal_grid(length: int, group_size: int, max_proposal_len: int | None = None) -> torch.Tensor:
    """2D-TAN-style sparse proposal grid (spec §3.9 step 3) over ``length`` steps -> (P, 2) long (start, end).

    Lengths k = e − s: 0 … 2g−1 with start stride 1, then blocks of g lengths whose step and start stride double
    every block (g = 4: 9,11,13,15 stride 2; 19,…,31 stride 4; …). Only e = s + k < length is kept.
    """
    pairs: list[tuple[int, int]] = [(k, 1) for k in range(2 * group_size)]
    step, k = 2, 2 * group_size - 1
    while k + step < length:
        for _ in range(group_size):
            k += step
            pairs.append((k, step))
        step *= 2
    out = []
    for k, stride in pairs:
        if k >= length or (max_proposal_len is not None and k > max_proposal_len):
            continue
        starts = torch.arange(0, length - k, stride)
        out.append(torch.stack([starts, starts + k], 1))
    return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.long)


def temporal_iou(segments: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (P, 2) segments with one (2,) segment: max(0, min(e1,e2) − max(s1,s2)) / (max(e1,e2) − min(s1,s2))."""
    inter = (torch.minimum(segments[:, 1], target[1]) - torch.maximum(segments[:, 0], target[0])).clamp(min=0)
    union = torch.maximum(segments[:, 1], target[1]) - torch.minimum(segments[:, 0], target[0])
    return inter / union.clamp(min=1e-12)


def temporal_nms(segments: torch.Tensor, scores: torch.Tensor, threshold: float, top_k: int) -> torch.Tensor:
    """Greedy temporal NMS: visit by descending score, drop any segment whose IoU with a kept one exceeds
    ``threshold``; stop after ``top_k`` kept. Returns the kept indices (≤ top_k,) in descending score order."""
    order = torch.argsort(scores, descending=True, stable=True)
    keep: list[int] = []
    for i in order.tolist():
        if keep and bool((temporal_iou(segments[keep], segments[i]) > threshold).any()):
            continue
        keep.append(i)
        if len(keep) >= top_k:
            break
    return torch.tensor(keep, dtype=torch.long)


def streaming_proposals(scores: torch.Tensor, duration: float, cfg: GroundingEvalConfig) -> torch.Tensor:
    """One annotation's streamed probabilities (T', 3) -> ranked moments (K, 3): (start_sec, end_sec, score)
    after smoothing/downsampling, the proposal grid (score p_start[s]·p_end[e]) and NMS (spec §3.9)."""
    scores = downsample_scores(scores.float(), cfg)
    T = scores.shape[0]
    grid = proposal_grid(T, cfg.group_size, cfg.max_proposal_len)  # (P, 2)
    if len(grid) == 0:
        return scores.new_zeros(0, 3)
    prop_scores = scores[grid[:, 0], 0] * scores[grid[:, 1], 1]  # p_start[s] · p_end[e]
    times = grid.to(scores.dtype) / max(T - 1, 1) * duration  # (P, 2) seconds
    keep = temporal_nms(times, prop_scores, cfg.nms_threshold, max(cfg.recall_at))
    return torch.cat([times[keep], prop_scores[keep, None]], 1)


def frame_labels(
    start: float, end: float, duration: float, num_frames: int, extension: float, chunk_interval: int = 1
) -> torch.Tensor:
    """Binary frame ground truth of the official evaluator (spec §5): s* = τ_s/D·(N−1), e* likewise, ℓ = e*−s*;
    frames max(⌊s*−ρℓ⌋, 0) … min(⌊e*+ρℓ⌋, N−1) inclusive are positive; then subsampled [::chunk_interval]."""
    s = start / duration * (num_frames - 1)
    e = end / duration * (num_frames - 1)
    ext = extension * (e - s)
    lo, hi = max(math.floor(s - ext), 0), min(math.floor(e + ext), num_frames - 1)
    labels = torch.zeros(num_frames, dtype=torch.long)
    labels[lo : hi + 1] = 1
    return labels[::chunk_interval]


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Step-wise AP (scikit-learn's definition, via torchmetrics); 1.0 when there is no positive (official)."""
    if int(labels.sum()) == 0:
        return 1.0
    return float(binary_average_precision(scores.float(), labels.long()))


def calibrated_average_precision(
    scores: torch.Tensor, labels: torch.Tensor, eps: float = torch.finfo(torch.float64).eps
) -> float:
    """Calibrated AP (online action detection, spec §5): sort by descending score, w = #neg/#pos,
    cPrec_k = TP_k / (TP_k + FP_k / w);  cAP = (1/#pos) Σ_{k positive} cPrec_k. No positive (or NaN) -> 1.0.

    ``eps`` guards the two denominators of cPrec only and is the float64 machine epsilon, as in the official
    evaluator: a larger one visibly shifts cAP when almost every frame is positive (w = #neg/#pos near 0, common
    with the official label extension ρ = 1), e.g. 1e-5 moved it by ~1e-3 with 1 negative among 500 frames."""
    pos = int(labels.sum())
    if pos == 0:
        return 1.0
    order = torch.argsort(scores.float(), descending=True, stable=True)
    y = labels[order].double()
    tp = y.cumsum(0)
    fp = (1 - y).cumsum(0)
    w = (len(y) - pos) / pos
    cprec = tp / (tp + fp / (w + eps) + eps)
    value = float((cprec * y).sum() / pos)
    return 1.0 if math.isnan(value) else value


def recall_hits(
    moments: torch.Tensor,
    target: tuple[float, float],
    recall_at: list[int],
    iou_thresholds: list[float],
    strict: bool = True,
) -> torch.Tensor:
    """(len(recall_at), len(iou_thresholds)) 0/1: whether one of the first n moments has IoU > m (``strict``, the
    official rule) or IoU ≥ m."""
    out = torch.zeros(len(recall_at), len(iou_thresholds))
    if len(moments) == 0:
        return out
    ious = temporal_iou(moments[:, :2].double(), torch.tensor(target, dtype=torch.float64))  # (K,)
    for i, n in enumerate(recall_at):
        best = ious[:n].max()
        for j, m in enumerate(iou_thresholds):
            out[i, j] = float(best > m if strict else best >= m)
    return out


def evaluate_annotation(
    scores: torch.Tensor, duration: float, target: tuple[float, float], num_frames: int, cfg: GroundingEvalConfig
) -> dict[str, torch.Tensor | float]:
    """All metrics of one annotation from its streamed probabilities (T', 3) in time order."""
    labels = frame_labels(target[0], target[1], duration, num_frames, cfg.map_label_extension, cfg.chunk_interval)
    if len(labels) != scores.shape[0]:
        raise ValueError(f"streamed scores have {scores.shape[0]} steps, expected {len(labels)} (N={num_frames})")
    moments = streaming_proposals(scores, duration, cfg)
    return {
        "ap": average_precision(scores[:, 2], labels),
        "cap": calibrated_average_precision(scores[:, 2], labels),
        "hits": recall_hits(moments, target, cfg.recall_at, cfg.iou_thresholds, cfg.strict_iou),
    }


class StreamingGroundingMetrics(Metric):
    """R@n,IoU=m, mAP and mcAP over annotations (spec §5).

    ``update(scores, durations, targets, num_frames, indices)`` takes, per annotation, the full streamed score
    array (T', 3) in time order; each annotation is post-processed at once and only its per-annotation results
    (hits, AP, cAP: a few numbers) are kept in ``cat`` list states, so memory stays small however long the videos.

    ``indices`` are unique annotation indices (the evaluation batches carry ``anno_index``). Under DDP the
    distributed sampler pads the split with repeated annotations so every rank gets as many; ``compute()`` keeps
    one result per index, so every annotation counts exactly once (as in one process). An index < 0 (the default
    when ``indices`` is omitted) is never deduplicated.

    ``compute()`` returns ``{"R@n,IoU=m": …, "mAP": …, "mcAP": …}`` (recalls and APs in [0, 1]).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, cfg: GroundingEvalConfig | None = None):
        super().__init__()
        self.cfg = cfg or GroundingEvalConfig()
        self.add_state("indices", [], dist_reduce_fx="cat")
        self.add_state("hits", [], dist_reduce_fx="cat")
        self.add_state("ap", [], dist_reduce_fx="cat")
        self.add_state("cap", [], dist_reduce_fx="cat")

    def update(
        self,
        scores: list[torch.Tensor],
        durations: list[float],
        targets: list[tuple[float, float]],
        num_frames: list[int],
        indices: list[int] | None = None,
    ) -> None:
        indices = [-1] * len(scores) if indices is None else [int(i) for i in indices]
        for s, d, t, n, i in zip(scores, durations, targets, num_frames, indices, strict=True):
            r = evaluate_annotation(s.detach().cpu(), float(d), (float(t[0]), float(t[1])), int(n), self.cfg)
            self.indices.append(torch.tensor([i], dtype=torch.long, device=self.device))
            self.hits.append(r["hits"].to(self.device, torch.float32).unsqueeze(0))  # (1, len(n), len(m))
            self.ap.append(torch.tensor([r["ap"]], dtype=torch.float64, device=self.device))
            self.cap.append(torch.tensor([r["cap"]], dtype=torch.float64, device=self.device))

    @staticmethod
    def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return torch.cat(state) if isinstance(state, list) else state

    def compute(self) -> dict[str, torch.Tensor]:
        R, M = len(self.cfg.recall_at), len(self.cfg.iou_thresholds)
        if isinstance(self.indices, list) and not self.indices:
            indices = torch.zeros(0, dtype=torch.long)
            hits, ap, cap = (
                torch.zeros(0, R, M),
                torch.zeros(0, dtype=torch.float64),
                torch.zeros(0, dtype=torch.float64),
            )
        else:
            indices, hits = self._cat(self.indices), self._cat(self.hits).reshape(-1, R, M)
            ap, cap = self._cat(self.ap), self._cat(self.cap)
        keep = torch.ones(len(indices), dtype=torch.bool, device=indices.device)
        seen: set[int] = set()
        for k, i in enumerate(indices.tolist()):  # one result per annotation index (drops DDP padding repeats)
            if i >= 0:
                keep[k] = i not in seen
                seen.add(i)
        count = keep.sum().clamp(min=1)
        hits_sum = hits[keep].sum(0)
        out = {}
        for i, n in enumerate(self.cfg.recall_at):
            for j, m in enumerate(self.cfg.iou_thresholds):
                out[f"R@{n},IoU={m:g}"] = hits_sum[i, j] / count
        out["mAP"] = (ap[keep].sum() / count).float()
        out["mcAP"] = (cap[keep].sum() / count).float()
        return out
