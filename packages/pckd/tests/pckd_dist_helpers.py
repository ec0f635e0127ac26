"""Importable rank functions for the two-process test (spawned workers unpickle them by module name)."""

import torch
from mmzoo.testing import lightning_eval_loader

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


def test_rank(rank, world):
    """One process's share of `test` on the digits test split (497 images): the dataset indices it saw and the
    epoch's top-1 / top-5 accuracy (torchmetrics gathers every process's states in ``compute``)."""
    from types import SimpleNamespace

    from pckd.data import PCKDDataModule
    from pckd.models import PCKDConfig
    from pckd.module import PCKDModule

    dm = PCKDDataModule(dataset="digits", eval_batch_size=64, num_workers=0)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    dm.setup("test")
    loader = lightning_eval_loader(dm.test_dataloader(), rank, world, "test")
    torch.manual_seed(0)
    cfg = PCKDConfig(student_arch="digits_student64", teacher_arch=None, num_classes=10, in_channels=1)
    module = PCKDModule(cfg, method="ce", top5=True).eval()
    seen = []
    with torch.no_grad():
        for batch in loader:
            seen += batch["index"].tolist()
            module.test_step(batch, 0)
    return {"seen": seen, "acc1": module.test_acc1.compute(), "acc5": module.test_acc5.compute()}
