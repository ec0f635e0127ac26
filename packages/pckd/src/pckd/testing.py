"""Writers of tiny files in the official formats (spec §8b), for tests and demos."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from pckd.models import build_backbone

__all__ = [
    "write_cifar100_python",
    "write_imagenet_folder",
    "write_repdistiller_checkpoint",
    "write_torchvision_weights",
]


def write_cifar100_python(
    root: str | Path, num_classes: int = 10, n_train_per_class: int = 4, n_test_per_class: int = 2, seed: int = 0
) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` exactly as the official pickles (spec §4.1)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        labels = [c for c in range(num_classes) for _ in range(per_class)]
        entry = {
            "data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
            "fine_labels": labels,
            "coarse_labels": [c % 20 for c in labels],
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split} batch",
        }
        with open(folder / split, "wb") as fh:
            pickle.dump(entry, fh)
    meta = {"fine_label_names": [f"class_{c}" for c in range(num_classes)], "coarse_label_names": ["c"] * 20}
    with open(folder / "meta", "wb") as fh:
        pickle.dump(meta, fh)
    return folder


def write_repdistiller_checkpoint(path: str | Path, arch: str, num_classes: int, in_channels: int = 3) -> Path:
    """Write ``{"model": state_dict, "epoch": 240}`` of a randomly initialised ``arch`` (spec §4.2)."""
    net = build_backbone(arch, num_classes, in_channels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "epoch": 240, "accuracy": 0.0}, path)
    return path


def write_imagenet_folder(root: str | Path, num_classes: int = 2, per_class: int = 1, size: int = 8) -> Path:
    """Write ``<root>/{train,val}/<wnid>/*.JPEG`` (ILSVRC-2012 ImageFolder layout, spec §4.3): ``num_classes``
    class folders named like wnids, each with ``per_class`` random ``size`` x ``size`` JPEGs per split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = Path(root)
    for split in ("train", "val"):
        for c in range(num_classes):
            wnid = f"n{1440764 + c:08d}"
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * per_class + i + 1:08d}.JPEG"
                Image.fromarray(pixels, "RGB").save(folder / name, "JPEG")
    return root


def write_torchvision_weights(hub_dir: str | Path, arch: str) -> Path:
    """Write a randomly initialised torchvision ResNet's state_dict (``tv_resnet18``/``tv_resnet34``) under the file
    name torchvision gives its ImageNet weights, in ``<hub_dir>/checkpoints/`` (the local torch hub cache read for
    ``IMAGENET1K_V1``)."""
    import torchvision

    from pckd.module import TORCHVISION_WEIGHTS

    path = Path(hub_dir) / "checkpoints" / TORCHVISION_WEIGHTS[arch]
    path.parent.mkdir(parents=True, exist_ok=True)
    net = getattr(torchvision.models, arch.removeprefix("tv_"))(weights=None)
    torch.save(net.state_dict(), path)
    return path
