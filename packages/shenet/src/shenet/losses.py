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
from mmzoo.distributed import gather_no_grad, gather_with_grad, rank_and_world, rank_offset_labels
from torch import nn

from shenet.models import TextFeatures, VideoFeatures

__all__ = ["symmetric_infonce_loss", "SHENetContrastiveLoss", "gather_features"]


def symmetric_infonce_loss(
    sim_t2v: torch.Tensor, sim_v2t: torch.Tensor, logit_scale: torch.Tensor | float, labels: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE (spec §3.7):

        L = ½ [ −1/B Σ_i log softmax_k(λ S(i,k))[i]  −  1/B Σ_k log softmax_i(λ S(i,k))[k] ]

    sim_t2v (B, N): this rank's B texts against all N videos (row i's positive at ``labels[i]``);
    sim_v2t (B, N): this rank's B videos against all N texts (the transposed columns of S);
    logit_scale λ; labels (B,) long. On one process N = B, ``sim_v2t = sim_t2v.T`` and ``labels = arange(B)``.
    """
    if sim_t2v.dim() != 2 or sim_t2v.shape != sim_v2t.shape or sim_t2v.shape[0] != labels.shape[0]:
        raise ValueError(
            f"symmetric_infonce_loss: sim_t2v {tuple(sim_t2v.shape)}, sim_v2t {tuple(sim_v2t.shape)} "
            f"and labels {tuple(labels.shape)} must be (B, N), (B, N), (B,)"
        )
    if sim_t2v.shape[0] == 0:
        raise ValueError("symmetric_infonce_loss: empty batch")
    t2v = F.cross_entropy(logit_scale * sim_t2v.float(), labels)  # −1/B Σ_i log softmax_k(λ S)[i]
    v2t = F.cross_entropy(logit_scale * sim_v2t.float(), labels)  # −1/B Σ_k log softmax_i(λ S)[k]
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

    Args:
        aux_weight: β for the verb- and noun-level terms (spec §3.7; 0 by default).
    """

    def __init__(self, aux_weight: float = 0.0):
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight={aux_weight} must be >= 0")
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
        else:
            text_all, video_all = gather_features(text, video)
            rows = similarity(text, video_all)  # (B, W·B): my texts vs all videos
            cols = {k: v.T for k, v in similarity(text_all, video).items()}  # (B, W·B): my videos vs all texts
        out = {"loss_S": symmetric_infonce_loss(rows["S"], cols["S"], logit_scale, labels)}
        total = out["loss_S"]
        if self.aux_weight > 0:
            for key in ("S2", "S3"):
                if key in rows:
                    out[f"loss_{key}"] = symmetric_infonce_loss(rows[key], cols[key], logit_scale, labels)
                    total = total + self.aux_weight * out[f"loss_{key}"]
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"SHE-Net loss is not finite ({float(total)}): check the learning rate, the "
                "logit scale and the input frames"
            )
        out["loss"] = total
        return out
