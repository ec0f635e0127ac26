"""SHE-Net's training loss (spec §3.7): symmetric InfoNCE on the text-video similarity matrix, plus optional
per-level auxiliary terms.

Reconstruction: the paper's loss is not transcribed; this is CLIP4Clip's symmetric cross-entropy with CLIP's
learnable logit scale, and ``aux_weight`` β (default 0) adds the same loss on the verb (S2) and noun (S3) level
similarities — the hook for a multi-level ("hierarchical") contrastive loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from mmzoo.config import check_range
from mmzoo.distributed import gather_no_grad, gather_with_grad, rank_and_world, rank_offset_labels
from torch import nn

from shenet.models import TextFeatures, VideoFeatures

__all__ = ["symmetric_infonce_loss", "SHENetContrastiveLoss", "gather_features"]


def symmetric_infonce_loss(
    sim_t2v: torch.Tensor,
    sim_v2t: torch.Tensor,
    logit_scale: torch.Tensor | float,
    labels: torch.Tensor,
    pair_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (spec §3.7):

        L = ½ [ −1/B Σ_i log softmax_k(λ S(i,k))[i]  −  1/B Σ_k log softmax_i(λ S(i,k))[k] ]

    sim_t2v (B, N): this rank's B texts against all N videos (row i's positive at ``labels[i]``);
    sim_v2t (B, N): this rank's B videos against all N texts (the transposed columns of S);
    logit_scale λ; labels (B,) long. On one process N = B, ``sim_v2t = sim_t2v.T`` and ``labels = arange(B)``.

    ``pair_valid`` (N,) bool, optional: False for a pair (text n, video n) whose video has no valid frame (all
    padding: an unreadable video kept by ``data.on_corrupt: skip``). Such a pair leaves the batch: its rows leave
    both sums and its text and video are nobody's negatives (their columns are left out of the softmaxes). The sums
    are still divided by B, so L is (B − #invalid)/B times the loss of the batch without those pairs, and the mean
    of the per-rank losses still equals the single-process loss. Deviation: the spec has no such case.
    """
    if sim_t2v.dim() != 2 or sim_t2v.shape != sim_v2t.shape or sim_t2v.shape[0] != labels.shape[0]:
        raise ValueError(
            f"symmetric_infonce_loss: sim_t2v {tuple(sim_t2v.shape)}, sim_v2t {tuple(sim_v2t.shape)} "
            f"and labels {tuple(labels.shape)} must be (B, N), (B, N), (B,)"
        )
    B = sim_t2v.shape[0]
    if B == 0:
        raise ValueError("symmetric_infonce_loss: empty batch")
    logits_t2v, logits_v2t = logit_scale * sim_t2v.float(), logit_scale * sim_v2t.float()  # (B, N) each
    if pair_valid is None:
        t2v = F.cross_entropy(logits_t2v, labels)  # −1/B Σ_i log softmax_k(λ S)[i]
        v2t = F.cross_entropy(logits_v2t, labels)  # −1/B Σ_k log softmax_i(λ S)[k]
        return 0.5 * (t2v + v2t)
    if pair_valid.shape != sim_t2v.shape[1:]:
        raise ValueError(
            f"symmetric_infonce_loss: pair_valid {tuple(pair_valid.shape)} must be ({sim_t2v.shape[1]},), one flag "
            "per column"
        )
    keep = pair_valid[labels]  # (B,) rows whose pair is valid
    # columns of invalid pairs leave the softmax of every kept row (which keeps its positive); the rows of invalid
    # pairs stay finite and are zeroed below, so no row is all −inf (no NaN, and no host sync from indexing)
    drop = keep[:, None] & ~pair_valid[None, :]  # (B, N)
    t2v = F.cross_entropy(logits_t2v.masked_fill(drop, float("-inf")), labels, reduction="none")  # (B,)
    v2t = F.cross_entropy(logits_v2t.masked_fill(drop, float("-inf")), labels, reduction="none")  # (B,)
    t2v = torch.where(keep, t2v, torch.zeros_like(t2v)).sum() / B  # −1/B Σ_{valid i} log softmax_k(λ S)[i]
    v2t = torch.where(keep, v2t, torch.zeros_like(v2t)).sum() / B  # −1/B Σ_{valid k} log softmax_i(λ S)[k]
    return 0.5 * (t2v + v2t)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-gather for float tensors, plain gather for masks and indices."""
    if x.is_floating_point():
        return gather_with_grad(x)
    if x.dtype == torch.bool:
        return gather_no_grad(x.to(torch.uint8)).bool()
    return gather_no_grad(x)


def gather_features(text: TextFeatures, video: VideoFeatures) -> tuple[TextFeatures, VideoFeatures]:
    """Text and video features of every rank, concatenated in rank order (with gradients), as CLIP4Clip/X-CLIP do."""
    return text.apply(_gather), video.apply(_gather)


class SHENetContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over the (gathered) batch, with optional per-level terms ``β Σ_{l=2,3} L(S_l)``.

    Each rank scores its B texts against all W·B videos and all W·B texts against its B videos (the similarity is
    text-conditioned, so both blocks are computed), with labels offset by ``rank·B``. Averaging the per-rank losses
    (as DDP does with gradients) equals the single-process loss on the whole batch.

    A pair whose video has no valid frame (``frame_mask`` all false: an unreadable video fed as padding by
    ``data.on_corrupt: skip``) is left out of every term (see :func:`symmetric_infonce_loss`); a batch of such pairs
    only gives a loss of 0.

    Args:
        aux_weight: β for the verb- and noun-level terms (spec §3.7; 0 by default), over the levels that
            ``similarity`` returns (``S2``/``S3``: those in ``model.config.levels``).
    """

    def __init__(self, aux_weight: float = 0.0):
        super().__init__()
        check_range("model.aux_weight", aux_weight, ge=0)
        self.aux_weight = aux_weight

    def forward(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        similarity: Callable[[TextFeatures, VideoFeatures], dict[str, torch.Tensor]],
        logit_scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Returns ``{"loss": total, "loss_S": main term, "loss_S2", "loss_S3" (when β > 0)}``."""
        if len(text) != len(video):
            raise ValueError(f"SHENetContrastiveLoss: {len(text)} texts but {len(video)} videos; pairs expected")
        B = len(text)
        labels = rank_offset_labels(B, text.sentence.device)
        _, world = rank_and_world()
        if world == 1:
            rows = similarity(text, video)  # each (B, B)
            cols = {k: v.T for k, v in rows.items()}
            video_all = video
        else:
            text_all, video_all = gather_features(text, video)
            rows = similarity(text, video_all)  # (B, W·B): my texts vs all videos
            cols = {k: v.T for k, v in similarity(text_all, video).items()}  # (B, W·B): my videos vs all texts
        pair_valid = video_all.frame_mask.any(-1)  # (W·B,) False: a video without any valid frame
        out = {"loss_S": symmetric_infonce_loss(rows["S"], cols["S"], logit_scale, labels, pair_valid)}
        total = out["loss_S"]
        if self.aux_weight > 0:
            for key in ("S2", "S3"):
                if key in rows:
                    out[f"loss_{key}"] = symmetric_infonce_loss(rows[key], cols[key], logit_scale, labels, pair_valid)
                    total = total + self.aux_weight * out[f"loss_{key}"]
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"SHE-Net loss is not finite ({float(total)}): check the learning rate, the "
                "logit scale and the input frames"
            )
        out["loss"] = total
        return out
