"""Helpers of the two-process DDP metric test (importable by the spawned processes)."""

import torch

from tsgsv.metrics import GroundingEvalConfig, StreamingGroundingMetrics


def ddp_tiny_eval(rank, world, root):
    """One rank of the DDP evaluation: a DistributedSampler (padded, as Lightning's) over the test annotations, the
    module's own evaluation step, then the metric's synced compute()."""
    from torch.utils.data import DataLoader, DistributedSampler

    from tsgsv.data import TSGVEvalDataset, collate_annotations

    module = tiny_eval_module()
    ds = TSGVEvalDataset(root, "test", "f_{split}.hdf5")
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
    metric = StreamingGroundingMetrics(module.eval_config)
    seen = []
    for batch in DataLoader(ds, batch_size=1, sampler=sampler, collate_fn=collate_annotations):
        seen += [item["anno_index"] for item in batch]
        module._evaluate(batch, metric)
    return seen, {k: float(v) for k, v in metric.compute().items()}


def tiny_eval_module():
    from tsgsv.models import TSGSVConfig
    from tsgsv.module import TSGSVModule

    torch.manual_seed(0)
    cfg = TSGSVConfig(video_dim=8, text_dim=8, hidden_dim=16, ffn_dim=16, num_heads=2, dropout=0.0, short_memory=4,
                      long_memory=8, future_memory=8, gru_layers=1, compressor_tokens=[2])  # fmt: skip
    ecfg = GroundingEvalConfig(min_num_segments=16, downsample_stride=2, group_size=2, map_label_extension=0.0)
    return TSGSVModule(cfg, ecfg, eval_window_batch=64).eval()
