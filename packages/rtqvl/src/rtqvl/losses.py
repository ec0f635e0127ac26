"""RTQ's losses (spec §3.2): BLIP ITC with momentum distillation and queues, ITM with hard negatives, label-smoothed
captioning / answer losses and the multiple-choice distillation loss. Each is a pure function plus a module.

The paper reuses BLIP's objectives and numbers no equations for them; docstrings cite the spec section.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmzoo.config import check_range
from mmzoo.distributed import gather_no_grad
from torch import nn

__all__ = [
    "itc_loss",
    "ITCLoss",
    "itm_negative_indices",
    "itm_loss",
    "ITMLoss",
    "caption_loss",
    "CaptionLoss",
    "answer_loss",
    "AnswerLoss",
    "multiple_choice_loss",
    "MultipleChoiceLoss",
    "alpha_ramp",
]


def alpha_ramp(alpha: float, epoch: int, step_in_epoch: int, steps_per_epoch: int, ramp_epochs: float) -> float:
    """Distillation weight ramp α·min(1, (epoch·N + i) / (ramp_epochs·N)) (spec §3.2a: 2 epochs; §3.2d: 1 epoch)."""
    if ramp_epochs <= 0 or steps_per_epoch <= 0:
        return alpha
    return alpha * min(1.0, (epoch * steps_per_epoch + step_in_epoch) / (ramp_epochs * steps_per_epoch))


def _soft_xent(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """−(1/B) Σ_i Σ_j q_ij log softmax_j s_ij, in float32."""
    return -(F.log_softmax(logits.float(), dim=1) * targets.float()).sum(dim=1).mean()


def itc_loss(
    video_feat: torch.Tensor,
    text_feat: torch.Tensor,
    video_keys: torch.Tensor,
    text_keys: torch.Tensor,
    video_feat_m: torch.Tensor,
    text_feat_m: torch.Tensor,
    idx: torch.Tensor,
    key_idx: torch.Tensor,
    temp: torch.Tensor | float,
    alpha: float,
) -> torch.Tensor:
    """Video-text contrastive loss with momentum distillation (spec §3.2a, BLIP ITC):

        s^{v2t}_ij = v_i·t̂_j / τ,  s^{t2v}_ij = t_i·v̂_j / τ,  y_ij = 1[idx_i = idx_j] / Σ_j 1[idx_i = idx_j],
        q = α·softmax(s^m) + (1 − α)·y,
        L = ½ [ −(1/B) Σ_i Σ_j q^{v2t}_ij log softmax_j s^{v2t}_ij − (1/B) Σ_i Σ_j q^{t2v}_ij log softmax_j s^{t2v}_ij ].

    Args:
        video_feat, text_feat: (B, E) L2-normalised online features v_i, t_i (the rows).
        video_keys, text_keys: (K, E) v̂, t̂ = [momentum batch features ; queue] (the columns).
        video_feat_m, text_feat_m: (B, E) momentum features of the rows (for the soft targets).
        idx: (B,) video index of each row; key_idx: (K,) video index of each column (−100 = never a positive).
        temp: τ; alpha: α.
    """
    pos = (idx.view(-1, 1) == key_idx.view(1, -1)).float()  # (B, K)
    if (pos.sum(dim=1) == 0).any():
        raise ValueError("itc_loss: a row has no positive column; the keys must contain the batch's own features")
    y = pos / pos.sum(dim=1, keepdim=True)  # (B, K) hard targets
    with torch.no_grad():
        q_v2t = alpha * F.softmax(video_feat_m @ text_keys.T / temp, dim=1) + (1 - alpha) * y  # (B, K)
        q_t2v = alpha * F.softmax(text_feat_m @ video_keys.T / temp, dim=1) + (1 - alpha) * y
    s_v2t = video_feat @ text_keys.T / temp  # (B, K)
    s_t2v = text_feat @ video_keys.T / temp  # (B, K)
    return 0.5 * (_soft_xent(s_v2t, q_v2t) + _soft_xent(s_t2v, q_t2v))


class ITCLoss(nn.Module):
    """ITC over [all-gathered momentum batch ; queue] keys.

    Deviation: BLIP/RTQ use the *local* momentum batch as keys (other ranks' features reach a rank only through the
    queue one step later); here the momentum features are all-gathered (no gradient is needed: they are momentum
    features), so N processes compute exactly the loss of one process on the whole batch. On one device the two
    are identical.
    """

    def forward(
        self,
        video_feat: torch.Tensor,
        text_feat: torch.Tensor,
        video_feat_m: torch.Tensor,
        text_feat_m: torch.Tensor,
        idx: torch.Tensor,
        video_queue: torch.Tensor,
        text_queue: torch.Tensor,
        idx_queue: torch.Tensor,
        temp: torch.Tensor | float,
        alpha: float,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Returns (loss, (gathered video_feat_m, text_feat_m, idx)) — the latter to enqueue."""
        v_all = gather_no_grad(video_feat_m)  # (W·B, E)
        t_all = gather_no_grad(text_feat_m)
        i_all = gather_no_grad(idx)  # (W·B,)
        video_keys = torch.cat([v_all, video_queue.T.to(v_all.dtype)], dim=0)  # (W·B + Q, E)
        text_keys = torch.cat([t_all, text_queue.T.to(t_all.dtype)], dim=0)
        key_idx = torch.cat([i_all, idx_queue.view(-1)], dim=0)
        loss = itc_loss(
            video_feat, text_feat, video_keys, text_keys, video_feat_m, text_feat_m, idx, key_idx, temp, alpha
        )
        return loss, (v_all, t_all, i_all)


@torch.no_grad()
def _negative_weights(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """softmax(logits) with the same-video entries set to 0 (spec §3.2a), (B, B). A row whose negatives all underflow
    to 0 (the positive's logit far above theirs: |sim/τ| ~ 1e2–1e3 with a small learned τ) takes the softmax over
    its admissible entries instead, the same distribution once multinomial renormalises; the other rows keep the
    plain form, draw for draw."""
    w = F.softmax(logits, dim=1).masked_fill(same, 0)
    empty = w.sum(dim=1) <= 0
    if empty.any():
        w[empty] = F.softmax(logits[empty].masked_fill(same[empty], float("-inf")), dim=1)
    return w


def itm_negative_indices(
    sim_t2v: torch.Tensor, idx: torch.Tensor, temp: torch.Tensor | float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-negative sampling for ITM (spec §3.2a): for each text one video and for each video one text of the local
    batch, drawn ∝ softmax(sim/τ) with same-video entries zeroed.

    sim_t2v (B, B) local text×video similarities; idx (B,) video index. Returns (neg video per text (B,),
    neg text per video (B,)).

    Raises:
        ValueError: a row has no admissible negative (the batch holds captions of only one video).
    """
    same = idx.view(-1, 1) == idx.view(1, -1)  # (B, B)
    alone = same.all(dim=1)
    if alone.any():
        video = int(idx[alone.nonzero()[0, 0]])
        raise ValueError(
            f"ITM negative sampling: the batch of {len(idx)} caption(s) holds only one video (video index {video}), "
            "so no caption has a negative video to be matched against; raise data.batch_size (at least 2) and "
            "shuffle the training captions"
        )
    w_t2v = _negative_weights(sim_t2v.float() / temp, same)  # (B, B)
    w_v2t = _negative_weights(sim_t2v.T.float() / temp, same)
    neg_video = torch.multinomial(w_t2v.cpu(), 1, generator=generator).view(-1).to(idx.device)
    neg_text = torch.multinomial(w_v2t.cpu(), 1, generator=generator).view(-1).to(idx.device)
    return neg_video, neg_text


def itm_loss(logits: torch.Tensor) -> torch.Tensor:
    """Video-text matching loss (spec §3.2a): CE over logits (3B, 2) with labels [1]·B + [0]·2B
    (B positives, then B text-with-negative-video, then B video-with-negative-text)."""
    if logits.shape[0] % 3:
        raise ValueError(f"itm_loss: expected 3B rows (pos, neg video, neg text), got {logits.shape[0]}")
    b = logits.shape[0] // 3
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
    return F.cross_entropy(logits.float(), labels)


class ITMLoss(nn.Module):
    """Module form of :func:`itm_loss`."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return itm_loss(logits)


def _shifted_targets(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token targets (B, L−1): ids[:, 1:], padding → −100 (the BOS position is never a target)."""
    return ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)


def caption_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.1):
    """Captioning LM loss (spec §3.2b): token-level CE with label smoothing 0.1, mean over target tokens; the target
    of position l is token l+1; BOS and padding are not targets.

    logits (B, L, V); ids, mask (B, L).
    """
    targets = _shifted_targets(ids, mask)  # (B, L−1)
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


class CaptionLoss(nn.Module):
    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        check_range("model.label_smoothing", label_smoothing, ge=0, le=1)
        self.label_smoothing = label_smoothing

    def forward(self, logits, ids, mask):
        return caption_loss(logits, ids, mask, self.label_smoothing)


def answer_loss(
    logits: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Open-ended QA answer loss (spec §3.2c): per sample the *sum* over answer tokens of label-smoothed CE, times the
    sample weight, summed over samples and divided by the batch size.

    logits (B, L, V); ids, mask (B, L); weights (B,) (default 1).
    """
    b = logits.shape[0]
    targets = _shifted_targets(ids, mask)  # (B, L−1)
    per_tok = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
        reduction="none",
    ).view(b, -1)  # (B, L−1), zeros at ignored positions
    per_sample = per_tok.sum(dim=1)  # (B,)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.dtype)
    return per_sample.sum() / b


class AnswerLoss(nn.Module):
    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        check_range("model.label_smoothing", label_smoothing, ge=0, le=1)
        self.label_smoothing = label_smoothing

    def forward(self, logits, ids, mask, weights=None):
        return answer_loss(logits, ids, mask, weights, self.label_smoothing)


def multiple_choice_loss(
    logits: torch.Tensor, logits_m: torch.Tensor, labels: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Multiple-choice QA with momentum distillation (spec §3.2d):

        L = (1 − α)·CE(logits, label) − α·mean_b Σ_k softmax(logits^m)_bk · log softmax(logits)_bk.

    logits, logits_m (B, K); labels (B,).
    """
    ce = F.cross_entropy(logits.float(), labels)
    distill = -(F.softmax(logits_m.float(), dim=1) * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
    return (1 - alpha) * ce + alpha * distill


class MultipleChoiceLoss(nn.Module):
    def forward(self, logits, logits_m, labels, alpha: float):
        return multiple_choice_loss(logits, logits_m, labels, alpha)
