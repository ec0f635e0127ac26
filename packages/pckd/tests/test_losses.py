"""Each loss of spec §3.4–3.5 against its equation (spec §8d)."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from pckd.losses import (
    CategoryContrastiveLoss,
    CenterAlignmentLoss,
    CRDLoss,
    PerSampleKDLoss,
    PreviewWeights,
    category_contrastive_loss,
    center_alignment_loss,
    feature_alignment_loss,
    kd_loss,
    per_sample_kd_loss,
    preview_threshold,
    preview_weights,
)


def cc_reference(u, w, labels, tau, tau_b):
    """Plain double loop over the anchor set A = {u_1..u_N, w_1..w_N} (spec §3.4(e))."""
    anchors = torch.cat([u, w]).double()
    y = torch.cat([labels, labels])
    m = len(anchors)
    ell = []
    for a in range(m):
        s = [float(anchors[a] @ anchors[b]) / tau for b in range(m)]
        smax = max(s)
        s = [v - smax for v in s]
        denom = sum(math.exp(s[k]) for k in range(m) if k != a)
        pos = [b for b in range(m) if b != a and y[b] == y[a]]
        mean_lp = sum(s[b] - math.log(denom + 1e-7) for b in pos) / len(pos)
        ell.append(-(tau / tau_b) * mean_lp)
    n = len(u)
    return torch.tensor([ell[j] + ell[n + j] for j in range(n)], dtype=torch.float64)


def test_cc_matches_double_loop_and_is_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    u, w = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 3, 3, 2, 0])
    got = category_contrastive_loss(u, w, labels, 4.0, 0.07)
    torch.testing.assert_close(got.double(), cc_reference(u, w, labels, 4.0, 0.07), rtol=1e-5, atol=1e-5)
    perm = torch.randperm(12, generator=g)
    permuted = category_contrastive_loss(u[perm], w[perm], labels[perm], 4.0, 0.07)
    torch.testing.assert_close(permuted, got[perm], rtol=1e-5, atol=1e-5)


def test_cc_base_temperature_scaling_and_singleton_class():
    g = torch.Generator().manual_seed(1)
    u, w = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])  # class 2 has a single view: its twin is the only positive
    a = category_contrastive_loss(u, w, labels, 4.0, 0.07)
    b = category_contrastive_loss(u, w, labels, 4.0, 0.14)
    assert a.shape == (8,) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b * 2.0)


def test_cc_gradient_reaches_student_heads_never_teacher_centers():
    from pckd.models import Embed

    feat = torch.randn(8, 6, requires_grad=True)  # student feature (stands in for the backbone output)
    w_s = torch.randn(3, 6, requires_grad=True)
    w_t = torch.randn(3, 5, requires_grad=False)
    e_s, e_t = Embed(6, 6), Embed(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    loss = category_contrastive_loss(e_s(feat) @ w_s.T, e_t(feat) @ w_t.T, labels, 4.0, 0.07).mean()
    loss.backward()
    for t in (feat, w_s, e_s.linear.weight, e_t.linear.weight):
        assert t.grad is not None and t.grad.abs().sum() > 0
    assert w_t.grad is None


def test_preview_weights_worked_example():
    ce = torch.tensor([1.0, 1.0, 4.0])  # γ = [0.5, 0.5, 2.0]
    v = preview_weights(ce, epoch=1, lam=1.005)
    torch.testing.assert_close(v, torch.tensor([1.0, 1.0, math.exp(-4.0)]))
    e = math.ceil(math.log(2.0) / math.log(1.005))  # first epoch with τ_e ≥ 2
    assert preview_threshold(e, 1.005) == pytest.approx(1.005**e) and preview_threshold(e, 1.005) >= 2.0
    torch.testing.assert_close(preview_weights(ce, epoch=e, lam=1.005), torch.ones(3))
    ce = torch.rand(50) * 5
    for epoch in (1, 50, 150):
        v = preview_weights(ce, epoch, 1.005)
        hard = v < 1
        assert (v[hard] <= math.exp(-((1.005**epoch) ** 2)) + 1e-7).all()


def test_preview_weights_detach_switch():
    ce = torch.tensor([1.0, 1.0, 4.0], requires_grad=True)
    assert not preview_weights(ce, 1, 1.005, detach=True).requires_grad
    v = preview_weights(ce, 1, 1.005, detach=False)
    v.sum().backward()
    assert ce.grad is not None and ce.grad.abs().sum() > 0


def test_per_sample_kd_equals_distill_kl_and_vanishes_on_equal_logits():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    T = 4.0
    # RepDistiller DistillKL: KL(log_softmax(s/T), softmax(t/T), reduction="sum") * T² / B
    reference = F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="sum") * T**2 / 6
    per = per_sample_kd_loss(zs, zt, T)
    assert per.shape == (6,)
    torch.testing.assert_close(per.sum(), reference)
    torch.testing.assert_close(kd_loss(zs, zt, T), reference)
    assert per_sample_kd_loss(zs, zs.clone(), T).abs().max() < 1e-6


def test_feature_alignment_parallel_and_antiparallel():
    ft = torch.randn(5, 7)
    assert feature_alignment_loss(3.0 * ft, ft).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_alignment_loss(-2.0 * ft, ft).item() == pytest.approx(4.0, abs=1e-6)


def test_center_alignment_zero_identical_and_warns_on_width_mismatch():
    fc = torch.nn.Linear(8, 4)
    assert center_alignment_loss(fc.weight, fc.bias, fc.weight.detach(), fc.bias.detach()).item() == 0.0
    other = torch.nn.Linear(8, 4)
    m_s = torch.cat([fc.weight, fc.bias[:, None]], 1)
    m_t = torch.cat([other.weight, other.bias[:, None]], 1)
    expected = ((m_s - m_t) ** 2).sum() / m_s.numel()
    torch.testing.assert_close(center_alignment_loss(fc.weight, fc.bias, other.weight, other.bias), expected)
    module = CenterAlignmentLoss()
    with pytest.warns(UserWarning, match="L_CA is inactive"):
        out = module(fc, torch.nn.Linear(16, 4))
    assert out.item() == 0.0


def test_cc_is_float32_under_autocast():
    """Under bfloat16 autocast L_CC keeps its float32 value (the profile products must not run in bfloat16)."""
    g = torch.Generator().manual_seed(3)
    n, c, d = 32, 100, 64
    weight = torch.randn(c, d, generator=g) * 0.3
    feat = F.normalize(torch.randn(n, d, generator=g), dim=1)
    u = feat @ weight.T
    w = feat @ (weight + 0.1 * torch.randn(c, d, generator=g)).T
    labels = torch.arange(n) // 4 % 5
    ref = category_contrastive_loss(u, w, labels, 4.0, 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = category_contrastive_loss(u, w, labels, 4.0, 0.07)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: PerSampleKDLoss(0.0), "model.kd_temperature"),
        (lambda: CategoryContrastiveLoss(0.0, 0.07), "model.cc_temperature"),
        (lambda: CategoryContrastiveLoss(4.0, -0.07), "model.cc_base_temperature"),
        (lambda: PreviewWeights(0.0), "model.preview_lambda"),
        (lambda: PreviewWeights(math.inf), "model.preview_lambda"),
        (lambda: CRDLoss(0, 16), "model.crd_feat_dim"),
        (lambda: CRDLoss(8, 0), "model.crd_num_negatives"),
        (lambda: CRDLoss(8, 16, temperature=0.0), "model.crd_temperature"),
        (lambda: CRDLoss(8, 16, momentum=1.5), "model.crd_momentum"),
    ],
)
def test_loss_settings_out_of_range_name_the_yaml_key(build, key):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}="):
        build()
