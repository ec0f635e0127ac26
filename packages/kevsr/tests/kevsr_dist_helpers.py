"""Importable rank functions for the multi-process tests (spawned workers unpickle them by module name)."""

from types import SimpleNamespace

import torch
from mmzoo.testing import lightning_eval_loader

from kevsr.data import KEVSRDataModule
from kevsr.models import KEVSRConfig
from kevsr.module import KEVSRModule

TINY = dict(dim=16, f2d_dim=16, f3d_dim=8, text_dim=12, region_dim=16, kg_dim=8, num_frames=4, num_regions=3,
            num_keywords=3, num_level1=2, num_level2=5, temporal_layers=1, temporal_heads=2, region_heads=2)  # fmt: skip


def validate_rank(rank: int, world: int, data_root: str, kg_path: str) -> dict:
    """One process's share of validation on the random data set: the videos it saw and the epoch's metrics
    (torchmetrics gathers every process's states in ``compute``)."""
    dm = KEVSRDataModule(data_root=data_root, kg_path=kg_path, kg_dim=8, num_regions=3, num_keywords=3,
                         eval_batch_size=3, num_workers=0)  # fmt: skip
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    dm.setup("validate")
    loader = lightning_eval_loader(dm.val_dataloader(), rank, world)
    torch.manual_seed(0)
    module = KEVSRModule(KEVSRConfig(**TINY), streams="both").eval()
    module.model.set_hierarchy(dm.hierarchy.parent_index)
    seen = []
    with torch.no_grad():
        for batch in loader:
            seen += list(batch["video_id"])
            module._eval_step(batch, "val")
    metrics = {}
    for name, metric in module.metrics.items():
        if name.startswith("val_"):
            metrics[name] = metric.compute()
    return {"seen": seen, "metrics": metrics}
