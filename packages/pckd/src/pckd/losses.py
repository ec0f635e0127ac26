"""PCKD's losses (spec §3.4–3.6): each a pure function with its equation, plus an ``nn.Module`` wrapper.

Notation: B images per batch, V = 4 rotated views, N = V·B network inputs, C classes, d_s / d_t feature widths.
The paper's PDF numbers no equations in the spec's transcription; the equations are quoted from spec §3.4–3.6.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.config import check_range
from mmzoo.distributed import gather_no_grad, gather_with_grad, is_distributed, rank_and_world
from torch import nn

__all__ = [
    "per_sample_kd_loss",
    "kd_loss",
    "feature_alignment_loss",
    "center_alignment_loss",
    "category_contrastive_loss",
    "preview_weights",
    "preview_threshold",
    "PerSampleKDLoss",
    "FeatureAlignmentLoss",
    "CenterAlignmentLoss",
    "CategoryContrastiveLoss",
    "PreviewWeights",
    "crd_nce_loss",
    "contrast_scores",
    "momentum_memory_rows",
    "class_sorted_index",
    "sample_other_class_negatives",
    "CRDLoss",
]

log = logging.getLogger(__name__)


def per_sample_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample logit KD, spec §3.4(b):  KL_i = (T²/B) Σ_c p^T_ic (log p^T_ic − log p^S_ic),  p = softmax(z/T).

    student_logits, teacher_logits (B, C) on the un-rotated views. Returns (B,); the 1/B sits inside each term,
    so ``.sum()`` is RepDistiller's batch-mean ``DistillKL(T)``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"KD: student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    b = student_logits.shape[0]
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C) log p^S
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (B, C) log p^T
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (B,) Σ_c p^T (log p^T − log p^S)
    return kl * temperature**2 / b


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Vanilla KD (Hinton; RepDistiller ``DistillKL``): T² · KL(p^T ‖ p^S) averaged over the batch. Scalar."""
    return per_sample_kd_loss(student_logits, teacher_logits, temperature).sum()


def feature_alignment_loss(projected: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Feature alignment, spec §3.4(c):  L_FA = 2 − 2 · (1/N) Σ_j cos(H(f_S,j), f_T,j).

    projected (N, d_t) = H(f_S); teacher_feat (N, d_t), detached here. Scalar in [0, 4].
    """
    if projected.shape != teacher_feat.shape:
        raise ValueError(f"L_FA: H(f_S) {tuple(projected.shape)} != f_T {tuple(teacher_feat.shape)}")
    cos = F.cosine_similarity(projected.float(), teacher_feat.detach().float(), dim=1)  # (N,)
    return 2.0 - 2.0 * cos.mean()


def center_alignment_loss(
    student_weight: torch.Tensor, student_bias: torch.Tensor, teacher_weight: torch.Tensor, teacher_bias: torch.Tensor
) -> torch.Tensor:
    """Category-center alignment, spec §3.4(d):  L_CA = mean_{c,k} (M_S[c,k] − M_T[c,k])²,  M = [W | b].

    W (C, d), b (C,). The teacher side is detached. Returns 0 (a scalar that keeps the graph) when
    d_S ≠ d_T, as the release does; the module wrapper warns once.
    """
    m_s = torch.cat([student_weight, student_bias[:, None]], dim=1)  # (C, d_s + 1)
    m_t = torch.cat([teacher_weight, teacher_bias[:, None]], dim=1).detach()  # (C, d_t + 1)
    if m_s.shape != m_t.shape:
        return m_s.sum() * 0.0
    return ((m_s - m_t) ** 2).mean()


def category_contrastive_loss(
    u: torch.Tensor,
    w: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    base_temperature: float,
    u_all: torch.Tensor | None = None,
    w_all: torch.Tensor | None = None,
    labels_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Category-center contrast, spec §3.4(e) (a supervised-contrastive loss over the profiles).

    u_j = W_S E_s(f_j) and w_j = W_T E_t(f_j) (N, C) are the similarity profiles of view j to the student's
    and the teacher's category centers; every profile carries its image's label. Over the anchor set
    A = {u_1..u_N, w_1..w_N}:

        s_ab = a·b / τ   (minus the detached row max)
        log P(b|a) = s_ab − log(Σ_{k≠a} exp(s_ak) + 1e-7)
        ℓ_a = −(τ/τ_b) · mean_{b ∈ P(a)} log P(b|a),    P(a) = {b ≠ a : y_b = y_a}
        L_CC,j = ℓ_{u_j} + ℓ_{w_j}

    Returns L_CC (N,). For several ranks, pass the gathered profiles ``u_all, w_all, labels_all`` (W·N rows)
    and this rank's row ``offset`` (rank·N): the local anchors are contrasted with every gathered profile.
    """
    if u.shape != w.shape or u.shape[0] != labels.shape[0]:
        raise ValueError(f"L_CC: u {tuple(u.shape)}, w {tuple(w.shape)}, labels {tuple(labels.shape)} disagree")
    if u_all is None:
        u_all, w_all, labels_all = u, w, labels
    n, n_all = u.shape[0], u_all.shape[0]
    anchors = torch.cat([u, w], dim=0).float()  # (2N, C)
    contrast = torch.cat([u_all, w_all], dim=0).float()  # (2N_all, C)
    anchor_labels = torch.cat([labels, labels])  # (2N,)
    contrast_labels = torch.cat([labels_all, labels_all])  # (2N_all,)
    local = torch.arange(n, device=u.device) + offset
    self_index = torch.cat([local, local + n_all])  # (2N,) column of each anchor itself

    # float32 even under autocast: matmul would otherwise run in float16/bfloat16 and the τ/τ_b ≈ 57 factor
    # magnifies its rounding (a bfloat16 product is off by about 1 % of the loss)
    with torch.autocast(u.device.type, enabled=False):
        logits = anchors @ contrast.T / temperature  # (2N, 2N_all) s_ab
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # row max over all b, for stability
    not_self = torch.ones_like(logits, dtype=torch.bool)
    not_self[torch.arange(2 * n, device=u.device), self_index] = False  # (2N, 2N_all) b ≠ a
    positive = (anchor_labels[:, None] == contrast_labels[None, :]) & not_self  # (2N, 2N_all) P(a)
    denom = (logits.exp() * not_self).sum(dim=1, keepdim=True)  # Σ_{k≠a} exp(s_ak)
    log_prob = logits - torch.log(denom + 1e-7)  # (2N, 2N_all) log P(b|a)
    mean_log_prob_pos = (log_prob * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1)  # (2N,)
    per_anchor = -(temperature / base_temperature) * mean_log_prob_pos  # (2N,) ℓ_a
    return per_anchor[:n] + per_anchor[n:]  # (N,) ℓ_{u_j} + ℓ_{w_j}


def preview_threshold(epoch: int, lam: float) -> float:
    """Preview threshold schedule, spec §3.5:  τ_e = λ^e  (epoch e counted from 1)."""
    return lam**epoch


def preview_weights(ce: torch.Tensor, epoch: int, lam: float, detach: bool = True) -> torch.Tensor:
    """Preview (difficulty-aware) weights, spec §3.5.

        γ_i = CE_i / ((1/B) Σ_k CE_k),   v_i = 1 if γ_i ≤ λ^e else exp(−γ_i²)

    ce (B,) per-sample cross-entropy of the student on the un-rotated views; epoch e ≥ 1. Returns v (B,).
    ``detach=False`` keeps the gradient through exp(−γ²) into the CE terms (the release does this for L_KD).
    """
    if epoch < 1:
        raise ValueError(f"preview epoch is counted from 1, got {epoch}")
    ce = ce.detach() if detach else ce
    gamma = ce / ce.mean().clamp_min(1e-12)  # (B,) difficulty γ_i
    hard = gamma > preview_threshold(epoch, lam)  # (B,) bool
    return torch.where(hard, torch.exp(-(gamma**2)), torch.ones_like(gamma))  # (B,) v_i


class PerSampleKDLoss(nn.Module):
    """Module wrapper of :func:`per_sample_kd_loss` holding the KD temperature T."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        check_range("model.kd_temperature", temperature, gt=0)  # the logits are divided by T
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return per_sample_kd_loss(student_logits, teacher_logits, self.temperature)


class FeatureAlignmentLoss(nn.Module):
    """Module wrapper of :func:`feature_alignment_loss`."""

    def forward(self, projected: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
        return feature_alignment_loss(projected, teacher_feat)


class CenterAlignmentLoss(nn.Module):
    """Module wrapper of :func:`center_alignment_loss`; warns once when d_S ≠ d_T (the term is then 0)."""

    def __init__(self) -> None:
        super().__init__()
        self._warned = False

    def forward(self, student_fc: nn.Linear, teacher_fc: nn.Linear) -> torch.Tensor:
        if student_fc.weight.shape != teacher_fc.weight.shape and not self._warned:
            rank_zero_warn(
                f"L_CA is inactive: student classifier {tuple(student_fc.weight.shape)} and teacher classifier "
                f"{tuple(teacher_fc.weight.shape)} differ in feature width (the official code drops it too)."
            )
            self._warned = True
        return center_alignment_loss(student_fc.weight, student_fc.bias, teacher_fc.weight, teacher_fc.bias)


class CategoryContrastiveLoss(nn.Module):
    """Module wrapper of :func:`category_contrastive_loss`: gathers the profiles of every rank (with gradients)."""

    def __init__(self, temperature: float = 4.0, base_temperature: float = 0.07) -> None:
        super().__init__()
        check_range("model.cc_temperature", temperature, gt=0)
        check_range("model.cc_base_temperature", base_temperature, gt=0)
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, u: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """u, w (N, C), labels (N,) of this rank → L_CC,j (N,) over the anchors of this rank."""
        rank, world = rank_and_world()
        if world == 1:
            return category_contrastive_loss(u, w, labels, self.temperature, self.base_temperature)
        u_all, w_all = gather_with_grad(u), gather_with_grad(w)  # (W·N, C)
        labels_all = gather_no_grad(labels)  # (W·N,)
        return category_contrastive_loss(
            u, w, labels, self.temperature, self.base_temperature, u_all, w_all, labels_all, offset=rank * u.shape[0]
        )


class PreviewWeights(nn.Module):
    """Module wrapper of :func:`preview_weights` holding λ and the detach switch."""

    def __init__(self, lam: float = 1.005, detach: bool = True) -> None:
        super().__init__()
        check_range("model.preview_lambda", lam, gt=0, lt=math.inf)
        self.lam = lam
        self.detach = detach

    def forward(self, ce: torch.Tensor, epoch: int) -> torch.Tensor:
        return preview_weights(ce, epoch, self.lam, self.detach)


# ------------------------------------------------------------------------------------------------------------------
# CRD baseline (Contrastive Representation Distillation, Tian et al., ICLR 2020; RepDistiller; spec §3.10)


def crd_nce_loss(probs: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss (the CRD paper's NCE objective, RepDistiller ``ContrastLoss``), noise distribution P_n = 1/N:

        L = −(1/B) Σ_i [ log( P_i0 / (P_i0 + m·P_n + ε) ) + Σ_{k=1..m} log( m·P_n / (P_ik + m·P_n + ε) ) ]

    probs (B, 1 + m): the normalised scores exp(s/τ)/Z of each anchor's positive (column 0) and its m negatives;
    num_data N: the size of the memory bank (the training split). Returns a scalar.
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"CRD NCE: probs must be (B, 1 + m) with m >= 1, got {tuple(probs.shape)}")
    b, m = probs.shape[0], probs.shape[1] - 1
    m_pn = m / num_data  # m·P_n
    p_pos, p_neg = probs[:, 0], probs[:, 1:]  # (B,), (B, m)
    log_d1 = torch.log(p_pos / (p_pos + m_pn + eps))  # (B,) log of the posterior that the positive is data
    log_d0 = torch.log(m_pn / (p_neg + m_pn + eps))  # (B, m) log of the posterior that each negative is noise
    return -(log_d1.sum() + log_d0.sum()) / b


def contrast_scores(
    anchor: torch.Tensor, memory: torch.Tensor, sample_idx: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Un-normalised contrast scores of CRD's memory (RepDistiller ``ContrastMemory``):  exp(⟨M[k], v_i⟩ / τ).

    anchor (B, D) unit embeddings v_i of one side; memory (N, D) the other side's bank; sample_idx (B, 1 + m) rows
    of the bank per anchor (column 0 the positive). Returns (B, 1 + m) in float32, autocast off: exp(1/0.07) ≈ 1.6e6
    overflows float16.

    Two equal ways to get the dot products, whichever reads less memory: the rows M[idx] gathered per anchor
    (B·(1 + m)·D values, RepDistiller's way), or every anchor against the whole bank, V·Mᵀ (N·D values read once,
    a (B, N) product), then the sampled columns. On CIFAR-100 (N = 50,000, m = 16,384) the product reads about
    B/3 times less and runs as one matrix product.
    """
    b, k = sample_idx.shape
    n, d = memory.shape
    with torch.autocast(anchor.device.type, enabled=False):
        if n * (d + b) <= b * k * d:
            dots = (anchor.float() @ memory.float().T).gather(1, sample_idx)  # (B, N) → (B, 1 + m)
        else:
            rows = memory[sample_idx].float()  # (B, 1 + m, D)
            dots = torch.bmm(rows, anchor.float()[:, :, None])[:, :, 0]  # (B, 1 + m) ⟨M[k], v_i⟩
        return torch.exp(dots / temperature)


def momentum_memory_rows(rows: torch.Tensor, embedding: torch.Tensor, momentum: float) -> torch.Tensor:
    """CRD memory update of the rows of a batch's images:  M[i] ← normalise(μ·M[i] + (1 − μ)·v_i).

    rows (B, D) the current rows; embedding (B, D) the batch's embeddings v_i (detached); μ the momentum.
    Returns the new rows (B, D), unit L2 norm.
    """
    return F.normalize(rows * momentum + embedding.to(rows.dtype) * (1.0 - momentum), dim=1)


def class_sorted_index(train_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training split grouped by class, for :func:`sample_other_class_negatives`.

    train_labels (N,) class ids ≥ 0. Returns ``order`` (N,) the row indices sorted by class (stable), ``start`` and
    ``count`` (C,) where each class's rows begin in ``order`` and how many they are (C = the largest id + 1).
    """
    if train_labels.dim() != 1 or train_labels.numel() == 0:
        raise ValueError(f"CRD: train_labels must be a non-empty (N,) tensor, got {tuple(train_labels.shape)}")
    if int(train_labels.min()) < 0:
        raise ValueError(f"CRD: train_labels holds a negative class id ({int(train_labels.min())})")
    count = torch.bincount(train_labels)  # (C,)
    start = torch.cumsum(count, 0) - count  # (C,)
    return torch.argsort(train_labels, stable=True), start, count


def sample_other_class_negatives(
    train_labels: torch.Tensor,
    anchor_labels: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
    class_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """m negatives per anchor, uniformly among the training images of the other classes (CRD's "exact" mode).

    train_labels (N,) the label of every memory row; anchor_labels (B,); ``class_index`` the split's
    :func:`class_sorted_index` (computed when not given). Returns (B, m) row indices, none of the anchor's class. As
    RepDistiller's sampler: without replacement when the anchor's pool (the N − n_y images of other classes) holds
    at least m images, with replacement from the pool otherwise (small datasets).

    Each anchor draws m positions in [0, pool) (:func:`_draw_positions`); a position p is the p-th image of the
    class-sorted split once the anchor's own class is skipped, so no (B, N) mask or key table is built.
    """
    order, start, count = class_sorted_index(train_labels) if class_index is None else class_index
    anchor_labels = anchor_labels.flatten()
    if bool((anchor_labels >= count.shape[0]).any()):
        raise ValueError("CRD: an anchor's class does not occur in the training split")
    own = count[anchor_labels]  # (B,) size of each anchor's class
    pool = train_labels.shape[0] - own  # (B,) size of each anchor's pool
    if bool((pool == 0).any()):
        raise ValueError("CRD: an anchor's class holds every training image; negatives need a second class")
    position = _draw_positions(pool, num_negatives, generator)  # (B, m) in [0, pool_b)
    position += (position >= start[anchor_labels][:, None]) * own[:, None]  # jump over the anchor's own class
    return order.index_select(0, position.flatten()).view(position.shape)  # (B, m)


def _uniform_positions(pool: torch.Tensor, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """(R,) pool sizes → (R, m) independent uniform draws in [0, pool_r).

    u is drawn in float64: float32's 2^24 steps would leave positions unreachable for pools above 2^24 images and,
    below it, give positions unequal shares (on ImageNet's 1.28M, 13 or 14 steps each: some rows drawn 8 % more).
    """
    u = torch.rand((pool.shape[0], m), device=pool.device, generator=generator, dtype=torch.float64)  # (R, m)
    return (u * pool[:, None]).long().clamp_max(pool[:, None] - 1)


def _draw_positions(pool: torch.Tensor, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) pool sizes → (B, m) positions in [0, pool_b): m distinct ones, uniform over the m-subsets, where
    pool_b ≥ m; uniform with replacement where pool_b < m.

    Distinct draws: where m is a small share of the pool (m ≤ pool/8, e.g. ImageNet), draw with replacement and
    redraw the repeats until none is left (whichever copy is kept, the process treats every image alike, so each
    m-subset is equally likely; a repeat is rare, so a round or two of sorting (R, m) suffices); otherwise (CIFAR:
    m ≈ pool/3) the first m of a random permutation of the pool, per anchor.
    """
    out = torch.empty((pool.shape[0], m), dtype=torch.long, device=pool.device)  # (B, m)
    distinct = pool >= m  # (B,)
    if not bool(distinct.all()):
        rows = (~distinct).nonzero()[:, 0]
        out[rows] = _uniform_positions(pool[rows], m, generator)  # with replacement
    sparse = distinct & (pool >= 8 * m)
    if bool(sparse.any()):
        rows = sparse.nonzero()[:, 0]
        draw = _uniform_positions(pool[rows], m, generator)  # (R, m)
        while True:
            draw = draw.sort(dim=1).values
            repeat = torch.zeros_like(draw, dtype=torch.bool)
            repeat[:, 1:] = draw[:, 1:] == draw[:, :-1]  # every copy of a value after its first
            if not bool(repeat.any()):
                break
            draw = torch.where(repeat, _uniform_positions(pool[rows], m, generator), draw)
        out[rows] = draw
    for row in (distinct & ~sparse).nonzero()[:, 0].tolist():
        out[row] = torch.randperm(int(pool[row]), device=pool.device, generator=generator)[:m]
    return out


class CRDLoss(nn.Module):
    """CRD's symmetric contrastive loss with its two memory banks (spec §3.10; RepDistiller ``CRDLoss``).

    Buffers (saved in checkpoints, so a resumed run continues with them): ``memory_s``, ``memory_t`` (N, D) one
    row per training image (student and teacher embeddings), ``train_labels`` (N,) their labels (the negatives'
    classes), ``z_s``, ``z_t`` the normalisation constants (−1 until the first step sets them). The banks have
    N = 0 rows until :meth:`init_memory` (the module calls it in ``setup("fit")`` with the training split's labels);
    a checkpoint loads into a module of any N.

    One step, anchors v_s = E_s(f_S), v_t = E_t(f_T) (B, D) of the batch's images ``index`` (B,):

        idx_i = [index_i, m negatives of other classes]                    (B, 1 + m)
        P^s = exp(⟨M_t[idx], v_s⟩ / τ) / Z_s   (student-anchored, teacher memory)
        P^t = exp(⟨M_s[idx], v_t⟩ / τ) / Z_t   (teacher-anchored, student memory)
        L_CRD = NCE(P^s) + NCE(P^t)

    Z = mean(exp(s/τ)) · N over the first step's scores, then fixed. Then M_s, M_t are updated at the rows of the
    batch (:func:`momentum_memory_rows`).

    Under DDP every rank holds the same banks: Z is the mean over every rank's first batch, and the update
    all-gathers the batch indices and (detached) embeddings of every rank, so each rank applies the same update.
    The loss itself is local (each rank's anchors against the shared banks); DDP's gradient averaging then gives
    the gradient of the mean over the global batch.
    """

    def __init__(self, feat_dim: int = 128, num_negatives: int = 16384, temperature: float = 0.07,
                 momentum: float = 0.5) -> None:  # fmt: skip
        super().__init__()
        check_range("model.crd_feat_dim", feat_dim, ge=1, integer=True)
        check_range("model.crd_num_negatives", num_negatives, ge=1, integer=True)
        check_range("model.crd_temperature", temperature, gt=0)
        check_range("model.crd_momentum", momentum, ge=0, le=1)
        self.feat_dim, self.num_negatives = feat_dim, num_negatives
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("memory_s", torch.empty(0, feat_dim))
        self.register_buffer("memory_t", torch.empty(0, feat_dim))
        self.register_buffer("train_labels", torch.empty(0, dtype=torch.long))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._class_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # of train_labels
        self._class_index_key: tuple[int, int, int] | None = None

    @property
    def num_data(self) -> int:
        return self.train_labels.shape[0]

    @torch.no_grad()
    def init_memory(self, train_labels: torch.Tensor) -> None:
        """Banks for the N = len(train_labels) training images: rows uniform in ±1/sqrt(D/3) (RepDistiller's init),
        Z unset. Draws from the global RNG; under DDP the module's ``on_fit_start`` then gives every rank rank 0's
        banks (:meth:`broadcast_memory`)."""
        train_labels = torch.as_tensor(train_labels, dtype=torch.long).flatten()  # (N,)
        if train_labels.numel() == 0:
            raise ValueError("CRD: the training split is empty")
        device = self.memory_s.device
        n, d = train_labels.shape[0], self.feat_dim
        stdv = 1.0 / math.sqrt(d / 3)
        self.memory_s = torch.rand(n, d, device=device) * (2 * stdv) - stdv  # (N, D)
        self.memory_t = torch.rand(n, d, device=device) * (2 * stdv) - stdv  # (N, D)
        self.train_labels = train_labels.to(device)
        self.z_s.fill_(-1.0)
        self.z_t.fill_(-1.0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:  # fmt: skip
        """Take the banks' size from the checkpoint (a module is built before it knows N)."""
        for name in ("memory_s", "memory_t", "train_labels"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    #: buffers every rank keeps equal itself (gathered updates, Z from every rank's first batch), so DDP need not
    #: broadcast them before each forward (51 MB per step on CIFAR-100, about 1.3 GB on ImageNet)
    synced_buffers = ("memory_s", "memory_t", "train_labels", "z_s", "z_t")

    @torch.no_grad()
    def broadcast_memory(self) -> None:
        """Copy rank 0's banks to every rank (once, before training: ranks seeded differently draw different
        initial banks); a no-op outside a process group."""
        if is_distributed():
            torch.distributed.broadcast(self.memory_s, src=0)
            torch.distributed.broadcast(self.memory_t, src=0)

    def sample_indices(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) image indices → (B, 1 + m): the image itself (the "exact" positive), then m other-class images."""
        labels = self.train_labels
        key = (labels.data_ptr(), labels._version, labels.shape[0])  # a new or reloaded split changes the key
        if self._class_index_key != key:
            self._class_index, self._class_index_key = class_sorted_index(labels), key
        negatives = sample_other_class_negatives(
            labels, labels[index], self.num_negatives, class_index=self._class_index
        )
        return torch.cat([index[:, None], negatives], dim=1)  # (B, 1 + m)

    @torch.no_grad()
    def _set_z(self, z: torch.Tensor, scores: torch.Tensor) -> None:
        """Z = mean(exp(s/τ)) · N over the first step's scores of every rank (equal batches on every rank)."""
        if float(z) < 0:
            mean = gather_no_grad(scores.detach().mean()[None]).mean()  # mean over the global first batch
            z.fill_(float(mean) * self.num_data)
            log.info("CRD: normalisation constant set to %.4g", float(z))

    @torch.no_grad()
    def update_memory(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Momentum update of both banks at the rows of every rank's batch (gathered); where an index occurs twice
        in the gathered batch (DistributedSampler pads with repeats), the last occurrence is used on every rank."""
        index = gather_no_grad(index)  # (W·B,); checks that every rank holds B images
        v_s = gather_no_grad(v_s.detach(), check_shapes=False)  # (W·B, D), forward checked v_s is (B, D)
        v_t = gather_no_grad(v_t.detach(), check_shapes=False)  # (W·B, D)
        order = torch.sort(index, stable=True).indices  # (W·B,) equal indices stay in gather order
        sorted_index = index[order]
        last = torch.ones_like(sorted_index, dtype=torch.bool)
        last[:-1] = sorted_index[1:] != sorted_index[:-1]  # the last of each run of equal indices
        keep = order[last]  # (U,) positions of unique indices
        rows = index[keep]  # (U,)
        # out of place: this step's scores may still need the banks as they were for their backward pass
        # (contrast_scores' product path keeps the whole bank, not a gathered copy)
        self.memory_s = self.memory_s.index_copy(
            0, rows, momentum_memory_rows(self.memory_s[rows], v_s[keep], self.momentum)
        )
        self.memory_t = self.memory_t.index_copy(
            0, rows, momentum_memory_rows(self.memory_t[rows], v_t[keep], self.momentum)
        )

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor,
                sample_idx: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """v_s, v_t (B, D) unit embeddings of the student's and the teacher's features; index (B,) the images'
        rows in the banks; ``sample_idx`` (B, 1 + m) overrides the sampled rows (tests). Returns L_CRD (scalar) and
        updates the banks."""
        if self.num_data == 0:
            raise RuntimeError("CRD: the memory banks are empty; call init_memory(train_labels) first")
        if v_s.shape != v_t.shape or v_s.shape != (index.shape[0], self.feat_dim):
            raise ValueError(
                f"CRD: v_s {tuple(v_s.shape)}, v_t {tuple(v_t.shape)} must both be ({index.shape[0]}, {self.feat_dim})"
            )
        if sample_idx is None:
            sample_idx = self.sample_indices(index)  # (B, 1 + m)
        out_s = contrast_scores(v_s, self.memory_t, sample_idx, self.temperature)  # (B, 1 + m) student-anchored
        out_t = contrast_scores(v_t, self.memory_s, sample_idx, self.temperature)  # (B, 1 + m) teacher-anchored
        self._set_z(self.z_s, out_s)
        self._set_z(self.z_t, out_t)
        loss = crd_nce_loss(out_s / self.z_s, self.num_data) + crd_nce_loss(out_t / self.z_t, self.num_data)
        self.update_memory(index, v_s, v_t)
        return loss
