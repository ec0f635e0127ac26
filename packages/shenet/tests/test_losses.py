"""Symmetric InfoNCE (spec §3.7, §8d): hand-computed 3×3 case, gradient flow, two-process equivalence."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import shenet_dist_helpers as h  # noqa: E402
from mmzoo.testing import run_distributed  # noqa: E402

from shenet.losses import SHENetContrastiveLoss, symmetric_infonce_loss  # noqa: E402


def test_symmetric_infonce_by_hand():
    S = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.0, 0.3, 0.7]])
    lam = 10.0
    labels = torch.arange(3)
    # written out: row i: -log(e^{λS_ii} / Σ_k e^{λS_ik}); column k: -log(e^{λS_kk} / Σ_i e^{λS_ik})
    S = S.tolist()
    rows = [-(lam * S[i][i]) + math.log(sum(math.exp(lam * S[i][k]) for k in range(3))) for i in range(3)]
    cols = [-(lam * S[k][k]) + math.log(sum(math.exp(lam * S[i][k]) for i in range(3))) for k in range(3)]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    St = torch.tensor(S)
    got = symmetric_infonce_loss(St, St.T, lam, labels)
    assert got.item() == pytest.approx(expected, rel=1e-4)  # float32 arithmetic


def test_pair_without_frames_leaves_the_loss():
    """Pair 1's video has no valid frame: its row and column leave both softmaxes, the sums are still over B = 3."""
    S = [[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.0, 0.3, 0.7]]
    lam, keep = 10.0, (0, 2)
    rows = [-(lam * S[i][i]) + math.log(sum(math.exp(lam * S[i][k]) for k in keep)) for i in keep]
    cols = [-(lam * S[k][k]) + math.log(sum(math.exp(lam * S[i][k]) for i in keep)) for k in keep]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    St = torch.tensor(S, requires_grad=True)
    valid = torch.tensor([True, False, True])
    got = symmetric_infonce_loss(St, St.T, lam, torch.arange(3), valid)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    got.backward()
    assert torch.equal(St.grad[1], torch.zeros(3)) and torch.equal(St.grad[:, 1], torch.zeros(3))
    # no valid pair at all: a loss of 0 with zero gradients, not NaN
    St.grad = None
    none = symmetric_infonce_loss(St, St.T, lam, torch.arange(3), torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and torch.equal(St.grad, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="pair_valid"):
        symmetric_infonce_loss(St, St.T, lam, torch.arange(3), valid[:2])


def test_loss_errors():
    with pytest.raises(ValueError, match="must be"):
        symmetric_infonce_loss(torch.zeros(2, 3), torch.zeros(3, 2), 1.0, torch.arange(2))
    with pytest.raises(ValueError, match="empty batch"):
        symmetric_infonce_loss(torch.zeros(0, 0), torch.zeros(0, 0), 1.0, torch.zeros(0, dtype=torch.long))
    text, video = h.features()
    with pytest.raises(ValueError, match="pairs expected"):
        SHENetContrastiveLoss()(text.apply(lambda x: x[:2]), video, h.model(), torch.tensor(1.0))


def test_gradient_reaches_nodes_and_patches():
    text, video = h.features()
    out = h.run(text, video, aux_weight=0.5)
    names = ["sentence", "verbs", "nouns", "verbs_enh", "nouns_enh", "video", "frames", "patches"]
    grads = dict(zip(names, out["inputs"], strict=True))
    for key in ("verbs", "nouns_enh", "patches", "frames", "sentence"):
        assert grads[key].abs().sum() > 0, key
    assert torch.isfinite(out["loss"])


def test_two_processes_match_one_process():
    aux_weight = 0.5  # the main and the per-level terms
    by_rank = run_distributed(h.ddp_rank, world_size=2, args=(aux_weight,))
    for empty in (None, 3):  # also with a pair whose video has no valid frame (on rank 1), left out of the loss
        text, video = h.features(empty_video=empty)
        single = h.run(text, video, aux_weight)
        ranks = [r[empty] for r in by_rank]
        # DDP averages the per-rank losses and parameter gradients
        torch.testing.assert_close(sum(r["loss"] for r in ranks) / 2, single["loss"])
        for k in single["params"]:
            torch.testing.assert_close(
                sum(r["params"][k] for r in ranks) / 2, single["params"][k], atol=1e-6, rtol=1e-5
            )
        # each rank's input gradients (summed over ranks by the gather's backward) are W x its slice of the single one
        per = h.B // 2
        for rank, r in enumerate(ranks):
            for g_rank, g_single in zip(r["inputs"], single["inputs"], strict=True):
                torch.testing.assert_close(g_rank / 2, g_single[rank * per : (rank + 1) * per], atol=1e-6, rtol=1e-5)
