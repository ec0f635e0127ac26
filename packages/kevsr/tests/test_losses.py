"""Losses of spec §3.2–3.4 against their closed forms (spec §8d)."""

import math

import torch

from kevsr.losses import multilabel_ce_loss, self_distillation_loss
from kevsr.models import refine_level2


def test_multilabel_ce_closed_form_and_empty_sets():
    s = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.1, -0.4]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    v0 = math.log(1 + math.exp(-2.0) + math.exp(0.5)) + math.log(1 + math.exp(-1.0))
    v1 = math.log(1 + math.exp(0.3) + math.exp(0.1) + math.exp(-0.4)) + math.log(1)  # no positives
    assert abs(multilabel_ce_loss(s, y).item() - (v0 + v1) / 2) < 1e-6
    assert torch.isfinite(multilabel_ce_loss(torch.full((2, 3), 80.0), torch.ones(2, 3)))


def test_multilabel_ce_gradient_signs():
    s = torch.zeros(1, 4, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    multilabel_ce_loss(s, y).backward()
    assert (s.grad[0, [0, 2]] < 0).all() and (s.grad[0, [1, 3]] > 0).all()  # descent raises positives


def test_hierarchical_refinement_uses_parent_index():
    b1 = torch.tensor([[1.0, 10.0]])
    b2 = torch.tensor([[0.1, 0.2, 0.3]])
    parent = torch.tensor([1, 0, 1])
    torch.testing.assert_close(refine_level2(b1, b2, parent), torch.tensor([[10.1, 1.2, 10.3]]))


def test_self_distillation_is_mean_euclidean_norm():
    t1, nt1 = torch.tensor([[3.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    t2, nt2 = torch.zeros(2, 3), torch.ones(2, 3)
    got = self_distillation_loss(t1, t2, nt1, nt2, beta1=1.0, beta2=2.0)
    expected = (5.0 + 0.0) / 2 + 2.0 * math.sqrt(3.0)
    assert abs(got.item() - expected) < 1e-4
    a = torch.randn(2, 3, requires_grad=True)
    zero = self_distillation_loss(a[:, :2], a, a[:, :2].detach().clone(), a.detach().clone(), 1.0, 1.0)
    assert zero.item() < 1e-3
    zero.backward()
    assert torch.isfinite(a.grad).all()


def test_self_distillation_gradient_by_hand():
    """∂/∂s^t of (1/|V|) Σ_v ‖s^t_v − s^nt_v‖_2 is (s^t_v − s^nt_v) / (|V| ‖s^t_v − s^nt_v‖): a unit vector per video
    and level (divided by |V|), whatever the distance; the opposite for s^nt (mutual); 0 where the streams agree."""
    t1 = torch.tensor([[3.0, 0.0], [1.0, 1.0]], requires_grad=True)  # video 0 differs by (3, -4); video 1 agrees
    nt1 = torch.tensor([[0.0, 4.0], [1.0, 1.0]], requires_grad=True)
    t2 = torch.tensor([[30.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)  # 10x the distance: same gradient
    nt2 = torch.tensor([[0.0, 40.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    self_distillation_loss(t1, t2, nt1, nt2, beta1=1.0, beta2=1.0).backward()
    expected1 = torch.tensor([[0.6, -0.8], [0.0, 0.0]]) / 2  # (3, -4) / 5, mean over 2 videos
    expected2 = torch.tensor([[0.6, -0.8, 0.0], [0.0, 0.0, 0.0]]) / 2
    torch.testing.assert_close(t1.grad, expected1)
    torch.testing.assert_close(nt1.grad, -expected1)
    torch.testing.assert_close(t2.grad, expected2)
    torch.testing.assert_close(nt2.grad, -expected2)
    for stop in ("t", "nt"):
        a, b = t1.detach().clone().requires_grad_(), nt1.detach().clone().requires_grad_()
        self_distillation_loss(a, a, b, b, 1.0, 1.0, stop_grad=stop).backward()
        assert (a.grad is None) == (stop == "t") and (b.grad is None) == (stop == "nt")
        learner = b if stop == "t" else a
        torch.testing.assert_close(learner.grad.abs(), 2 * expected1.abs())  # both levels share the tensors


def test_self_distillation_stop_grad():
    t = torch.randn(2, 3, requires_grad=True)
    nt = torch.randn(2, 3, requires_grad=True)
    self_distillation_loss(t, t, nt, nt, 1.0, 1.0, stop_grad="nt").backward()
    assert t.grad is not None and nt.grad is None
