# ruff: noqa: E402  (imports follow the sys.path fix below)
"""radartag benchmark: sampled training step and evaluation throughput; memory bounded by the batch, not the graph.

Builds random heterogeneous graphs (videos with 4 tags each, follow edges, a tag ontology) of increasing size —
up to 200k videos — and reports, per size, the sampled batch (input nodes, batch tensor MB) and step time / peak
memory. The batch's input nodes stay bounded by batch × fanout^L whatever the graph size (the issue's scale check).
Paper size (h 768, batch 1024, 3114 tags) on CUDA; small widths on CPU (< 2 min).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# this file is named like the package: drop its own folder from the import path so `import radartag` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch
from mmzoo.bench import emit, measure, pick_device
from radartag.data import GraphCollator
from radartag.losses import RadarLoss
from radartag.models import Radar, RadarConfig
from radartag.sampler import BlockSampler
from radartag.synthetic import random_graph


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    dim, hidden, heads, B, K = (768, 768, 8, 1024, 3114) if cuda else (32, 32, 4, 256, 500)
    follows = 80 if cuda else 10
    for num_videos in (20_000, 200_000):
        bench_size(num_videos, dim, hidden, heads, B, K, follows, device)


def bench_size(num_videos: int, dim: int, hidden: int, heads: int, B: int, K: int, follows: int,
               device: torch.device) -> None:  # fmt: skip
    """Sample one batch from a random graph of ``num_videos`` videos; time sampling, a train step, inference."""
    graph = random_graph(num_videos, K, dim, follows)
    cfg = RadarConfig(video_dim=dim, tag_dim=dim, num_tags=K, hidden_dim=hidden, num_heads=heads)
    sampler = BlockSampler(graph, cfg.relations, cfg.num_layers, fanout=4)
    collate = GraphCollator(graph, sampler, K)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randperm(num_videos, generator=gen)[:B].tolist()
    batch = collate(ids).to(device)
    batch_mb = sum(t.numel() * t.element_size() for t in (batch.video_x, batch.tag_x, batch.labels)) / 2**20
    common = {"bench": "radartag", "videos_in_graph": num_videos, "batch": B, "tags": K,
              "input_videos": int(batch.video_x.shape[0]), "batch_tensor_mb": round(batch_mb, 1)}  # fmt: skip
    emit({**common, "case": "sample_batch", **measure(lambda: collate(ids), B, torch.device("cpu"), 1, 3)})
    torch.manual_seed(0)
    model = Radar(cfg).to(device)
    loss_fn = RadarLoss(total_step=1000).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)

    def train_step():
        out = model(batch.video_x, batch.tag_x, batch.tag_ids, batch.blocks, batch.num_videos)
        loss = loss_fn(out.scores, batch.labels, out.discriminator_logits)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    emit({**common, "case": "train_step", **measure(train_step, B, device, 2, 5)})
    model.eval()

    @torch.no_grad()
    def infer():
        model(batch.video_x, batch.tag_x, batch.tag_ids, batch.blocks, batch.num_videos)

    emit({**common, "case": "inference", **measure(infer, B, device, 2, 5)})


if __name__ == "__main__":
    main()
