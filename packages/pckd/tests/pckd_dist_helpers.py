"""Importable rank functions for the two-process test (spawned workers unpickle them by module name)."""

import torch

from pckd.losses import CategoryContrastiveLoss


def cc_inputs():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, 5, generator=g)
    w = torch.randn(8, 5, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 2, 0])
    return u, w, labels


def cc_rank(rank, world):
    u, w, labels = cc_inputs()
    n = u.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    u_l, w_l = u[sl].clone().requires_grad_(True), w[sl].clone().requires_grad_(True)
    loss = CategoryContrastiveLoss(4.0, 0.07)(u_l, w_l, labels[sl]).mean()
    loss.backward()
    # DDP averages gradients over ranks: scale by 1/world to compare with the whole-batch mean
    return loss.item(), u_l.grad / world, w_l.grad / world
