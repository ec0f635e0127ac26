"""Helpers of the two-process evaluation test (module-level so that spawned processes can import them)."""

import torch
from torch.utils.data import DistributedSampler

from shagcl.metrics import SGRecall

KS = (1, 3)
NUM_PREDICATES = 4


def random_images(n: int = 5, seed: int = 0) -> list[dict]:
    """``n`` small evaluation images with random GT and predictions (image 0 is easy, the others are not)."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(n):
        boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0], [40.0, 40.0, 49.0, 49.0]])
        labels = torch.randint(1, 4, (3,), generator=g)
        pairs = torch.tensor([[s, o] for s in range(3) for o in range(3) if s != o])
        gt_rels = torch.cat([pairs[:2], torch.randint(1, NUM_PREDICATES, (2, 1), generator=g)], 1)
        probs = torch.rand(len(pairs), NUM_PREDICATES, generator=g).softmax(-1)
        if i == 0:  # a perfectly predicted image: counting it twice would raise R and mR
            probs[0, gt_rels[0, 2]] += 10.0
            probs[1, gt_rels[1, 2]] += 10.0
        images.append(
            dict(
                gt_boxes=boxes,
                gt_labels=labels,
                gt_rels=gt_rels,
                pred_boxes=boxes,
                pred_labels=labels,
                obj_scores=torch.ones(3),
                pair_idx=pairs,
                rel_probs=probs,
                image_index=i,
            )
        )
    return images


def evaluate_rank(rank: int, world: int) -> dict:
    """Evaluate this rank's DistributedSampler share (padded with repeats) and return the synced metrics."""
    images = random_images()
    sampler = DistributedSampler(range(len(images)), num_replicas=world, rank=rank, shuffle=False)
    metric = SGRecall(NUM_PREDICATES, KS)
    metric.update([images[i] for i in sampler])
    return {k: v for k, v in metric.compute().items()}
