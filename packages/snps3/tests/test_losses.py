import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import snps3_dist_helpers  # noqa: E402
from mmzoo.testing import run_distributed  # noqa: E402

from snps3.losses import (  # noqa: E402
    LVWMLoss,
    MILNCELoss,
    MoCoLoss,
    MoCoQueue,
    itm_loss,
    masked_lm_loss,
    milnce_loss,
    moco_contrastive_loss,
    qa_loss,
    word_clip_similarity,
)
from snps3.models import MomentumEncoders  # noqa: E402


def milnce_official_matrix(sim: torch.Tensor) -> torch.Tensor:
    """The official indexing (spec §3.4 e implementation note): kron block mask, [Mᵀ, M − 1e12·mask], rows b·T+⌊T/2⌋."""
    b, _, t = sim.shape
    m = sim.reshape(b, b * t).repeat_interleave(t, dim=0)  # (B·T, B·T)  M[(i,a),(j,c)] = S[i,j,c]
    mask = torch.kron(torch.eye(b), torch.ones(t, t))
    x = torch.cat([m.T, m - 1e12 * mask], dim=1)
    logp = F.log_softmax(x, dim=1)
    pos = torch.cat([mask, torch.zeros_like(mask)], dim=1).bool()
    nll = -torch.logsumexp(logp.masked_fill(~pos, float("-inf")), dim=1)
    rows = torch.arange(b) * t + t // 2
    return nll[rows].mean()


def milnce_closed_loop(sim: torch.Tensor) -> torch.Tensor:
    b, _, t = sim.shape
    c = t // 2
    total = 0.0
    for j in range(b):
        num = t * math.exp(sim[j, j, c])
        den = t * sum(math.exp(sim[i, j, c]) for i in range(b))
        den += sum(math.exp(sim[j, k, cc]) for k in range(b) if k != j for cc in range(t))
        total += -math.log(num / den)
    return torch.tensor(total / b)


@pytest.mark.parametrize("t", [1, 3, 4])
def test_milnce_matches_closed_form_and_official_matrix(t):
    sim = torch.randn(5, 5, t, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    got = milnce_loss(sim)
    torch.testing.assert_close(got.double(), milnce_closed_loop(sim).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.double(), milnce_official_matrix(sim).double(), atol=1e-5, rtol=0)


def test_per_sample_terms_match_loops():
    """reduction="none": MIL-NCE term j, MoCo L_t / L_v per sample, MLM per token, ITM per pair, by plain loops."""
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(4, 4, 3, generator=g, dtype=torch.float64)
    terms = milnce_loss(sim, "none")
    assert terms.shape == (4,)
    for j in range(4):  # milnce_closed_loop on a batch: its mean over j; term j alone below
        num = 3 * math.exp(sim[j, j, 1])
        den = 3 * sum(math.exp(sim[i, j, 1]) for i in range(4))
        den += sum(math.exp(sim[j, k, c]) for k in range(4) if k != j for c in range(3))
        torch.testing.assert_close(terms[j].item(), -math.log(num / den), atol=1e-5, rtol=0)  # float32 inside
    b, t, d, k, tau = 3, 2, 4, 5, 0.05
    n = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    tq, vq, tk, vk, qt, qv = n(b, d), n(b, t, d), n(b, d), n(b, t, d), n(k, d), n(k, d)
    out = moco_contrastive_loss(tq, vq, tk, vk, qt, qv, tau, reduction="none")
    for i in range(b):
        pos = [float(tq[i] @ vk[i, c]) / tau for c in range(t)]
        neg = [float(tq[i] @ qv[j]) / tau for j in range(k)]
        lt = math.log(sum(map(math.exp, pos + neg))) - math.log(sum(map(math.exp, pos)))
        lv = 0.0
        for c in range(t):
            p = float(vq[i, c] @ tk[i]) / tau
            lv += math.log(math.exp(p) + sum(math.exp(float(vq[i, c] @ qt[j]) / tau) for j in range(k))) - p
        torch.testing.assert_close(out["l1_t"][i].item(), lt, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out["l1_v"][i].item(), lv / t, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["l1"], (out["l1_t"] + out["l1_v"]) / 2)
    logits, labels = torch.randn(2, 3, 5, generator=g), torch.tensor([[-1, 2, 4], [0, -1, -1]])
    tokens = masked_lm_loss(logits, labels, "none")
    for r in range(2):
        for p in range(3):
            ref = 0.0 if labels[r, p] < 0 else -F.log_softmax(logits[r, p], -1)[labels[r, p]].item()
            torch.testing.assert_close(tokens[r, p].item(), ref, atol=1e-6, rtol=0)
    itm_logits, target = torch.randn(4, 2, generator=g), torch.tensor([1, 1, 0, 0])
    ref = [-F.log_softmax(itm_logits[i], -1)[target[i]].item() for i in range(4)]
    torch.testing.assert_close(itm_loss(itm_logits, target, "none"), torch.tensor(ref), atol=1e-6, rtol=0)


def test_l2_is_milnce_with_t1():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.0, 0.3], [0.0, -0.2, 0.7]])
    ref = 0.0
    for j in range(3):
        den = sum(math.exp(s[i, j]) for i in range(3)) + sum(math.exp(s[j, k]) for k in range(3) if k != j)
        ref += -math.log(math.exp(s[j, j]) / den)
    torch.testing.assert_close(milnce_loss(s[:, :, None]), torch.tensor(ref / 3), atol=1e-6, rtol=0)


def test_milnce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="B, B, T"):
        milnce_loss(torch.zeros(2, 3, 1))


def test_moco_terms_match_loops():
    g = torch.Generator().manual_seed(0)
    b, t, d, k, tau = 3, 2, 4, 5, 0.05
    n = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    tq, vq, tk, vk, qt, qv = n(b, d), n(b, t, d), n(b, d), n(b, t, d), n(k, d), n(k, d)
    out = moco_contrastive_loss(tq, vq, tk, vk, qt, qv, tau)
    lt = 0.0
    for i in range(b):
        pos = [float(tq[i] @ vk[i, c]) / tau for c in range(t)]
        neg = [float(tq[i] @ qv[j]) / tau for j in range(k)]
        lt += math.log(sum(map(math.exp, pos + neg))) - math.log(sum(map(math.exp, pos)))
    lv = 0.0
    for i in range(b):
        for c in range(t):
            pos = float(vq[i, c] @ tk[i]) / tau
            neg = [float(vq[i, c] @ qt[j]) / tau for j in range(k)]
            lv += math.log(math.exp(pos) + sum(map(math.exp, neg))) - pos
    torch.testing.assert_close(out["l1_t"], torch.tensor(lt / b), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["l1_v"], torch.tensor(lv / (b * t)), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["l1"], (out["l1_t"] + out["l1_v"]) / 2)


def test_queue_pointer_wrap_and_nan_skip():
    q = MoCoQueue(5, 2)
    a = torch.arange(6.0).view(3, 2)
    q.enqueue(a)
    assert int(q.ptr) == 3
    torch.testing.assert_close(q.keys[:3], a)
    b = 10 + torch.arange(6.0).view(3, 2)
    q.enqueue(b)  # e = min(3 + 3, 5) = 5: rows [2, 5) overwritten, ptr = 0
    assert int(q.ptr) == 0
    torch.testing.assert_close(q.keys[2:5], b)
    torch.testing.assert_close(q.keys[:2], a[:2])
    before = q.keys.clone()
    assert not q.enqueue(torch.full((2, 2), float("nan")))
    torch.testing.assert_close(q.keys, before)
    assert int(q.ptr) == 0


def test_moco_loss_module_uses_queue_before_enqueue():
    loss = MoCoLoss(queue_size=8, dim=4, temperature=0.05)
    t, tk = F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
    v, vk = F.normalize(torch.randn(2, 3, 4), dim=-1), F.normalize(torch.randn(2, 3, 4), dim=-1)
    ref = moco_contrastive_loss(t, v, tk, vk, loss.queue_t.keys.clone(), loss.queue_v.keys.clone(), 0.05)
    torch.testing.assert_close(loss(t, v, tk, vk)["l1"], ref["l1"])
    loss.enqueue(tk, vk)
    assert int(loss.queue_t.ptr) == 2 and int(loss.queue_v.ptr) == 6


def test_momentum_update_formula(tiny_model):
    mom = MomentumEncoders(tiny_model)
    pk = next(mom.clip_mlp.parameters())
    pq = next(tiny_model.clip_mlp.parameters())
    with torch.no_grad():
        pk.fill_(1.0)
        pq.fill_(3.0)
    mom.update(tiny_model, 0.9)
    torch.testing.assert_close(pk, torch.full_like(pk, 0.9 * 1.0 + 0.1 * 3.0))
    assert not any(p.requires_grad for p in mom.parameters())


def test_word_clip_similarity_loop():
    w, v = torch.randn(2, 3, 4), torch.randn(3, 2, 4)
    s = word_clip_similarity(w, v)
    for i in range(2):
        for j in range(3):
            for c in range(2):
                ref = torch.logsumexp(torch.stack([w[i, k] @ v[j, c] for k in range(3)]), 0)
                torch.testing.assert_close(s[i, j, c], ref, atol=1e-5, rtol=1e-5)


def test_masked_lm_loss_only_labelled_positions():
    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[-1, 2, -1]])
    torch.testing.assert_close(masked_lm_loss(logits, labels), -F.log_softmax(logits[0, 1], -1)[2])
    zero = masked_lm_loss(logits.requires_grad_(), torch.full((1, 3), -1))
    assert zero.item() == 0.0 and zero.requires_grad


def test_qa_loss_index_and_multihot():
    logits = torch.randn(2, 4)
    torch.testing.assert_close(qa_loss(logits, torch.tensor([1, -1])), -F.log_softmax(logits[0], -1)[1])
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    ref = -(0.5 * F.log_softmax(logits[0], -1)[1] + 0.5 * F.log_softmax(logits[0], -1)[2])
    torch.testing.assert_close(qa_loss(logits, target), ref)


def test_gathered_losses_two_processes_equal_one():
    loss1, grad1, per_sample1 = snps3_dist_helpers.single_process()
    torch.testing.assert_close(per_sample1.mean(), loss1)  # the per-sample terms are those the loss averages
    ranks = run_distributed(snps3_dist_helpers.two_rank, world_size=2)
    for loss2, grad2, _ in ranks:
        torch.testing.assert_close(loss2, loss1)
        torch.testing.assert_close(grad2, grad1)
    # reduction="none": each rank returns the terms of its own samples, so that the ranks together hold each once
    torch.testing.assert_close(torch.cat([r[2] for r in ranks]), per_sample1)


def _reduction_calls() -> dict:
    torch.manual_seed(0)
    sim, t, v = torch.randn(3, 3, 2), F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 2, 8), dim=-1)
    logits, labels = torch.randn(3, 4, 5), torch.tensor([[1, -1, 2, -1]] * 3)
    queue = F.normalize(torch.randn(4, 8), dim=-1)
    return {
        "milnce_loss": lambda r: milnce_loss(sim, r),
        "moco_contrastive_loss": lambda r: moco_contrastive_loss(t, v, t, v, queue, queue, 0.05, r),
        "masked_lm_loss": lambda r: masked_lm_loss(logits, labels, r),
        "itm_loss": lambda r: itm_loss(torch.randn(4, 2), torch.tensor([1, 0, 1, 0]), r),
        "MILNCELoss": lambda r: MILNCELoss()(t, v, r),
        "LVWMLoss": lambda r: LVWMLoss()(torch.randn(3, 2, 8), v, r),
    }


@pytest.mark.parametrize("name", list(_reduction_calls()))
def test_unknown_reduction_refused(name):
    """'sum' used to give the mean (the per-sample terms in MILNCELoss and LVWMLoss, the sum in itm_loss)."""
    call = _reduction_calls()[name]

    def l1(out):
        return out["l1"] if isinstance(out, dict) else out

    assert l1(call("mean")).ndim == 0 and l1(call("none")).ndim >= 1  # both valid reductions still run
    with pytest.raises(ValueError, match="reduction='sum': expected one of"):
        call("sum")
