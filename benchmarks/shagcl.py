"""SHA-GCL relation head: train-step and inference throughput (images/s) and peak memory.

Paper size on CUDA (VG150: 151 classes, 51 predicates, H = 512, P = 4096, 8 images x 20 objects, 1024 training
pairs per image, divide-4 groups, rect branch on, the default feature path: trainable fc6/fc7 on 256x7x7 pooled
object maps and the official union path on 4-level 1024x7x7 union maps); a small size on CPU (< 2 min).
"""

from __future__ import annotations

import argparse
import os
import sys

# This file is named like the package: drop benchmarks/ from sys.path so `import shagcl` finds the package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import torch  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402
from shagcl.gcl import OFFICIAL_PREDICATE_COUNTS, group_predicates, median_resampling_rates  # noqa: E402
from shagcl.losses import GCLLoss  # noqa: E402
from shagcl.models import SHAGCL, SHAGCLConfig  # noqa: E402


def random_batch(images: int, objects: int, pairs: int, cfg: SHAGCLConfig, device: torch.device) -> dict:
    n = images * objects
    xy = torch.rand(n, 2, device=device) * 400
    wh = torch.rand(n, 2, device=device) * 150 + 10
    local = torch.stack(
        [
            torch.randint(0, objects, (images * pairs,), device=device),
            torch.randint(0, objects, (images * pairs,), device=device),
        ],
        -1,
    )
    local[:, 1] = torch.where(local[:, 0] == local[:, 1], (local[:, 1] + 1) % objects, local[:, 1])
    offset = torch.arange(images, device=device).repeat_interleave(pairs)[:, None] * objects
    c, r = cfg.roi_channels, cfg.roi_resolution
    return {
        "obj_pooled": torch.randn(n, c, r, r, device=device).relu(),
        "boxes": torch.cat([xy, xy + wh], -1),
        "obj_image_sizes": torch.full((n, 2), 600.0, device=device),
        "num_objs": [objects] * images,
        "labels": torch.randint(1, cfg.num_obj_classes, (n,), device=device),
        "det_logits": torch.randn(n, cfg.num_obj_classes, device=device),
        "pair_idx": local + offset,
        "union_pooled": torch.randn(images * pairs, cfg.fpn_levels * c, r, r, device=device).relu(),
        "pair_image_sizes": torch.full((images * pairs, 2), 600.0, device=device),
        "pair_labels": torch.where(
            torch.rand(images * pairs, device=device) < 0.25,
            torch.randint(1, cfg.num_predicates, (images * pairs,), device=device),
            0,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    paper = device.type == "cuda"
    counts = OFFICIAL_PREDICATE_COUNTS["vg150"]
    if paper:
        cfg = SHAGCLConfig(word_embeddings="random", feature_dim=4096)
        images, objects, train_pairs, iters = 8, 20, 1024, 10
        groups = group_predicates(counts[1:], 4.0, 200)
    else:
        cfg = SHAGCLConfig(
            word_embeddings="random",
            feature_dim=256,
            hidden_dim=64,
            num_heads=2,
            key_dim=32,
            ffn_dim=128,
            obj_layers=2,
            edge_layers=1,
            word_dim=32,
            roi_channels=16,
        )
        images, objects, train_pairs, iters = 2, 8, 56, 3
        groups = group_predicates(counts[1:], 4.0, 200)
    torch.manual_seed(0)
    model = SHAGCL(cfg).to(device)
    model.build_decoder(groups, torch.ones(cfg.num_obj_classes, cfg.num_obj_classes, cfg.num_predicates))
    model.to(device)
    loss_fn = GCLLoss(groups, median_resampling_rates(counts, groups)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    train_batch = random_batch(images, objects, train_pairs, cfg, device)

    def train_step():
        model.train()
        with torch.autocast(device.type, dtype=torch.float16, enabled=paper):
            out = model(train_batch)
        loss = loss_fn(out.rel_logits, train_batch["pair_labels"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    emit(
        {
            "bench": "shagcl",
            "case": "train_step",
            "batch": images,
            "objects": objects,
            "pairs": train_pairs,
            **measure(train_step, items_per_call=images, device=device, warmup=2, iters=iters),
        }
    )
    test_batch = random_batch(images, objects, objects * (objects - 1), cfg, device)

    @torch.no_grad()
    def infer():
        model.eval()
        with torch.autocast(device.type, dtype=torch.float16, enabled=paper):
            model(test_batch, last_only=True).rel_logits[-1].float().softmax(-1)

    emit(
        {
            "bench": "shagcl",
            "case": "inference_all_pairs",
            "batch": images,
            "objects": objects,
            "pairs": objects * (objects - 1),
            **measure(infer, items_per_call=images, device=device, warmup=2, iters=iters),
        }
    )


if __name__ == "__main__":
    main()
