"""RTQ video encoder: BLIP's ViT with Refine (k-medoids patch clustering) and Temporal modelling (message tokens).

Spec §3.1. The ViT itself is transformers' BLIP vision stack (``BlipVisionEmbeddings`` + ``BlipEncoderLayer``),
so its parameter names are transformers' (``embeddings.*``, ``encoder.layers.i.*``, ``post_layernorm``); RTQ adds
only the temporal embedding and the message-token attention of the temporal blocks (``message_blocks.*``).

Pipeline for a video batch ``(B, T, 3, H, W)``:

1. patch embedding per frame → ``(B·T, 1+P, D)``; blocks ``0..K−1`` per frame;
2. Refine before block ``K``: frames grouped into ``T'`` segments of ``d = T/T'`` frames; each segment keeps
   ``C`` of its ``d·P`` patch tokens (k-medoids medoids) and the mean of its frames' CLS → ``(B·T', 1+C, D)``;
3. blocks ``K..τ−1`` per segment; at ``τ`` the temporal embedding is added, then blocks ``τ..L−1`` first let
   the segment CLS tokens of a video talk (message tokens), then run the ViT block per segment;
4. final LayerNorm; global vector = mean of segment CLS, token memory = all segments' tokens concatenated
   ``(B, T'·(1+C), D)`` (RTQ) or averaged over segments ``(B, 1+C, D)`` (RQ ablation, ``temporal_modeling="none"``).

Ablations of the official code, by config: Refine ``spectral`` / ``token_shift`` / ``temporal_shift`` (besides
``pooling``, ``sparse_sampling``, ``random``, ``none``) and Temporal ``divided_attention`` (TimeSformer) /
``video_proxy`` (CLIP-ViP; memory ``(B, M + T'·C, D)``, global vector = first proxy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_literal_fields, check_range
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.blip.configuration_blip import BlipVisionConfig
from transformers.models.blip.modeling_blip import BlipEncoderLayer, BlipVisionEmbeddings

__all__ = [
    "VisionConfig",
    "kmedoids",
    "kmedoids_reference",
    "kmedoids_from_distances",
    "kkz_init",
    "spectral_affinity",
    "spectral_medoids",
    "token_shift",
    "temporal_shift",
    "refine_segments",
    "sparse_sampling_indices",
    "MessageTokenAttention",
    "DividedTemporalAttention",
    "RTQVisionEncoder",
    "VideoEncoderOutput",
    "resize_pos_embed",
]

RefineMode = Literal[
    "kmedoids", "spectral", "pooling", "sparse_sampling", "random", "token_shift", "temporal_shift", "none"
]
TemporalMode = Literal["message_token", "divided_attention", "video_proxy", "none"]
TemporalPlacement = Literal["posterior", "prior"]
SpectralGraph = Literal["heat_kernel", "knn"]
KMedoidsImpl = Literal["torch", "triton"]
_SHIFT_MODES = ("token_shift", "temporal_shift")


@dataclass
class VisionConfig:
    """ViT-B/16 (BLIP) plus RTQ's Refine and Temporal settings (spec §3.0, §3.1)."""

    image_size: int = 224
    """Input resolution (RTQ runs BLIP at 224 px; spec §3.0)."""
    patch_size: int = 16
    """ViT patch size (ViT-B/16)."""
    hidden_size: int = 768
    """Token width D."""
    num_layers: int = 12
    """Number of ViT blocks L."""
    num_heads: int = 12
    """Attention heads (also for the message-token attention)."""
    mlp_dim: int = 3072
    """MLP hidden width."""
    layer_norm_eps: float = 1e-6
    """LayerNorm epsilon of BLIP's ViT."""
    num_frames: int = 12
    """T: frames sampled per video (spec §3.3)."""
    num_segments: int = 6
    """T': segments after Refine; ``num_frames / num_segments`` frames are clustered together."""
    cluster_block: int = 7
    """K: Refine is applied right before this block (spec §3.1 step 3)."""
    temporal_block: int = 11
    """τ: temporal start block (11 retrieval, 7 captioning/QA; spec §3.1 step 4)."""
    refine: RefineMode = "kmedoids"
    """Token selection per segment: ``kmedoids`` (paper), ablations ``spectral`` (normalised spectral clustering,
    medoids picked in the spectral embedding; CenterCLIP), ``pooling`` (average the d frames), ``sparse_sampling``
    (one token per stride of ``d·P // C``: a random one in training, the stride centre in evaluation; see
    :func:`sparse_sampling_indices`), ``random``, ``none`` (keep all d·P tokens), and the shift ablations
    ``token_shift`` (TokShift: a channel fraction of each frame's CLS moves one frame forward / back) and
    ``temporal_shift`` (TSM on the patch tokens); the shift modes merge no frames, so they need
    ``num_segments == num_frames``."""
    spectral_sigma: float = 2.0
    """σ of the heat-kernel affinity ``exp(−||z_i − z_j||² / 2σ²)`` of ``refine: spectral`` (CenterCLIP default)."""
    spectral_graph: SpectralGraph = "heat_kernel"
    """Graph of ``refine: spectral`` (official ``spectral_graph``): ``heat_kernel`` = the dense affinity above;
    ``knn`` = the same affinities kept only on k-nearest-neighbour edges (official ``KNN`` mode)."""
    spectral_knn_k: int = 0
    """k of ``spectral_graph: knn`` (each token's k largest affinities, itself included). Values < 5 select the
    official adaptive k: ``5·d`` when P < 100, else ``5·d + 5`` (d = frames per segment)."""
    spectral_knn_mutual: bool = False
    """``spectral_graph: knn``: keep an edge when it is among the k nearest of *both* ends (mutual kNN) instead of
    either end (official default ``mutual=False``, a symmetric OR)."""
    shift_fold_div: int = 8
    """Shift ablations: ``D / shift_fold_div`` channels move one frame back and as many one frame forward
    (official: 8)."""
    cluster_tokens: int | None = None
    """C: tokens kept per segment; ``None`` = P (patches per frame, the paper's budget)."""
    kmedoids_max_iter: int = 100
    """Maximum k-medoids iterations (official: 100)."""
    kmedoids_impl: KMedoidsImpl = "torch"
    """k-medoids implementation: ``torch`` (reference) or ``triton`` (:mod:`rtqvl.ops`: Triton distance /
    assignment / cost kernels on CUDA; falls back to ``torch`` on CPU). Same algorithm and tie rules; the kernels
    are tested against the reference under the Triton CPU interpreter."""
    temporal_modeling: TemporalMode = "message_token"
    """``message_token`` = RTQ; ``none`` = the RQ ablation (no temporal embedding, segment maps averaged); the
    paper's comparison rows ``divided_attention`` (TimeSformer divided space-time attention in blocks τ..L−1) and
    ``video_proxy`` (CLIP-ViP video proxy tokens from block τ)."""
    temporal_placement: TemporalPlacement = "posterior"
    """Where ``temporal_modeling: divided_attention`` runs: ``posterior`` = blocks τ..L−1 on the T' refined segments
    (after Refine); ``prior`` = blocks 0..τ−1 on the T raw frames, *before* Refine (official ``prior_temporal_cfg``;
    needs τ ≤ K), with a T-row temporal embedding added before block 0 and plain ViT blocks from τ on. The other
    temporal modes are posterior only."""
    num_proxies: int = 4
    """M: video proxy tokens of ``temporal_modeling: video_proxy`` (official configs: 1, 2, 4)."""
    msg_fc_zero_init: bool = False
    """Zero-init the message output projection W_msg (and the divided attention's temporal_fc). Official code ends
    with trunc-normal(0.02) (its zero init is overwritten by the generic init; spec §3.1 step 5), the default
    here."""
    drop_path_rate: float = 0.0
    """Stochastic depth on the message-token (or divided-attention) branch only, at this one rate. The official
    blocks drop every residual branch, with a rate rising linearly from 0 at block 0 to this value at the last
    block; both are off at the default 0 (every official config)."""
    grad_checkpoint_last: int = 0
    """Activation checkpointing on the last N ViT blocks (official: 4); memory only, no effect on results."""

    def __post_init__(self) -> None:
        # refine, kmedoids_impl, temporal_modeling, temporal_placement, spectral_graph: a misspelt one would run
        # another variant (an unknown refine keeps every token when C >= d·P, an unknown kmedoids_impl runs torch)
        check_literal_fields(self, "model.config.vision")
        v = "model.config.vision"
        for key in (
            "image_size",
            "patch_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "mlp_dim",
            "num_frames",
            "num_segments",
            "num_proxies",
        ):
            check_range(f"{v}.{key}", getattr(self, key), ge=1, integer=True)
        check_range(f"{v}.layer_norm_eps", self.layer_norm_eps, gt=0)
        check_range(f"{v}.cluster_block", self.cluster_block, integer=True)
        check_range(f"{v}.temporal_block", self.temporal_block, integer=True)
        check_range(f"{v}.spectral_sigma", self.spectral_sigma, gt=0)  # the affinity divides by 2σ²
        check_range(f"{v}.spectral_knn_k", self.spectral_knn_k, integer=True)  # < 5: the adaptive k
        check_range(f"{v}.shift_fold_div", self.shift_fold_div, ge=2, integer=True)
        if self.cluster_tokens is not None:  # null: P tokens per segment
            check_range(f"{v}.cluster_tokens", self.cluster_tokens, ge=1, integer=True)
        check_range(f"{v}.kmedoids_max_iter", self.kmedoids_max_iter, ge=0, integer=True)
        check_range(f"{v}.drop_path_rate", self.drop_path_rate, ge=0, le=1)
        check_range(f"{v}.grad_checkpoint_last", self.grad_checkpoint_last, ge=0, integer=True)
        if self.image_size % self.patch_size:
            raise ValueError(f"{v}.image_size={self.image_size} must be a multiple of {v}.patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{v}.num_heads={self.num_heads} must divide {v}.hidden_size={self.hidden_size}")
        if self.num_frames % self.num_segments:
            raise ValueError(f"{v}.num_segments={self.num_segments} must divide {v}.num_frames={self.num_frames}")
        if not 0 <= self.cluster_block <= self.temporal_block <= self.num_layers:
            raise ValueError(
                f"need 0 <= {v}.cluster_block ({self.cluster_block}) <= {v}.temporal_block "
                f"({self.temporal_block}) <= {v}.num_layers ({self.num_layers})"
            )
        if self.refine in _SHIFT_MODES and self.num_segments != self.num_frames:
            raise ValueError(
                f"{v}.refine={self.refine} merges no frames: set {v}.num_segments ({self.num_segments}) "
                f"= {v}.num_frames ({self.num_frames})"
            )
        if self.temporal_placement == "prior":
            if self.temporal_modeling != "divided_attention":
                raise ValueError(
                    "model.config.vision.temporal_placement=prior is only defined for "
                    "model.config.vision.temporal_modeling=divided_attention, "
                    f"got {self.temporal_modeling}"
                )
            if not 1 <= self.temporal_block <= self.cluster_block:
                raise ValueError(
                    f"{v}.temporal_placement=prior runs divided attention in blocks 0..τ−1 before Refine: need "
                    f"1 <= {v}.temporal_block ({self.temporal_block}) <= {v}.cluster_block ({self.cluster_block})"
                )
        if self.temporal_modeling == "video_proxy" and self.temporal_block == self.num_layers:
            raise ValueError(
                f"{v}.temporal_modeling=video_proxy needs {v}.temporal_block < {v}.num_layers ({self.num_layers})"
            )

    @property
    def num_patches(self) -> int:
        """P: patches per frame."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def frames_per_segment(self) -> int:
        """d = T / T'."""
        return self.num_frames // self.num_segments

    @property
    def tokens_per_segment(self) -> int:
        """Patch tokens a segment keeps after Refine."""
        d, p = self.frames_per_segment, self.num_patches
        if self.refine in ("pooling", *_SHIFT_MODES):
            return p
        if self.refine == "none":
            return d * p
        return min(self.cluster_tokens or p, d * p)

    @property
    def knn_neighbours(self) -> int:
        """k of the spectral kNN graph: ``spectral_knn_k``, or the official adaptive value when it is < 5."""
        if self.spectral_knn_k >= 5:
            return self.spectral_knn_k
        d = self.frames_per_segment
        return 5 * d if self.num_patches < 100 else 5 * d + 5

    @property
    def temporal_rows(self) -> int:
        """Rows of the temporal embedding: T' (posterior placement) or T (prior: added to the raw frames)."""
        return self.num_frames if self.temporal_placement == "prior" else self.num_segments

    def blip_config(self) -> BlipVisionConfig:
        """The transformers config of the ViT blocks."""
        return BlipVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.mlp_dim,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=self.layer_norm_eps,
            attention_dropout=0.0,
        )


# ---------------------------------------------------------------------------------------------- k-medoids (R)


def euclidean_distances(z: torch.Tensor) -> torch.Tensor:
    """Δ_ij = ||z_i − z_j||₂ for z (…, N, D), from the coordinate differences.

    ``torch.cdist``'s default switches to the matmul form ||z_i||² + ||z_j||² − 2⟨z_i, z_j⟩ above 25 tokens, whose
    cancellation leaves Δ_ii and the distance between exact duplicates at about 1e-2 (ViT-B token norms) instead
    of 0; the spec's tie rules (ties → lowest index; a duplicate of a chosen token is picked last) need the zeros.
    """
    return torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")


def kmedoids_reference(tokens: torch.Tensor, num_clusters: int, max_iter: int = 100) -> torch.Tensor:
    """Plain-loop k-medoids of one segment (the spec of :func:`kmedoids`, used as its test oracle).

    tokens (N, D); returns sorted medoid indices (C,).
    """
    z = tokens.double()
    n = z.shape[0]
    dist = euclidean_distances(z)
    norms = z.norm(dim=1)
    medoids = [int(torch.argmax(norms))]
    while len(medoids) < min(num_clusters, n):
        best, best_d = -1, -1.0
        for j in range(n):
            if j in medoids:
                continue
            dj = min(float(dist[j, m]) for m in medoids)
            if dj > best_d:
                best, best_d = j, dj
        medoids.append(best)
    for _ in range(max_iter):
        assign = [min(range(len(medoids)), key=lambda k: (float(dist[i, medoids[k]]), k)) for i in range(n)]
        new = list(medoids)
        for k in range(len(medoids)):
            members = [i for i in range(n) if assign[i] == k]
            if members:
                new[k] = min(members, key=lambda j: (sum(float(dist[j, i]) for i in members), j))
        if new == medoids:
            break
        medoids = new
    return torch.tensor(sorted(medoids), dtype=torch.long)


@torch.no_grad()
def kmedoids(tokens: torch.Tensor, num_clusters: int, max_iter: int = 100) -> torch.Tensor:
    """Batched k-medoids with KKZ initialisation on raw token vectors (spec §3.1 step 3).

    Δ_ij = ||z_i − z_j||₂ (float32, from coordinate differences: :func:`euclidean_distances`). KKZ: the first
    medoid is the token of largest L2 norm; each next one is the token farthest from its nearest chosen medoid
    (chosen tokens never win again; ties → lowest index). Then
    ≤ ``max_iter`` rounds of: assign each token to its nearest medoid (ties → earliest medoid), replace each
    medoid by the member minimising the summed distance to its cluster (ties → lowest index); a segment whose
    medoids stop changing is a fixed point, so iterating until no segment changes equals the official stop rule.
    Finally the indices are sorted ascending.

    Args:
        tokens: (S, N, D) S segments of N tokens.
        num_clusters: C ≤ N.
    Returns:
        (S, C) int64 sorted medoid indices; no gradient.
    """
    z = tokens.float()
    with torch.autocast(device_type=z.device.type, enabled=False):  # clustering always in float32
        dist = euclidean_distances(z)  # (S, N, N)
    return kmedoids_from_distances(dist, z.norm(dim=-1), num_clusters, max_iter)


def kkz_init(dist: torch.Tensor, norms: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """KKZ initialisation: dist (S, N, N), norms (S, N) → (S, C) medoid indices in pick order (spec §3.1 step 3)."""
    s, n = norms.shape
    c = min(num_clusters, n)
    rows = torch.arange(s, device=dist.device)
    medoids = torch.empty(s, c, dtype=torch.long, device=dist.device)
    medoids[:, 0] = norms.argmax(dim=-1)  # KKZ first pick: max norm
    nearest = dist[rows, medoids[:, 0]]  # (S, N) distance to nearest chosen medoid
    chosen = torch.zeros(s, n, dtype=torch.bool, device=dist.device)
    chosen[rows, medoids[:, 0]] = True
    for k in range(1, c):
        score = nearest.masked_fill(chosen, -1.0)  # chosen tokens never win; duplicates (0) come last
        pick = score.argmax(dim=-1)  # (S,) first max → lowest index on ties
        medoids[:, k] = pick
        chosen[rows, pick] = True
        nearest = torch.minimum(nearest, dist[rows, pick])
    return medoids


@torch.no_grad()
def kmedoids_from_distances(
    dist: torch.Tensor, norms: torch.Tensor, num_clusters: int, max_iter: int = 100
) -> torch.Tensor:
    """The k-medoids of :func:`kmedoids` on a given distance matrix dist (S, N, N) and token norms (S, N).

    Always float32 with autocast off: under mixed precision the cost matmul would otherwise run in bf16/fp16,
    which rounds the summed distances (changing which medoid wins) and cannot hold the masking value."""
    with torch.autocast(device_type=dist.device.type, enabled=False):
        return _kmedoids_float32(dist.float(), norms.float(), num_clusters, max_iter)


def _kmedoids_float32(dist: torch.Tensor, norms: torch.Tensor, num_clusters: int, max_iter: int) -> torch.Tensor:
    s, n, _ = dist.shape
    c = min(num_clusters, n)
    medoids = kkz_init(dist, norms, c)
    big = torch.finfo(dist.dtype).max
    for _ in range(max_iter):
        to_medoid = torch.gather(dist, 1, medoids.unsqueeze(-1).expand(s, c, n))  # (S, C, N)
        assign = to_medoid.argmin(dim=1)  # (S, N) first min → earliest medoid
        member = F.one_hot(assign, c).transpose(1, 2).to(dist.dtype)  # (S, C, N)
        cost = member @ dist  # (S, C, N): Σ_{i∈k} Δ_ij for every candidate j
        cost = cost.masked_fill(member == 0, big)  # candidates must belong to the cluster
        new = cost.argmin(dim=-1)  # (S, C)
        empty = member.sum(dim=-1) == 0
        new = torch.where(empty, medoids, new)
        if torch.equal(new, medoids):
            break
        medoids = new
    return medoids.sort(dim=-1).values


def spectral_affinity(
    tokens: torch.Tensor,
    sigma: float = 2.0,
    graph: SpectralGraph = "heat_kernel",
    knn_k: int = 10,
    mutual: bool = False,
) -> torch.Tensor:
    """Graph of ``refine: spectral`` (CenterCLIP ``constructW``): tokens (S, N, D) → W (S, N, N).

    ``heat_kernel``: W_ij = exp(−||z_i − z_j||₂² / 2σ²), a Gaussian of the *squared* Euclidean distance: the official
    ``constructW`` feeds ``batched_cdist_l2``, which returns ||z_i − z_j||² (its square root is commented out). The
    squared distances here come from the exact coordinate differences, so W_ii = 1 and duplicates get exactly 1.
    ``knn``: the same W kept where W_ij is among row i's ``knn_k`` largest values (the token itself, W_ii = 1,
    counts as one of them; every value ≥ the k-th largest is kept) — for i's row *or* j's row (symmetric OR), or
    for both when ``mutual`` — and zero elsewhere.
    """
    z = tokens.float()
    w = torch.exp(-euclidean_distances(z).square() / (2.0 * sigma**2))  # (S, N, N), diagonal 1
    if graph == "heat_kernel":
        return w
    if graph != "knn":
        raise ValueError(f"model.config.vision.spectral_graph={graph!r}: expected heat_kernel or knn")
    k = min(knn_k, w.shape[-1])
    kth = w.topk(k, dim=-1).values[..., -1:]  # (S, N, 1) k-th largest affinity of each row
    near = w >= kth  # (S, N, N) j among i's k nearest
    mask = near & near.transpose(-2, -1) if mutual else near | near.transpose(-2, -1)
    return w * mask


@torch.no_grad()
def spectral_medoids(
    tokens: torch.Tensor,
    num_clusters: int,
    sigma: float = 2.0,
    max_iter: int = 100,
    graph: SpectralGraph = "heat_kernel",
    knn_k: int = 10,
    mutual: bool = False,
) -> torch.Tensor:
    """``refine: spectral`` ablation: normalised spectral clustering whose medoids are the kept tokens (CenterCLIP's
    ``batch_spectral_clustering`` with its default heat-kernel graph; Reconstruction where RTQ's text is silent).

    W = :func:`spectral_affinity` (heat kernel, or its kNN graph with ``graph="knn"``);
    L_sym = I − D^{−½} W D^{−½}; the eigenvectors of the C smallest eigenvalues give a C-d embedding per token,
    rows L2-normalised (+1e-6); :func:`kmedoids` (KKZ, same tie and stop rules) runs in that embedding and its
    medoid indices select the original tokens. (The official code takes an SVD of L_sym, which for this PSD
    matrix spans the same subspaces, plus an optional sign correction that cannot change Euclidean distances.)

    Args:
        tokens: (S, N, D) S segments of N tokens.
        num_clusters: C ≤ N.
    Returns:
        (S, C) int64 sorted medoid indices; no gradient.
    """
    n = tokens.shape[1]
    c = min(num_clusters, n)
    z = tokens.float()
    with torch.autocast(device_type=z.device.type, enabled=False):
        w = spectral_affinity(z, sigma, graph, knn_k, mutual)  # (S, N, N) affinity, diagonal 1
        inv_sqrt_deg = w.sum(dim=-1).rsqrt()  # (S, N)
        lap = torch.eye(n, device=z.device) - inv_sqrt_deg.unsqueeze(-1) * w * inv_sqrt_deg.unsqueeze(-2)
        _, vecs = torch.linalg.eigh(lap)  # ascending eigenvalues
    q = vecs[:, :, :c]  # (S, N, C): eigenvectors of the C smallest eigenvalues
    q = q / (q.norm(dim=-1, keepdim=True) + 1e-6)
    return kmedoids(q, c, max_iter)


def _shift(x: torch.Tensor, fold_div: int) -> torch.Tensor:
    """x (B, T, …, D): channels [0, D/f) take frame t+1's values (shift back), [D/f, 2D/f) frame t−1's (shift
    forward), zeros where no neighbour exists; the rest unchanged."""
    fold = x.shape[-1] // fold_div
    out = x.clone()
    out[:, :-1, ..., :fold] = x[:, 1:, ..., :fold]
    out[:, -1, ..., :fold] = 0
    out[:, 1:, ..., fold : 2 * fold] = x[:, :-1, ..., fold : 2 * fold]
    out[:, 0, ..., fold : 2 * fold] = 0
    return out


def token_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """TokShift (Zhang et al., MM 2021; CenterCLIP ``token_shift``): only the CLS token of each frame is shifted —
    its first ``D/fold_div`` channels come from the next frame, the next ``D/fold_div`` from the previous frame
    (zero-padded at the clip ends); patch tokens are unchanged.

    x (B·T, 1+P, D) frames of a video consecutive → same shape.
    """
    bt, n, dim = x.shape
    v = x.view(bt // num_frames, num_frames, n, dim)
    cls = _shift(v[:, :, :1], fold_div)  # (B, T, 1, D)
    return torch.cat([cls, v[:, :, 1:]], dim=2).view(bt, n, dim)


def temporal_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """TSM on the patch tokens, CLS untouched (CenterCLIP ``temporal_shift_wo_cls``): the same channel shift as
    :func:`token_shift`, applied to every patch token. x (B·T, 1+P, D) → same shape."""
    bt, n, dim = x.shape
    v = x.view(bt // num_frames, num_frames, n, dim)
    patches = _shift(v[:, :, 1:], fold_div)  # (B, T, P, D)
    return torch.cat([v[:, :, :1], patches], dim=2).view(bt, n, dim)


def sparse_sampling_indices(
    n: int, c: int, rows: int, training: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Token indices of ``refine: sparse_sampling`` (CenterCLIP ``token_sparse_sampling``), for c < n tokens.

    Training: the n tokens are cut into c strides of ``s = n // c`` and one token is drawn uniformly inside each,
    ``k·s + U{0, …, s−1}`` (a tail of ``n − c·s`` tokens is never drawn), independently for each of the ``rows``.
    Evaluation: the centre of each of c equal strides of ``n / c``, ``⌊n/(2c) + k·n/c⌋`` (for n = 2c: the odd
    indices). Both ascending. Returns (rows, c) int64 on the CPU.
    """
    if not 0 < c < n:
        raise ValueError(f"sparse sampling needs 0 < C ({c}) < N ({n})")
    if training:
        stride = n // c
        return torch.arange(c) * stride + torch.randint(stride, (rows, c), generator=generator)
    tick = n / c
    centres = torch.tensor([math.floor(tick / 2.0 + tick * k) for k in range(c)], dtype=torch.long)
    return centres.expand(rows, c).clone()


def refine_segments(
    x: torch.Tensor,
    num_videos: int,
    num_segments: int,
    mode: RefineMode,
    num_tokens: int,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    spectral_sigma: float = 2.0,
    shift_fold_div: int = 8,
    kmedoids_impl: KMedoidsImpl = "torch",
    spectral_graph: SpectralGraph = "heat_kernel",
    spectral_knn_k: int = 10,
    spectral_knn_mutual: bool = False,
    training: bool = False,
) -> torch.Tensor:
    """Refine: merge each segment's d frames into ``1 + C`` tokens (spec §3.1 step 3).

    Args:
        x: (B·T, 1+P, D) per-frame tokens, frames of a video consecutive.
        mode: ``kmedoids`` (paper), ``spectral``, ``pooling``, ``sparse_sampling``, ``random``, ``none``, or the
            shift ablations ``token_shift`` / ``temporal_shift`` (need ``num_segments`` = T; no tokens dropped).
        num_tokens: C, tokens kept per segment (ignored by ``pooling``/``none``/shift modes).
        training: ``sparse_sampling`` only: random offsets inside each stride (training) or stride centres.
    Returns:
        (B·T', 1+C, D): ``[mean of the d frames' CLS ; selected patch tokens]`` (selection without gradient,
        gathered tokens keep it).
    """
    check_choice("model.config.vision.refine", mode, get_args(RefineMode))
    check_choice("model.config.vision.kmedoids_impl", kmedoids_impl, get_args(KMedoidsImpl))
    bt, p1, dim = x.shape
    t = bt // num_videos
    d = t // num_segments
    if mode in _SHIFT_MODES:
        if d != 1:
            raise ValueError(
                f"model.config.vision.refine={mode} needs model.config.vision.num_segments = "
                f"model.config.vision.num_frames ({t})"
            )
        return (token_shift if mode == "token_shift" else temporal_shift)(x, t, shift_fold_div)
    x = x.view(num_videos * num_segments, d, p1, dim)  # (B·T', d, 1+P, D)
    cls = x[:, :, 0].mean(dim=1, keepdim=True)  # (B·T', 1, D) segment CLS = mean of frame CLS
    patches = x[:, :, 1:]  # (B·T', d, P, D)
    if mode == "pooling":
        return torch.cat([cls, patches.mean(dim=1)], dim=1)  # (B·T', 1+P, D)
    z = patches.reshape(num_videos * num_segments, d * (p1 - 1), dim)  # (B·T', N, D) frame-major
    n = z.shape[1]
    if mode == "none" or num_tokens >= n:
        return torch.cat([cls, z], dim=1)  # (B·T', 1+N, D)
    if mode == "kmedoids" and kmedoids_impl == "triton":
        from rtqvl.ops import kmedoids_fast  # Triton on CUDA, the reference elsewhere

        idx = kmedoids_fast(z.detach(), num_tokens, max_iter)  # (B·T', C)
    elif mode == "kmedoids":
        idx = kmedoids(z.detach(), num_tokens, max_iter)  # (B·T', C)
    elif mode == "spectral":
        idx = spectral_medoids(
            z.detach(), num_tokens, spectral_sigma, max_iter, spectral_graph, spectral_knn_k, spectral_knn_mutual
        )  # (B·T', C)
    elif mode == "sparse_sampling":
        # one draw per segment position, shared by the videos of the batch (row b·T' + t takes draw t)
        idx = sparse_sampling_indices(n, num_tokens, num_segments, training, generator).to(z.device)  # (T', C)
        idx = idx.repeat(num_videos, 1)  # (B·T', C)
    else:  # random
        scores = torch.rand(z.shape[0], n, generator=generator).to(z.device)
        idx = scores.topk(num_tokens, dim=-1).indices.sort(dim=-1).values  # (B·T', C)
    sel = torch.gather(z, 1, idx.unsqueeze(-1).expand(-1, -1, dim))  # (B·T', C, D)
    return torch.cat([cls, sel], dim=1)  # (B·T', 1+C, D)


# ------------------------------------------------------------------------------------------ message tokens (T)


def _init_residual_attention(norm: nn.LayerNorm, attn: nn.MultiheadAttention, fc: nn.Linear, zero_fc: bool) -> None:
    """Official generic init of a pre-norm attention residual: trunc-normal 0.02 weights, zero biases, LN 1/0;
    the output projection ``fc`` zeroed when ``zero_fc`` (the block then starts as the identity)."""
    for weight, bias in ((fc.weight, fc.bias), (attn.in_proj_weight, attn.in_proj_bias)):
        nn.init.trunc_normal_(weight, std=0.02)
        nn.init.zeros_(bias)
    nn.init.trunc_normal_(attn.out_proj.weight, std=0.02)
    nn.init.zeros_(attn.out_proj.bias)
    nn.init.ones_(norm.weight)
    nn.init.zeros_(norm.bias)
    if zero_fc:
        nn.init.zeros_(fc.weight)


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class MessageTokenAttention(nn.Module):
    """Message-token exchange of a temporal block (spec §3.1 step 5):

        m ← m + W_msg( DropPath( MHSA( LN_msg(m) ) ) ),   m = [cls_1 … cls_T'] ∈ R^{T'×D} per video.

    Shapes: cls (B, T', D) → (B, T', D). Attention is only among the segments of one video.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, drop_path: float, zero_init: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)  # LN_msg
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)  # MHSA over T' tokens
        self.fc = nn.Linear(dim, dim)  # W_msg
        self.drop_path = drop_path
        self.zero_init = zero_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Generic init of the official encoder (trunc-normal 0.02, zero bias, LN 1/0); optional zero W_msg."""
        _init_residual_attention(self.norm, self.attn, self.fc, self.zero_init)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        h = self.norm(cls)  # (B, T', D)
        h, _ = self.attn(h, h, h, need_weights=False)  # (B, T', D)
        return cls + self.fc(_drop_path(h, self.drop_path, self.training))  # (B, T', D)


class DividedTemporalAttention(nn.Module):
    """Temporal half of TimeSformer's divided space-time attention (``temporal_modeling: divided_attention``;
    the official ``DividedSpaceTimeBlock``), run before the pretrained spatial block of each temporal block:

        cls_t ← mean_t' cls_t'  (every segment's CLS replaced by the video mean),
        x_{·,p} ← x_{·,p} + W_t( DropPath( MHSA_t( LN_t( x_{·,p} ) ) ) )  over the T' tokens at patch slot p.

    After Refine, slot p of two segments holds their p-th medoids (the official code attends over them all the
    same). Shapes: x (B, T', 1+C, D) → (B, T', 1+C, D).
    """

    def __init__(self, dim: int, num_heads: int, drop_path: float, zero_init: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim)  # LN_t (official: nn.LayerNorm default eps 1e-5)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)  # MHSA_t over T' tokens
        self.fc = nn.Linear(dim, dim)  # W_t (temporal_fc)
        self.drop_path = drop_path
        self.zero_init = zero_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Generic init (trunc-normal 0.02, zero bias, LN 1/0); optional zero W_t (see ``msg_fc_zero_init``)."""
        _init_residual_attention(self.norm, self.attn, self.fc, self.zero_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, dim = x.shape
        cls = x[:, :, :1].mean(dim=1, keepdim=True).expand(b, t, 1, dim)  # (B, T', 1, D) video-mean CLS
        p = x[:, :, 1:].transpose(1, 2).reshape(b * (n - 1), t, dim)  # (B·C, T', D) one sequence per slot
        h = self.norm(p)
        h, _ = self.attn(h, h, h, need_weights=False)
        p = p + self.fc(_drop_path(h, self.drop_path, self.training))  # (B·C, T', D)
        p = p.view(b, n - 1, t, dim).transpose(1, 2)  # (B, T', C, D)
        return torch.cat([cls, p], dim=2)  # (B, T', 1+C, D)


def video_proxy_block(layer: BlipEncoderLayer, x: torch.Tensor, num_proxies: int, num_segments: int) -> torch.Tensor:
    """One CLIP-ViP block (``temporal_modeling: video_proxy``; the official ``CLIPViPBlock``) with the pretrained
    spatial block's weights (LN1, qkv, projection, LN2, MLP):

    * proxies (queries) attend to every token of the video: ``[proxies ; all segments' patches]``;
    * the patches of segment t (queries) attend to ``[proxies ; patches of segment t]``;
    * residual, then the MLP on every token.

    Shapes: x (B, M + T'·C, D) = ``[M proxies ; segment 0 patches ; … ; segment T'−1 patches]`` → same shape.
    """
    attn = layer.self_attn
    b, n, dim = x.shape
    m, t = num_proxies, num_segments
    c = (n - m) // t
    heads = attn.num_heads
    h = layer.layer_norm1(x)
    q, k, v = attn.qkv(h).view(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # each (B, H, N, Dh)

    def per_segment(y: torch.Tensor) -> torch.Tensor:  # (B, H, M+T'C, Dh) → (B·T', H, M+C, Dh)
        prox = y[:, :, :m].unsqueeze(1).expand(b, t, heads, m, -1)
        seg = y[:, :, m:].view(b, heads, t, c, -1).transpose(1, 2)  # (B, T', H, C, Dh)
        return torch.cat([prox, seg], dim=3).flatten(0, 1)

    q_seg = q[:, :, m:].view(b, heads, t, c, -1).transpose(1, 2).flatten(0, 1)  # (B·T', H, C, Dh)
    out_seg = F.scaled_dot_product_attention(q_seg, per_segment(k), per_segment(v))  # (B·T', H, C, Dh)
    out_seg = out_seg.view(b, t, heads, c, -1).transpose(1, 2).reshape(b, heads, t * c, -1)  # (B, H, T'C, Dh)
    out_prox = F.scaled_dot_product_attention(q[:, :, :m], k, v)  # (B, H, M, Dh) proxies see everything
    out = torch.cat([out_prox, out_seg], dim=2).transpose(1, 2).reshape(b, n, dim)  # (B, N, D)
    x = x + attn.projection(out)
    return x + layer.mlp(layer.layer_norm2(x))


def resize_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resize of a ViT position embedding (1, 1+G², D) to (1, 1+num_patches, D), CLS position kept.

    Identity when the sizes already match (spec §3.0: BLIP's 24×24+1 → 14×14+1 at 224 px).
    """
    if pos.shape[1] == num_patches + 1:
        return pos
    cls, grid = pos[:, :1], pos[:, 1:]
    old, new = int(math.isqrt(grid.shape[1])), int(math.isqrt(num_patches))
    if old * old != grid.shape[1] or new * new != num_patches:
        raise ValueError(f"position embedding of {grid.shape[1]} patches cannot be resized to {num_patches}")
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, G, G)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False).to(pos.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim)  # (1, P, D)
    return torch.cat([cls, grid], dim=1)  # (1, 1+P, D)


# ------------------------------------------------------------------------------------------------ the encoder


@dataclass
class VideoEncoderOutput:
    """global_feat (B, D): mean of the final segment CLS (first proxy for ``video_proxy``); tokens (B, M, D):
    cross-attention memory, M = T'·(1+C) (RTQ, divided attention), 1+C (RQ) or proxies + T'·C (video proxy)."""

    global_feat: torch.Tensor
    tokens: torch.Tensor


class RTQVisionEncoder(nn.Module):
    """BLIP ViT with RTQ's Refine and Temporal modelling (spec §3.1).

    Shapes: video (B, T, 3, H, W) float → :class:`VideoEncoderOutput`.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        blip = config.blip_config()
        self.embeddings = BlipVisionEmbeddings(blip)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([BlipEncoderLayer(blip) for _ in range(config.num_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        mode = config.temporal_modeling
        self.use_temporal = mode != "none"
        self.prior = config.temporal_placement == "prior"
        # temporal blocks: τ..L−1 after Refine (posterior), or 0..τ−1 on the raw frames before Refine (prior)
        n_temporal = config.temporal_block if self.prior else config.num_layers - config.temporal_block
        # E_t; frozen in the RQ ablation (temporal_modeling: none), where it never enters the graph: a trainable
        # parameter without a gradient stops DDP (find_unused_parameters=False) at the second step
        self.temporal_embedding = nn.Parameter(
            torch.zeros(config.temporal_rows, config.hidden_size), requires_grad=self.use_temporal
        )
        self.message_blocks = nn.ModuleList(
            MessageTokenAttention(
                config.hidden_size,
                config.num_heads,
                config.layer_norm_eps,
                config.drop_path_rate,
                config.msg_fc_zero_init,
            )
            for _ in range(n_temporal if mode == "message_token" else 0)
        )
        self.divided_blocks = nn.ModuleList(
            DividedTemporalAttention(
                config.hidden_size, config.num_heads, config.drop_path_rate, config.msg_fc_zero_init
            )
            for _ in range(n_temporal if mode == "divided_attention" else 0)
        )
        # CLIP-ViP proxy embeddings (Reconstruction: RTQ's code starts all M proxies as copies of the mean segment
        # CLS, which keeps them identical; CLIP-ViP gives each proxy its own learnable embedding)
        self.proxy_embedding = (
            nn.Parameter(torch.zeros(config.num_proxies, config.hidden_size)) if mode == "video_proxy" else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Generic ViT init (trunc-normal 0.02 weights, zero biases, LN 1/0); pretrained weights load on top."""
        temporal_fcs = [b.fc for b in (*self.message_blocks, *self.divided_blocks)]
        for m in self.modules():
            if isinstance(m, nn.Linear) and not any(m is fc for fc in temporal_fcs):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.embeddings.position_embedding, std=0.02)
        nn.init.trunc_normal_(self.embeddings.class_embedding, std=0.02)
        nn.init.zeros_(self.temporal_embedding)
        if self.proxy_embedding is not None:
            nn.init.trunc_normal_(self.proxy_embedding, std=0.02)
        for b in (*self.message_blocks, *self.divided_blocks):
            b.reset_parameters()

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        layer = self.encoder.layers[i]
        if self.training and i >= self.config.num_layers - self.config.grad_checkpoint_last:
            return checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None) -> VideoEncoderOutput:
        cfg = self.config
        if video.ndim != 5 or video.shape[1] != cfg.num_frames or video.shape[2] != 3:
            raise ValueError(
                f"video must be (B, T={cfg.num_frames}, 3, H, W) (model.config.vision.num_frames), "
                f"got {tuple(video.shape)}"
            )
        if video.shape[-1] != cfg.image_size or video.shape[-2] != cfg.image_size:
            raise ValueError(
                f"video frames must be {cfg.image_size}x{cfg.image_size} (model.config.vision.image_size), "
                f"got {tuple(video.shape[-2:])}"
            )
        b, t = video.shape[:2]
        x = self.embeddings(video.flatten(0, 1))  # (B·T, 1+P, D)
        mode = cfg.temporal_modeling
        segments = False
        for i in range(cfg.num_layers):
            if self.prior and i < cfg.temporal_block:  # divided attention on the T raw frames, before Refine
                n = x.shape[1]
                x = x.view(b, t, n, -1)  # (B, T, 1+P, D)
                if i == 0:
                    x = x + self.temporal_embedding[None, :, None]  # T-row temporal embedding before block 0
                x = self.divided_blocks[i](x).flatten(0, 1)  # (B·T, 1+P, D)
                x = self._block(i, x)
                continue
            if i == cfg.cluster_block and not segments:
                x = self._refine(x, b, generator)  # (B·T', 1+C, D)
                segments = True
            if self.prior:
                x = self._block(i, x)
                continue
            if self.use_temporal and i == cfg.temporal_block:
                n = x.shape[1]
                x = x.view(b, cfg.num_segments, n, -1) + self.temporal_embedding[None, :, None]  # (B, T', 1+C, D)
                if mode == "video_proxy":
                    proxies = x[:, :, 0].mean(dim=1, keepdim=True) + self.proxy_embedding  # (B, M, D)
                    x = torch.cat([proxies, x[:, :, 1:].flatten(1, 2)], dim=1)  # (B, M + T'·C, D)
                else:
                    x = x.flatten(0, 1)  # (B·T', 1+C, D)
            if self.use_temporal and i >= cfg.temporal_block:
                j = i - cfg.temporal_block
                if mode == "video_proxy":
                    x = video_proxy_block(self.encoder.layers[i], x, cfg.num_proxies, cfg.num_segments)
                    continue
                n = x.shape[1]
                x = x.view(b, cfg.num_segments, n, -1)  # (B, T', 1+C, D)
                if mode == "message_token":
                    cls = self.message_blocks[j](x[:, :, 0])  # (B, T', D)
                    x = torch.cat([cls.unsqueeze(2), x[:, :, 1:]], dim=2)
                else:
                    x = self.divided_blocks[j](x)
                x = x.flatten(0, 1)  # (B·T', 1+C, D)
            x = self._block(i, x)
        if not segments:  # cluster_block == num_layers: refine after the last block
            x = self._refine(x, b, generator)
        x = self.post_layernorm(x)  # (B·T', 1+C, D), or (B, M + T'·C, D) for video proxies
        if mode == "video_proxy":
            return VideoEncoderOutput(global_feat=x[:, 0], tokens=x)  # official: the first proxy token
        n = x.shape[1]
        x = x.view(b, cfg.num_segments, n, -1)  # (B, T', 1+C, D)
        global_feat = x[:, :, 0].mean(dim=1)  # (B, D) mean of segment CLS
        if self.use_temporal:
            tokens = x.flatten(1, 2)  # (B, T'·(1+C), D)
        else:
            tokens = x.mean(dim=1)  # (B, 1+C, D) RQ: segment maps averaged
        return VideoEncoderOutput(global_feat=global_feat, tokens=tokens)

    def _refine(self, x: torch.Tensor, num_videos: int, generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        return refine_segments(
            x,
            num_videos,
            cfg.num_segments,
            cfg.refine,
            cfg.tokens_per_segment,
            cfg.kmedoids_max_iter,
            generator,
            cfg.spectral_sigma,
            cfg.shift_fold_div,
            cfg.kmedoids_impl,
            cfg.spectral_graph,
            cfg.knn_neighbours,
            cfg.spectral_knn_mutual,
            training=self.training,
        )
