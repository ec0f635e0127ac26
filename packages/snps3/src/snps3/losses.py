"""SNP-S3 losses (spec §3.4): MoCo global contrast (L1), MIL-NCE (L2 and LVWM, and L1 without MoCo), MLM, ITM, QA.

Each loss is a pure function (the equation in its docstring) plus an ``nn.Module`` that gathers across ranks through
mmzoo.distributed where the loss needs negatives from other samples. ``reduction="none"`` returns the terms the mean
is taken over (one per sample, per token for MLM) instead of the mean: evaluation keeps them with the samples'
dataset indices, so a sample that a distributed sampler repeats counts once.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_range
from mmzoo.distributed import gather_no_grad, gather_with_grad, rank_offset_labels
from torch import nn

__all__ = [
    "milnce_loss",
    "moco_contrastive_loss",
    "word_clip_similarity",
    "masked_lm_loss",
    "itm_loss",
    "qa_loss",
    "MILNCELoss",
    "LVWMLoss",
    "MoCoQueue",
    "MoCoLoss",
    "MaskedLMLoss",
    "ITMLoss",
    "QALoss",
]

Reduction = Literal["mean", "none"]


def _check_reduction(reduction: str) -> None:
    check_choice("reduction", reduction, get_args(Reduction))  # unknown: the mean in some losses, the terms in others


def milnce_loss(sim: torch.Tensor, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """MIL-NCE of the official code (spec §3.4 b, e), one term per video j, with c* = ⌊T/2⌋:

        L = (1/B) Σ_j −log( T·e^{S[j,j,c*]} / ( T·Σ_i e^{S[i,j,c*]} + Σ_{k≠j} Σ_c e^{S[j,k,c]} ) )

    The denominator mixes the column of video j (all texts against its middle clip) and the row of text j without
    the diagonal. No temperature. For T = 1 this is the level-2 loss L2 (Eq. of §3.4 b) with s = S[..., 0].

    sim: (B, B, T) S[text i, video j, clip c]; returns a scalar, or with ``reduction="none"`` the B terms (B,)
    (term j: pair j, i.e. text j and video j).
    """
    _check_reduction(reduction)
    if sim.dim() != 3 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"milnce_loss: sim must be (B, B, T), got {tuple(sim.shape)}")
    if sim.shape[0] == 0:
        raise ValueError("milnce_loss: empty batch")
    s = sim.float()
    b, _, t = s.shape
    mid = t // 2
    log_t = math.log(t)
    diag = torch.eye(b, dtype=torch.bool, device=s.device)
    col = torch.logsumexp(s[:, :, mid], dim=0) + log_t  # (B,) log T·Σ_i e^{S[i,j,c*]}
    row = torch.logsumexp(s.masked_fill(diag[:, :, None], float("-inf")).flatten(1), dim=1)  # (B,) log Σ_{k≠j,c}
    numerator = s[torch.arange(b), torch.arange(b), mid] + log_t  # (B,) log T·e^{S[j,j,c*]}
    terms = torch.logaddexp(col, row) - numerator  # (B,) −log of the fraction for pair j
    return terms if reduction == "none" else terms.mean()


def moco_contrastive_loss(
    t: torch.Tensor,
    v: torch.Tensor,
    t_key: torch.Tensor,
    v_key: torch.Tensor,
    queue_t: torch.Tensor,
    queue_v: torch.Tensor,
    tau: float = 0.05,
    reduction: Literal["mean", "none"] = "mean",
) -> dict[str, torch.Tensor]:
    """Cross-modal MoCo global contrast L1 (spec §3.4 a):

        L_t = (1/B) Σ_b [ lse({t_b·v̂_{b,c}/τ}_c ∪ {t_b·k/τ}_{k∈Q_v}) − lse({t_b·v̂_{b,c}/τ}_c) ]
        L_v = (1/(B·T)) Σ_{b,c} [ lse({v_{b,c}·t̂_b/τ} ∪ {v_{b,c}·k/τ}_{k∈Q_t}) − v_{b,c}·t̂_b/τ ]
        L1 = (L_t + L_v) / 2

    All T clips of the paired video are positives of a text; only queue negatives (no in-batch negatives).
    t (B, D), v (B, T, D) queries; t_key (B, D), v_key (B, T, D) momentum keys; queue_t, queue_v (K, D).
    ``reduction="none"``: each term per sample b (B,) (L_v's over its T clips averaged), whose mean is the above.
    """
    _check_reduction(reduction)
    t, v = t.float(), v.float()
    pos_t = torch.einsum("bd,bcd->bc", t, v_key.float()) / tau  # (B, T)  t_b·v̂_{b,c}/τ
    neg_t = t @ queue_v.float().T / tau  # (B, K)
    l_t = torch.logsumexp(torch.cat([pos_t, neg_t], 1), 1) - torch.logsumexp(pos_t, 1)  # (B,)
    pos_v = torch.einsum("bcd,bd->bc", v, t_key.float()).flatten() / tau  # (B·T,)  v_{b,c}·t̂_b/τ
    neg_v = v.flatten(0, 1) @ queue_t.float().T / tau  # (B·T, K)
    l_v = torch.logsumexp(torch.cat([pos_v[:, None], neg_v], 1), 1) - pos_v  # (B·T,)
    if reduction == "none":
        l_v = l_v.view(v.shape[0], v.shape[1]).mean(1)  # (B,) mean over the sample's T clips
    else:
        l_t, l_v = l_t.mean(), l_v.mean()
    return {"l1": (l_t + l_v) / 2, "l1_t": l_t, "l1_v": l_v}


def word_clip_similarity(words: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """LVWM similarities (spec §3.4 e step 4): S[i, j, c] = logsumexp_k( w_{i,k} · v_{j,c} ).

    words (B_t, K, D) unnormalised word features; clips (B_v, T, D) normalised clip embeddings -> (B_t, B_v, T).
    """
    dots = torch.einsum("ikd,jcd->ijck", words.float(), clips.float())  # (B_t, B_v, T, K)
    return torch.logsumexp(dots, dim=-1)  # (B_t, B_v, T)


def masked_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
) -> torch.Tensor:
    """Cross-entropy at labelled positions only (label −1 = ignore): −mean_{p: y_p ≥ 0} log softmax(z_p)[y_p].

    logits (B, L, V), labels (B, L). Returns 0 (with a graph) when nothing is labelled. ``reduction="none"``: the
    per-token terms (B, L), 0 at unlabelled positions.
    """
    _check_reduction(reduction)
    if reduction == "none":
        flat = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-1, reduction="none"
        )
        return flat.view(labels.shape)  # (B, L)
    labels = labels.reshape(-1)
    if not (labels >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels, ignore_index=-1)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
    """Video-text matching (spec §3.4 d): 2-way cross-entropy, labels 1 (matched) / 0. logits (N, 2), labels (N,);
    ``reduction="none"``: the N per-pair terms."""
    _check_reduction(reduction)
    return F.cross_entropy(logits.float(), labels, reduction=reduction)


def qa_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Open-ended QA as classification (spec §3.6): cross-entropy −log softmax(z)[y].

    target (B,) answer indices, or (B, A) multi-hot rows (multi-label lines; soft cross-entropy against the
    normalised multi-hot vector — Reconstruction). Rows with index −1 (answer outside the vocabulary) or an
    empty multi-hot row are skipped in training.
    """
    logits = logits.float()
    if target.dim() == 1:
        if not (target >= 0).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=-1)
    keep = target.sum(1) > 0
    if not keep.any():
        return logits.sum() * 0.0
    dist = target[keep].float() / target[keep].float().sum(1, keepdim=True)
    return -(dist * F.log_softmax(logits[keep], dim=-1)).sum(1).mean()


# ------------------------------------------------------------------------------------------------------ modules


def _own_rows(terms: torch.Tensor, batch: int) -> torch.Tensor:
    """This rank's B of the W·B per-sample terms of a gathered batch (its own samples: rows ``rank·B + arange(B)``),
    so that the terms of all ranks together are the W·B terms, each once."""
    return terms[rank_offset_labels(batch, terms.device)]  # (B,)


class MILNCELoss(nn.Module):
    """MIL-NCE on level-1 similarities S[t, v, c] = t_t · v_{v,c} gathered across ranks (L1 with ``with_moco=false``)."""

    def forward(self, t: torch.Tensor, v: torch.Tensor, reduction: Literal["mean", "none"] = "mean") -> torch.Tensor:
        """t (B, D), v (B, T, D) normalised level-1 embeddings of this rank -> scalar (the global-batch loss), or
        with ``reduction="none"`` the terms of this rank's B samples (B,)."""
        _check_reduction(reduction)
        t_all, v_all = gather_with_grad(t), gather_with_grad(v)  # (W·B, D), (W·B, T, D)
        sim = torch.einsum("id,jcd->ijc", t_all.float(), v_all.float())  # (W·B, W·B, T)
        if reduction == "mean":
            return milnce_loss(sim)
        return _own_rows(milnce_loss(sim, "none"), t.shape[0])


class LVWMLoss(nn.Module):
    """Local vision-word matching (spec §3.4 e): MIL-NCE over word-clip similarities gathered across ranks."""

    def forward(
        self, words: torch.Tensor, clips: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
    ) -> torch.Tensor:
        """words (B, K, D) hidden states of the chosen words; clips (B, T, D) normalised clip embeddings -> scalar,
        or with ``reduction="none"`` the terms of this rank's B samples (B,)."""
        _check_reduction(reduction)
        sim = word_clip_similarity(gather_with_grad(words), gather_with_grad(clips))  # (W·B, W·B, T)
        if reduction == "mean":
            return milnce_loss(sim)
        return _own_rows(milnce_loss(sim, "none"), words.shape[0])


class MoCoQueue(nn.Module):
    """FIFO key queue (K, D), initialised with random unit vectors (spec §3.2 item 6).

    ``enqueue(keys)`` writes rows ``[e − n, e)`` with ``e = min(ptr + n, K)`` and sets ``ptr = e mod K`` (at the
    wrap the last n rows are overwritten, as in the official code); a batch with NaN keys is not enqueued.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> bool:
        """keys (n, D) (already gathered over ranks); returns False when skipped because of NaN."""
        if torch.isnan(keys).any():
            return False
        size, n = self.keys.shape[0], keys.shape[0]
        if n > size:
            keys, n = keys[-size:], size
        end = min(int(self.ptr) + n, size)
        self.keys[end - n : end] = keys.to(self.keys.dtype)
        self.ptr.fill_(end % size)
        return True


class MoCoLoss(nn.Module):
    """L1 with momentum keys and two queues (text keys Q_t, clip keys Q_v); temperature τ (spec §3.4 a)."""

    def __init__(self, queue_size: int = 16384, dim: int = 768, temperature: float = 0.05):
        super().__init__()
        check_range("model.moco_queue_size", queue_size, ge=1, integer=True)
        check_range("model.temperature", temperature, gt=0)  # the logits are divided by it
        self.temperature = temperature
        self.queue_t = MoCoQueue(queue_size, dim)
        self.queue_v = MoCoQueue(queue_size, dim)

    def forward(
        self,
        t: torch.Tensor,
        v: torch.Tensor,
        t_key: torch.Tensor,
        v_key: torch.Tensor,
        reduction: Literal["mean", "none"] = "mean",
    ) -> dict[str, torch.Tensor]:
        """t (B, D), v (B, T, D) queries; t_key (B, D), v_key (B, T, D) momentum keys -> {l1, l1_t, l1_v}
        (scalars, or per sample (B,) with ``reduction="none"``)."""
        return moco_contrastive_loss(
            t, v, t_key, v_key, self.queue_t.keys.clone(), self.queue_v.keys.clone(), self.temperature, reduction
        )

    @torch.no_grad()
    def enqueue(self, t_key: torch.Tensor, v_key: torch.Tensor) -> None:
        """Gather this step's keys over ranks and push them: text keys (B, D) and every clip key (B·T, D)."""
        self.queue_t.enqueue(gather_no_grad(t_key))
        self.queue_v.enqueue(gather_no_grad(v_key).flatten(0, 1))


class MaskedLMLoss(nn.Module):
    """Module wrapper of :func:`masked_lm_loss`."""

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
    ) -> torch.Tensor:
        return masked_lm_loss(logits, labels, reduction)


class ITMLoss(nn.Module):
    """Module wrapper of :func:`itm_loss`."""

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
    ) -> torch.Tensor:
        return itm_loss(logits, labels, reduction)


class QALoss(nn.Module):
    """Module wrapper of :func:`qa_loss`."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return qa_loss(logits, target)
