"""CLIP4Clip's BertAdam and schedule (spec §3.10) against plain-formula references."""

import math

import torch

from shenet.optim import BertAdam, param_groups, warmup_cosine


def test_bertadam_matches_formula():
    torch.manual_seed(0)
    p0 = torch.randn(5, 3)
    grads = [torch.randn(5, 3) * s for s in (3.0, 0.1, 2.0)]  # clipped, unclipped, clipped
    lr, b1, b2, eps, wd, c = 0.01, 0.9, 0.98, 1e-6, 0.2, 1.0
    p = torch.nn.Parameter(p0.clone())
    opt = BertAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, max_grad_norm=c)
    ref, m, v = p0.clone(), torch.zeros(5, 3), torch.zeros(5, 3)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        gc = g * min(1.0, c / float(g.norm()))  # per-tensor clipping
        m = b1 * m + (1 - b1) * gc
        v = b2 * v + (1 - b2) * gc * gc
        ref = ref - lr * (m / (v.sqrt() + eps) + wd * ref)  # no bias correction, decoupled decay
        torch.testing.assert_close(p.detach(), ref)
    torch.testing.assert_close(p.grad, grads[-1])


def test_schedule_and_groups():
    assert warmup_cosine(0, 100) == 0 and math.isclose(warmup_cosine(5, 100), 0.5)
    assert math.isclose(warmup_cosine(50, 100), 0.5) and warmup_cosine(100, 100) < 1e-9
    model = torch.nn.Module()
    model.clip = torch.nn.Linear(2, 2)
    model.head = torch.nn.Linear(2, 2)
    groups = param_groups(model.named_parameters(), 1e-4, 1e-3, 0.2)
    lrs = sorted((round(g["lr"], 12), g["weight_decay"], len(g["params"])) for g in groups)
    assert lrs == [(1e-7, 0.0, 1), (1e-7, 0.2, 1), (1e-4, 0.0, 1), (1e-4, 0.2, 1)]  # CLIP at lr·coef_lr
