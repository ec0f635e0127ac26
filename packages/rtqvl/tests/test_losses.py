"""Losses against hand-written loops (spec §8d) and the two-process ITC equivalence (PACKAGE_DONE 11)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from rtqvl_testlib import itc_inputs, itc_loss_and_grad, tiny_config

from rtqvl.losses import (
    alpha_ramp,
    answer_loss,
    caption_loss,
    itc_loss,
    itm_loss,
    itm_negative_indices,
    multiple_choice_loss,
)
from rtqvl.models import build_model, momentum_update


def test_itc_alpha0_is_multi_positive_infonce():
    b, k, e = 3, 5, 4
    v, t = F.normalize(torch.randn(b, e), dim=-1), F.normalize(torch.randn(b, e), dim=-1)
    vk, tk = F.normalize(torch.randn(k, e), dim=-1), F.normalize(torch.randn(k, e), dim=-1)
    idx = torch.tensor([0, 1, 0])
    key_idx = torch.tensor([0, 1, 0, -100, -100])
    tau = 0.1
    got = itc_loss(v, t, vk, tk, v, t, idx, key_idx, tau, alpha=0.0)
    total = 0.0
    for i in range(b):
        pos = [j for j in range(k) if key_idx[j] == idx[i]]
        lv = [float(v[i] @ tk[j]) / tau for j in range(k)]
        lt = [float(t[i] @ vk[j]) / tau for j in range(k)]
        zv, zt = math.log(sum(math.exp(x) for x in lv)), math.log(sum(math.exp(x) for x in lt))
        total += -sum(lv[j] - zv for j in pos) / len(pos) - sum(lt[j] - zt for j in pos) / len(pos)
    assert got.item() == pytest.approx(0.5 * total / b, rel=1e-5)


def test_itc_soft_targets_with_alpha():
    b, e = 2, 3
    v, t = F.normalize(torch.randn(b, e), dim=-1), F.normalize(torch.randn(b, e), dim=-1)
    vm, tm = F.normalize(torch.randn(b, e), dim=-1), F.normalize(torch.randn(b, e), dim=-1)
    idx = torch.tensor([0, 1])
    a = 0.4
    got = itc_loss(v, t, vm, tm, vm, tm, idx, idx, 0.07, a)
    y = torch.eye(2)
    q_v2t = a * F.softmax(vm @ tm.T / 0.07, 1) + (1 - a) * y
    q_t2v = a * F.softmax(tm @ vm.T / 0.07, 1) + (1 - a) * y
    ref = 0.5 * (
        -(q_v2t * F.log_softmax(v @ tm.T / 0.07, 1)).sum(1).mean()
        - (q_t2v * F.log_softmax(t @ vm.T / 0.07, 1)).sum(1).mean()
    )
    torch.testing.assert_close(got, ref)


def test_alpha_ramp_values():
    n = 10
    assert [alpha_ramp(0.4, e, 0, n, 2) for e in range(4)] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert alpha_ramp(0.4, 0, 5, n, 1) == pytest.approx(0.2)


def test_itm_negatives_never_same_video_and_labels():
    idx = torch.tensor([0, 0, 1, 2, 3, 3])
    sim = torch.randn(6, 6)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        nv, nt = itm_negative_indices(sim, idx, 0.07, g)
        assert (idx[nv] != idx).all() and (idx[nt] != idx).all()
    with pytest.raises(ValueError, match="one video"):
        itm_negative_indices(sim[:2, :2], idx[:2], 0.07)
    logits = torch.randn(6, 2)
    ref = F.cross_entropy(logits, torch.tensor([1, 1, 0, 0, 0, 0]))
    torch.testing.assert_close(itm_loss(logits), ref)


def test_itm_negatives_with_a_dominant_positive():
    """Small learned τ (0.01) and a positive far above the negatives: softmax(sim/τ) of the negatives underflows to 0
    in float32, yet every row still has admissible negatives and must get one, drawn ∝ exp(sim/τ) among them."""
    b = 4
    sim = torch.full((b, b), -0.5)
    sim.fill_diagonal_(1.0)
    sim[0, 2] = -0.4  # the clearly hardest negative of text 0 and (transposed) of video 2
    idx = torch.arange(b)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        nv, nt = itm_negative_indices(sim, idx, 0.01, g)
        assert (idx[nv] != idx).all() and (idx[nt] != idx).all()
        assert nv[0] == 2 and nt[2] == 0  # exp(10) ≈ 2e4 times likelier than each other negative
    # ordinary logits: the same distribution as before (softmax with the same-video entries zeroed)
    sim = torch.randn(b, b) * 0.3
    w_ref = F.softmax(sim / 0.07, dim=1).masked_fill(torch.eye(b, dtype=torch.bool), 0)
    w_ref = w_ref / w_ref.sum(1, keepdim=True)
    counts = torch.zeros(b, b)
    g = torch.Generator().manual_seed(1)
    for _ in range(2000):
        nv, _ = itm_negative_indices(sim, idx, 0.07, g)
        counts[torch.arange(b), nv] += 1
    torch.testing.assert_close(counts / 2000, w_ref, atol=0.05, rtol=0)


def test_caption_loss_ignores_bos_and_padding():
    v = 7
    logits = torch.randn(2, 4, v)
    ids = torch.tensor([[5, 1, 2, 3], [5, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    terms = []
    for b, n in ((0, 4), (1, 2)):
        for pos in range(n - 1):  # position pos predicts token pos+1
            logp = F.log_softmax(logits[b, pos], -1)
            target = ids[b, pos + 1]
            terms.append(-(0.9 * logp[target] + 0.1 * logp.mean()))
    assert caption_loss(logits, ids, mask, 0.1).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # QA: per-sample sum, weighted, / B
    s0 = sum(terms[:3])
    s1 = terms[3]
    w = torch.tensor([1.0, 0.5])
    assert answer_loss(logits, ids, mask, w, 0.1).item() == pytest.approx(((s0 + 0.5 * s1) / 2).item(), rel=1e-5)


def test_multiple_choice_distillation_loss():
    logits, logits_m = torch.randn(3, 5), torch.randn(3, 5)
    y = torch.tensor([0, 4, 2])
    a = 0.3
    ref = (1 - a) * F.cross_entropy(logits, y) - a * (F.softmax(logits_m, 1) * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(multiple_choice_loss(logits, logits_m, y, a), ref)


def test_queue_wraparound_and_ema():
    m = build_model(tiny_config(queue_size=16))
    for step in range(5):
        feats = F.normalize(torch.randn(8, 32), dim=-1)
        m.enqueue(feats, feats, torch.arange(8) + 100 * step)
        assert int(m.queue_ptr) == (8 * (step + 1)) % 16
    torch.testing.assert_close(m.video_queue[:, 0:8].T, feats)  # step 4 wrote slots 0..7
    with pytest.raises(ValueError, match="global batch of 17 .* larger than model.config.queue_size=16"):
        m.enqueue(torch.randn(17, 32), torch.randn(17, 32), torch.arange(17))
    assert int(m.queue_ptr) == 8  # the refused batch left the queue as it was
    online, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    momentum_update([(online, ema)], 0.995)
    torch.testing.assert_close(ema.weight, 0.995 * before + 0.005 * online.weight.detach())


def _slot_queue_reference(size: int, ptr: int, batches: list[int]) -> tuple[list, int]:
    """A plain ring of ``size`` slots: each batch's items go to slots ptr, ptr + 1, ... (mod size), one by one."""
    slots: list = [None] * size
    for step, n in enumerate(batches):
        for i in range(n):
            slots[(ptr + i) % size] = (step, i)
        ptr = (ptr + n) % size
    return slots, ptr


@pytest.mark.parametrize("start", [0, 5, 12, 15])
def test_enqueue_any_pointer_and_batch_size_matches_a_slot_reference(start):
    # a checkpoint's queue_ptr need not be a multiple of this run's global batch: the batch wraps at the queue end
    size, batches = 16, [8, 3, 16, 7, 1, 13, 5]
    m = build_model(tiny_config(queue_size=size))
    m.queue_ptr[0] = start
    untouched = m.video_queue.clone()
    feats = {}
    for step, n in enumerate(batches):
        ids = torch.arange(n) + 100 * step  # video index (step, i) -> 100 step + i
        feats[step] = (torch.randn(n, 32), torch.randn(n, 32))
        m.enqueue(*feats[step], ids)
        slots, ptr = _slot_queue_reference(size, start, batches[: step + 1])
        assert int(m.queue_ptr) == ptr
        for k, slot in enumerate(slots):
            if slot is None:  # never written
                assert torch.equal(m.video_queue[:, k], untouched[:, k]) and int(m.idx_queue[0, k]) == -100
                continue
            s, i = slot
            assert int(m.idx_queue[0, k]) == 100 * s + i, (step, k)
            assert torch.equal(m.video_queue[:, k], feats[s][0][i]) and torch.equal(m.text_queue[:, k], feats[s][1][i])


def test_itc_two_processes_equal_one_process(two_process_results):
    world = 2
    single = itc_loss_and_grad(*itc_inputs(world), torch.arange(8))
    ranks = [r["itc"] for r in two_process_results]  # itc_worker on each rank
    torch.testing.assert_close(sum(r[0] for r in ranks) / world, single[0])  # mean of rank losses
    torch.testing.assert_close(sum(r[1] for r in ranks) / world, single[1])  # DDP averages gradients
    torch.testing.assert_close(ranks[0][2][2], single[2][2])  # both ranks enqueue the whole batch's indices
