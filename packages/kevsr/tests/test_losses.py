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


def test_self_distillation_stop_grad():
    t = torch.randn(2, 3, requires_grad=True)
    nt = torch.randn(2, 3, requires_grad=True)
    self_distillation_loss(t, t, nt, nt, 1.0, 1.0, stop_grad="nt").backward()
    assert t.grad is not None and nt.grad is None
