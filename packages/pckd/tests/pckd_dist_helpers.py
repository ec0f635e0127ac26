"""Importable rank functions for the two-process test (spawned workers unpickle them by module name)."""

import torch
import torch.nn.functional as F
from mmzoo.testing import lightning_eval_loader

from pckd.losses import CategoryContrastiveLoss, CRDLoss


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


def crd_inputs():
    """A CRD step on 8 of 12 training images (3 classes): embeddings, indices and the sampled rows."""
    g = torch.Generator().manual_seed(1)
    v_s = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    v_t = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    index = torch.tensor([3, 0, 7, 11, 5, 2, 9, 4])
    labels = torch.arange(12) % 3
    negatives = torch.stack([(labels != labels[i]).nonzero()[:5, 0] for i in index.tolist()])  # (8, 5)
    return v_s, v_t, index, labels, torch.cat([index[:, None], negatives], dim=1)


def crd_step(v_s, v_t, index, labels, sample_idx):
    torch.manual_seed(0)  # the same banks on every rank, as Lightning seeds every rank alike
    crd = CRDLoss(feat_dim=4, num_negatives=5, temperature=0.07, momentum=0.5)
    crd.init_memory(labels)
    loss = crd(v_s, v_t, index, sample_idx=sample_idx)
    return {"loss": loss.item(), **{k: getattr(crd, k).clone() for k in ("memory_s", "memory_t", "z_s", "z_t")}}


def two_rank_checks(rank, world):
    """One spawn for every two-process check: the two losses that talk across ranks (L_CC, gathered with gradients;
    CRD, shared memory) and the `test` loop's share of the digits test split."""
    return {**loss_ranks(rank, world), "test": test_rank(rank, world)}


def loss_ranks(rank, world):
    """L_CC (gathered with gradients) and CRD (shared memory) on this rank's slice."""
    v_s, v_t, index, labels, sample_idx = crd_inputs()
    n = index.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    torch.manual_seed(rank)  # ranks seeded differently draw different initial banks
    crd = CRDLoss(feat_dim=4, num_negatives=5)
    crd.init_memory(labels)
    drawn = crd.memory_s.clone(), crd.memory_t.clone()
    crd.broadcast_memory()
    return {
        "cc": cc_rank(rank, world),
        "crd": crd_step(v_s[sl], v_t[sl], index[sl], labels, sample_idx[sl]),
        "broadcast": (*drawn, crd.memory_s, crd.memory_t),
    }


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
