"""Triton path of the Refine step's batched k-medoids (spec §3.1 step 3; issue: "k-medoids is the per-step hot spot").

Same contract and rules as :func:`rtqvl.models.video.kmedoids` (the PyTorch reference): KKZ initialisation, assign
each token to its nearest medoid (ties → earliest medoid), move each medoid to the member with the smallest summed
distance to its cluster (ties → lowest index), stop when no segment changes, sort the indices.

Three Triton kernels do the O(N²)-per-segment work:

* ``_dist_kernel``: Δ_ij = ||z_i − z_j||₂ for a tile of (i, j), from the differences (duplicates give exactly 0);
* ``_assign_kernel``: for a block of tokens, the nearest of the C medoids (first minimum);
* ``_cost_kernel``: for a block of candidate tokens j, ``cost_j = Σ_{i : a_i = a_j} Δ_ij`` — the summed distance to
  its *own* cluster only, O(N²) per segment where the reference's ``one_hot(a) @ Δ`` costs O(C·N²).

The per-cluster arg-min of ``cost`` (lowest index on ties) and the KKZ loop stay in PyTorch. On CPU (or without
Triton) :func:`kmedoids_fast` falls back to the reference; the kernels run on CPU only under ``TRITON_INTERPRET=1``
(tests), which must be set before Triton is first imported.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from rtqvl.models.video import kkz_init, kmedoids

__all__ = ["HAS_TRITON", "kmedoids_fast", "kmedoids_triton", "pairwise_distance_triton"]

#: Triton ships with CUDA builds of torch on Linux; it is imported only when a kernel is first used.
HAS_TRITON = importlib.util.find_spec("triton") is not None


@functools.cache
def _kernels():
    """Build the kernels on first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def dist_kernel(
        Z, OUT, N, D, s_zs, s_zn, s_zd, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        s = tl.program_id(0)
        offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
        offs_j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
        offs_d = tl.arange(0, BLOCK_D)
        i_in, j_in = offs_i < N, offs_j < N
        acc = tl.zeros([BLOCK_I, BLOCK_J], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_in = (d0 + offs_d) < D
            a = tl.load(
                Z + s * s_zs + offs_i[:, None] * s_zn + (d0 + offs_d)[None, :] * s_zd,
                mask=i_in[:, None] & d_in[None, :],
                other=0.0,
            ).to(tl.float32)
            b = tl.load(
                Z + s * s_zs + offs_j[:, None] * s_zn + (d0 + offs_d)[None, :] * s_zd,
                mask=j_in[:, None] & d_in[None, :],
                other=0.0,
            ).to(tl.float32)
            diff = a[:, None, :] - b[None, :, :]  # (BI, BJ, BD)
            acc += tl.sum(diff * diff, axis=2)
        tl.store(
            OUT + s * N * N + offs_i[:, None] * N + offs_j[None, :], tl.sqrt(acc), mask=i_in[:, None] & j_in[None, :]
        )

    @triton.jit
    def assign_kernel(DIST, MED, ASSIGN, N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        s = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_in = offs_n < N
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_k = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, C, BLOCK_C):
            offs_k = k0 + tl.arange(0, BLOCK_C)
            k_in = offs_k < C
            med = tl.load(MED + s * C + offs_k, mask=k_in, other=0)
            d = tl.load(
                DIST + s * N * N + offs_n[:, None] * N + med[None, :],
                mask=n_in[:, None] & k_in[None, :],
                other=float("inf"),
            )  # (BN, BC) Δ(token, medoid)
            blk_min = tl.min(d, axis=1)
            blk_k = tl.min(tl.where(d == blk_min[:, None], offs_k[None, :], C), axis=1)  # first minimum
            better = blk_min < best  # strict: an earlier medoid keeps a tie
            best_k = tl.where(better, blk_k, best_k)
            best = tl.where(better, blk_min, best)
        tl.store(ASSIGN + s * N + offs_n, best_k, mask=n_in)

    @triton.jit
    def cost_kernel(DIST, ASSIGN, COST, N, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        s = tl.program_id(0)
        offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
        j_in = offs_j < N
        a_j = tl.load(ASSIGN + s * N + offs_j, mask=j_in, other=-1)
        acc = tl.zeros([BLOCK_J], tl.float32)
        for i0 in range(0, N, BLOCK_I):
            offs_i = i0 + tl.arange(0, BLOCK_I)
            i_in = offs_i < N
            a_i = tl.load(ASSIGN + s * N + offs_i, mask=i_in, other=-2)
            same = (a_i[:, None] == a_j[None, :]) & i_in[:, None] & j_in[None, :]
            d = tl.load(DIST + s * N * N + offs_i[:, None] * N + offs_j[None, :], mask=same, other=0.0)
            acc += tl.sum(d, axis=0)
        tl.store(COST + s * N + offs_j, acc, mask=j_in)

    return dist_kernel, assign_kernel, cost_kernel


def _pow2(n: int, least: int = 16, most: int = 64) -> int:
    return min(most, max(least, 1 << (max(1, n) - 1).bit_length()))


def pairwise_distance_triton(z: torch.Tensor) -> torch.Tensor:
    """(S, N, D) → (S, N, N) float32 Euclidean distances, computed from the differences (Triton)."""
    s, n, d = z.shape
    out = torch.empty(s, n, n, device=z.device, dtype=torch.float32)
    dist_kernel = _kernels()[0]
    bi = bj = 32
    dist_kernel[(s, (n + bi - 1) // bi, (n + bj - 1) // bj)](
        z, out, n, d, z.stride(0), z.stride(1), z.stride(2), BLOCK_I=bi, BLOCK_J=bj, BLOCK_D=_pow2(d, 4, 16)
    )
    return out


@torch.no_grad()
def kmedoids_triton(tokens: torch.Tensor, num_clusters: int, max_iter: int = 100) -> torch.Tensor:
    """:func:`rtqvl.models.video.kmedoids` with the distance, assignment and cost steps in Triton.

    tokens (S, N, D) → (S, C) int64 sorted medoid indices (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    """
    _, assign_kernel, cost_kernel = _kernels()
    s, n, _ = tokens.shape
    c = min(num_clusters, n)
    z = tokens.float().contiguous()
    dist = pairwise_distance_triton(z)  # (S, N, N)
    medoids = kkz_init(dist, z.norm(dim=-1), c)  # KKZ initialisation, shared with the reference
    assign = torch.empty(s, n, dtype=torch.int32, device=z.device)
    cost = torch.empty(s, n, dtype=torch.float32, device=z.device)
    bn, bc = 64, _pow2(c)
    idx = torch.arange(n, device=z.device).expand(s, n)
    for _ in range(max_iter):
        med32 = medoids.to(torch.int32).contiguous()
        assign_kernel[(s, (n + bn - 1) // bn)](dist, med32, assign, n, c, BLOCK_N=bn, BLOCK_C=bc)
        cost_kernel[(s, (n + bn - 1) // bn)](dist, assign, cost, n, BLOCK_I=64, BLOCK_J=bn)
        a = assign.long()
        best = torch.full((s, c), float("inf"), device=z.device).scatter_reduce(1, a, cost, "amin")  # (S, C)
        is_best = cost == best.gather(1, a)  # (S, N): candidates reaching their cluster's minimum
        cand = torch.where(is_best, idx, n)
        new = torch.full((s, c), n, device=z.device, dtype=torch.long).scatter_reduce(1, a, cand, "amin")
        new = torch.where(new == n, medoids, new)  # an empty cluster keeps its medoid
        if torch.equal(new, medoids):
            break
        medoids = new
    return medoids.sort(dim=-1).values


def kmedoids_fast(tokens: torch.Tensor, num_clusters: int, max_iter: int = 100) -> torch.Tensor:
    """k-medoids on the fastest available path: Triton on CUDA, else the PyTorch reference."""
    if tokens.is_cuda and HAS_TRITON:
        return kmedoids_triton(tokens, num_clusters, max_iter)
    return kmedoids(tokens, num_clusters, max_iter)
