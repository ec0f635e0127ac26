"""Importable rank functions for the multi-process tests (spawned workers unpickle them by module name)."""

from types import SimpleNamespace

import torch
from mmzoo.testing import lightning_eval_loader

import radartag.module
from radartag.data import KwaiTagDataModule
from radartag.models import RadarConfig
from radartag.module import RadarModule
from radartag.synthetic import SyntheticKwaiConfig

# 9 validation and 19 test videos: neither divisible by 2
DEMO = SyntheticKwaiConfig(num_users=23, num_parents=3, leaves_per_parent=4, feature_dim=8)


def evaluate_rank(rank: int, world: int, root: str) -> dict:
    """One process's share of validation and test (all neighbours at evaluation, so the scores are deterministic):
    per stage the number of videos it scored and the epoch's metrics (torchmetrics gathers every process's states
    in ``compute``)."""
    dm = KwaiTagDataModule(root, "v", eval_fanout=-1, eval_batch_size=4, demo=DEMO)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    dm.setup("validate")
    torch.manual_seed(0)
    module = RadarModule(RadarConfig(video_dim=8, tag_dim=8, num_tags=dm.num_tags, hidden_dim=16, num_heads=2)).eval()
    out = {}
    for stage, loader, metric, mode in (
        ("val", dm.val_dataloader(), module.val_metrics, "validate"),
        ("test", dm.test_dataloader(), module.test_metrics, "test"),
    ):
        count = 0
        with torch.no_grad():
            for i, batch in enumerate(lightning_eval_loader(loader, rank, world, mode)):
                count += batch.num_videos
                getattr(module, f"{'validation' if stage == 'val' else 'test'}_step")(batch, i)
        out[stage] = {"count": count, "metrics": metric.compute()}
    return out


def skipped_videos_rank(rank: int, world: int) -> dict:
    """Epoch-end logging of the videos without a positive tag, per case what each process logs and the lines it
    prints (the patched ``rank_zero_*`` run on every rank; the real ones print on rank 0 only):

    - ``some``: rank 0 holds one such video of 3, rank 1 one of 2;
    - ``rank1_all``: rank 1 holds only such videos, rank 0 none (sample mAP and R@k come from rank 0's videos alone);
    - ``all``: every video of both ranks is one (sample mAP and R@k are NaN on both ranks, with a warning).
    """
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]])
    cases = {
        "some": labels[: 3 - rank],
        "rank1_all": labels[[0, 2]] if rank == 0 else torch.zeros(2, 4),
        "all": torch.zeros(3 - rank, 4),
    }
    out = {}
    for case, y in cases.items():
        module = RadarModule(RadarConfig(video_dim=8, tag_dim=8, num_tags=4, hidden_dim=8, num_heads=2))
        torch.manual_seed(rank)
        module.val_metrics.update(torch.randn(len(y), 4), y)
        logged, lines, warnings = {}, [], []
        module.log = lambda name, value, logged=logged, **kw: logged.__setitem__(name, float(value))
        radartag.module.rank_zero_info = lines.append
        radartag.module.rank_zero_warn = warnings.append
        module.on_validation_epoch_end()
        out[case] = {"logged": logged, "lines": lines, "warnings": warnings}
    return out


def both_checks_rank(rank: int, world: int, root: str) -> dict:
    """One spawn for both two-process checks: evaluation first (the second patches this module's rank_zero_*)."""
    return {"evaluate": evaluate_rank(rank, world, root), "skipped": skipped_videos_rank(rank, world)}
