"""The Triton k-medoids (rtqvl.ops) against the PyTorch reference: under TRITON_INTERPRET=1 in a fresh process on CPU,
natively on CUDA; and the CPU fallback."""

from __future__ import annotations

import pytest
import torch
from mmzoo.testing import run_in_triton_interpreter

from rtqvl.models import kmedoids, refine_segments
from rtqvl.models.video import euclidean_distances, kmedoids_from_distances
from rtqvl.ops import HAS_TRITON, kmedoids_fast

# (segments, tokens, dim, clusters): none a multiple of the 32/64 blocks; the last has exact duplicates
CASES = [(2, 40, 8, 10), (1, 2 * 12, 6, 12)]


def _tokens(s: int, n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if n == 24:  # two identical "frames" of 12 distinct patches: the medoids must be the 12 distinct tokens
        frame = 3 * torch.randn(s, n // 2, d, generator=g)
        return torch.cat([frame, frame], dim=1)
    return torch.randn(s, n, d, generator=g)


def check_triton_against_reference(device: str) -> None:
    from rtqvl.ops import kmedoids_triton, pairwise_distance_triton

    for seed, (s, n, d, c) in enumerate(CASES):
        z = _tokens(s, n, d, seed).to(device)
        torch.testing.assert_close(
            pairwise_distance_triton(z), torch.cdist(z.double(), z.double()).float(), rtol=1e-5, atol=1e-5
        )
        # same distances → the same medoids as the reference iteration (the float32 sums may differ in the last
        # bits from torch.cdist's, which can flip a near-tie on the way, so the distances are shared here)
        dist, norms = pairwise_distance_triton(z), z.norm(dim=-1)
        got = kmedoids_triton(z, c)
        assert torch.equal(got.cpu(), kmedoids_from_distances(dist, norms, c).cpu()), seed
        # and the result is a k-medoids fixed point in exact (float64) distances: sorted, each medoid the exact
        # medoid of the tokens nearest to it
        d64 = torch.cdist(z.double(), z.double()).cpu()
        for b in range(s):
            med = got[b].cpu()
            assert torch.all(med[1:] > med[:-1])
            assign = d64[b][:, med].argmin(dim=1)
            for k in range(len(med)):
                members = (assign == k).nonzero().view(-1)
                assert members[d64[b][members][:, members].sum(dim=1).argmin()] == med[k]
        if n == 24:
            assert torch.equal(torch.unique(z[0, got[0]], dim=0), torch.unique(z[0, : n // 2], dim=0))


def test_cpu_fallback_is_the_reference():
    z = torch.randn(2, 30, 4)
    assert torch.equal(kmedoids_fast(z, 7), kmedoids(z, 7))
    x = torch.randn(2 * 4, 17, 8)
    assert torch.equal(
        refine_segments(x, 2, 2, "kmedoids", 16, kmedoids_impl="triton"), refine_segments(x, 2, 2, "kmedoids", 16)
    )


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kmedoids_matches_reference():
    if torch.cuda.is_available():
        check_triton_against_reference("cuda")
        return
    # the interpreter must be chosen before triton is first imported, hence a fresh process
    out = run_in_triton_interpreter(__file__, "test_ops.check_triton_against_reference('cpu'); print('kernel ok')")
    assert "kernel ok" in out


def test_kmedoids_ignores_autocast():
    """Under bf16 autocast (Lightning's bf16-mixed) the clustering still runs in float32: same medoids, no overflow
    of the masking value in the cost matrix."""
    z = torch.randn(4, 50, 16, generator=torch.Generator().manual_seed(0))
    want = kmedoids(z, 8)
    x = torch.randn(2 * 4, 17, 8, generator=torch.Generator().manual_seed(1))
    want_refined = refine_segments(x, 2, 2, "kmedoids", 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(kmedoids(z, 8), want)
        assert torch.equal(kmedoids_from_distances(euclidean_distances(z), z.norm(dim=-1), 8), want)
        got_refined = refine_segments(x, 2, 2, "kmedoids", 16)
    assert got_refined.shape == want_refined.shape
