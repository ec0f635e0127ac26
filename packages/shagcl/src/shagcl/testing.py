"""Writers of tiny datasets in the official VG150 / GQA200 formats (spec §4.6), for tests and the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from shagcl.gcl import VG150_PREDICATES_FREQ_ORDER

__all__ = [
    "write_detector_checkpoint",
    "write_glove",
    "write_gqa200",
    "write_vg150",
    "zipf_predicates",
    "zipf_quota_predicates",
]


def zipf_predicates(rng: np.random.Generator, n: int, num_predicates: int, exponent: float = 1.5) -> np.ndarray:
    """Draw ``n`` predicate ids in 1..num_predicates with probability ∝ p^(−exponent) (long-tailed).

    The sampled counts follow the Zipf law only in expectation: rare ids can come out in any order and with
    counts far below their expectation (e.g. 2 instead of 7)."""
    p = np.arange(1, num_predicates + 1, dtype=float) ** -exponent
    return rng.choice(np.arange(1, num_predicates + 1), size=n, p=p / p.sum())


def zipf_quota_predicates(rng: np.random.Generator, n: int, num_predicates: int, exponent: float = 1.5) -> np.ndarray:
    """``n`` predicate ids whose counts are exactly the Zipf shape: count_p = n·p^(−exponent)/Σ_q q^(−exponent),
    rounded by largest remainder (so they sum to n and are non-increasing in p), in random order.

    Unlike :func:`zipf_predicates`, id order is the frequency order (spec §3.6.1) and the tail does not fluctuate,
    like the fixed ``2000·p^(−1.5)`` counts of spec §8c.1."""
    w = np.arange(1, num_predicates + 1, dtype=float) ** -exponent
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1  # largest remainder (ties: lower id first)
    ids = np.repeat(np.arange(1, num_predicates + 1), counts)
    return ids[rng.permutation(n)]


def _scene(
    rng: np.random.Generator,
    n_obj_classes: int,
    n_predicates: int,
    min_obj: int,
    max_obj: int,
    width: int,
    height: int,
    exponent: float,
):
    """One synthetic image: boxes (N, 4) xyxy pixels, labels (N,) 1-based, relations (R, 3) local."""
    n = int(rng.integers(min_obj, max_obj + 1))
    x1 = rng.uniform(0, width * 0.7, n)
    y1 = rng.uniform(0, height * 0.7, n)
    w = rng.uniform(width * 0.1, width * 0.3, n)
    h = rng.uniform(height * 0.1, height * 0.3, n)
    boxes = np.stack([x1, y1, np.minimum(x1 + w, width - 1), np.minimum(y1 + h, height - 1)], 1).round()
    labels = rng.integers(1, n_obj_classes + 1, n)
    n_rel = int(rng.integers(1, min(n * (n - 1), n + 2) + 1))
    pairs = [(s, o) for s in range(n) for o in range(n) if s != o]
    chosen = rng.choice(len(pairs), size=n_rel, replace=False)
    preds = zipf_predicates(rng, n_rel, n_predicates, exponent)
    rels = np.array([[pairs[c][0], pairs[c][1], p] for c, p in zip(chosen, preds, strict=True)], dtype=np.int64)
    return boxes, labels, rels


def write_vg150(
    root: str | Path,
    n_images: int = 32,
    n_obj_classes: int = 8,
    n_predicates: int = 10,
    seed: int = 0,
    n_test: int | None = None,
    min_obj: int = 3,
    max_obj: int = 6,
    exponent: float = 1.5,
    with_images: bool = False,
    empty_images: int = 1,
    predicate_counts: Literal["sampled", "quota"] = "sampled",
    n_val: int = 0,
) -> Path:
    """Write ``root/vg/{VG-SGG-with-attri.h5, VG-SGG-dicts-with-attri.json, image_data.json}`` (§4.1).

    Predicate ids are Zipf distributed with id 1 the most frequent: ``predicate_counts="sampled"`` draws every
    relation's predicate independently (:func:`zipf_predicates`; the order and the tail hold only in
    expectation), ``"quota"`` gives each part exactly Zipf-shaped counts (:func:`zipf_quota_predicates`), so the
    file order is the training-frequency order; the parts are the first ``n_val`` split-0 images (the loader's
    val carve-out), the other split-0 images (train) and the split-2 images (test).
    The last ``n_test`` images (default a quarter) get split 2, the rest 0; ``empty_images`` extra train images
    have no relation (−1 ranges). Boxes are stored as cxcywh at the scale where the longer side is 1024.
    Returns the ``vg`` folder.
    """
    import h5py

    rng = np.random.default_rng(seed)
    out = Path(root) / "vg"
    out.mkdir(parents=True, exist_ok=True)
    n_test = n_images // 4 if n_test is None else n_test
    boxes_1024, labels_all, rel_pairs, rel_preds = [], [], [], []
    first_box, last_box, first_rel, last_rel, split, image_data = [], [], [], [], [], []
    total = n_images + empty_images
    scenes = []
    for i in range(total):
        width, height = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        boxes, labels, rels = _scene(rng, n_obj_classes, n_predicates, min_obj, max_obj, width, height, exponent)
        if i >= n_images:
            rels = rels[:0]
        scenes.append((width, height, boxes, labels, rels))
    if predicate_counts == "quota":  # re-draw every split's predicates with exact Zipf counts
        n_train_split = n_images - n_test
        for lo, hi in (
            (0, min(n_val, n_train_split)),
            (min(n_val, n_train_split), n_train_split),
            (n_train_split, n_images),
        ):
            members = range(lo, hi)
            quota = zipf_quota_predicates(rng, sum(len(scenes[i][4]) for i in members), n_predicates, exponent)
            start = 0
            for i in members:
                rels = scenes[i][4]
                rels[:, 2] = quota[start : start + len(rels)]
                start += len(rels)
    elif predicate_counts != "sampled":
        raise ValueError(f"predicate_counts={predicate_counts!r}: expected sampled|quota")
    for i, (width, height, boxes, labels, rels) in enumerate(scenes):
        base = len(labels_all)
        scale = 1024 / max(width, height)
        for b, lab in zip(boxes, labels, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            boxes_1024.append([(b[0] + w / 2) * scale, (b[1] + h / 2) * scale, w * scale, h * scale])
            labels_all.append([lab])
        first_box.append(base)
        last_box.append(base + len(labels) - 1)
        if len(rels):
            first_rel.append(len(rel_preds))
            last_rel.append(len(rel_preds) + len(rels) - 1)
        else:
            first_rel.append(-1)
            last_rel.append(-1)
        for s, o, p in rels:
            rel_pairs.append([base + s, base + o])
            rel_preds.append([p])
        split.append(2 if n_images - n_test <= i < n_images else 0)
        image_id = 10 + i
        image_data.append(
            {
                "image_id": image_id,
                "width": width,
                "height": height,
                "coco_id": None,
                "flickr_id": None,
                "url": f"https://example.invalid/{image_id}.jpg",
            }
        )
        if with_images:
            from PIL import Image

            (out / "VG_100K").mkdir(exist_ok=True)
            pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(out / "VG_100K" / f"{image_id}.jpg")
    with h5py.File(out / "VG-SGG-with-attri.h5", "w") as f:
        f["split"] = np.array(split, dtype=np.int64)
        f["img_to_first_box"] = np.array(first_box, dtype=np.int64)
        f["img_to_last_box"] = np.array(last_box, dtype=np.int64)
        f["img_to_first_rel"] = np.array(first_rel, dtype=np.int64)
        f["img_to_last_rel"] = np.array(last_rel, dtype=np.int64)
        f["labels"] = np.array(labels_all, dtype=np.int64)
        f["boxes_1024"] = np.array(boxes_1024, dtype=np.float64).round().astype(np.int64)
        f["boxes_512"] = (np.array(boxes_1024) / 2).round().astype(np.int64)
        f["attributes"] = np.zeros((len(labels_all), 10), dtype=np.int64)
        f["relationships"] = np.array(rel_pairs, dtype=np.int64).reshape(-1, 2)
        f["predicates"] = np.array(rel_preds, dtype=np.int64).reshape(-1, 1)
    obj_names = [f"object{i}" for i in range(1, n_obj_classes + 1)]
    pred_names = [f"predicate{i}" for i in range(1, n_predicates + 1)]
    if n_predicates == 50:  # VG150's own names (alphabetical, as released), which the frequency re-indexing checks
        pred_names = sorted(VG150_PREDICATES_FREQ_ORDER[1:])
    dicts = {
        "label_to_idx": {n: i + 1 for i, n in enumerate(obj_names)},
        "idx_to_label": {str(i + 1): n for i, n in enumerate(obj_names)},
        "predicate_to_idx": {n: i + 1 for i, n in enumerate(pred_names)},
        "idx_to_predicate": {str(i + 1): n for i, n in enumerate(pred_names)},
        "attribute_to_idx": {"red": 1},
        "idx_to_attribute": {"1": "red"},
        "object_count": {n: int(np.sum(np.array(labels_all) == i + 1)) for i, n in enumerate(obj_names)},
        "predicate_count": {n: int(np.sum(np.array(rel_preds) == i + 1)) for i, n in enumerate(pred_names)},
        "attribute_count": {"red": 0},
    }
    (out / "VG-SGG-dicts-with-attri.json").write_text(json.dumps(dicts))
    (out / "image_data.json").write_text(json.dumps(image_data))
    return out


def write_gqa200(
    root: str | Path,
    n_train: int = 24,
    n_test: int = 8,
    n_obj_classes: int = 8,
    n_predicates: int = 10,
    seed: int = 0,
    min_obj: int = 3,
    max_obj: int = 6,
    exponent: float = 1.5,
    with_images: bool = False,
) -> Path:
    """Write ``root/gqa/{GQA_200_ID_Info.json, GQA_200_Train.json, GQA_200_Test.json}`` (§4.2), with
    ``with_images`` also a random JPEG of each listed size in ``root/gqa/images/``. Returns the folder."""
    rng = np.random.default_rng(seed)
    out = Path(root) / "gqa"
    out.mkdir(parents=True, exist_ok=True)
    classes = ["__background__", *[f"object{i}" for i in range(1, n_obj_classes + 1)]]
    predicates = ["__background__", *[f"predicate{i}" for i in range(1, n_predicates + 1)]]
    counts = np.zeros(n_predicates + 1, dtype=int)
    for name, n in (("Train", n_train), ("Test", n_test)):
        split = {
            "filenames_all": [],
            "img_info_all": [],
            "gt_boxes_all": [],
            "gt_classes_all": [],
            "relationships_all": [],
        }
        for i in range(n):
            width, height = int(rng.integers(200, 400)), int(rng.integers(200, 400))
            boxes, labels, rels = _scene(rng, n_obj_classes, n_predicates, min_obj, max_obj, width, height, exponent)
            if name == "Train":
                np.add.at(counts, rels[:, 2], 1)
            split["filenames_all"].append(f"{name.lower()}{i}.jpg")
            if with_images:
                from PIL import Image

                (out / "images").mkdir(exist_ok=True)
                pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(out / "images" / f"{name.lower()}{i}.jpg")
            split["img_info_all"].append({"width": width, "height": height})
            split["gt_boxes_all"].append(boxes.tolist())
            split["gt_classes_all"].append(labels.tolist())
            split["relationships_all"].append(rels.tolist())
        (out / f"GQA_200_{name}.json").write_text(json.dumps(split))
    info = {
        "ind_to_classes": classes,
        "ind_to_predicates": predicates,
        "rel_count": {p: int(c) for p, c in zip(predicates, counts, strict=True)},
        "rel_name_to_id": {p: i for i, p in enumerate(predicates)},
    }
    (out / "GQA_200_ID_Info.json").write_text(json.dumps(info))
    return out


def write_detector_checkpoint(path: str | Path, num_classes: int, seed: int = 0) -> Path:
    """Write the state dict of a randomly initialised torchvision ``fasterrcnn_resnet50_fpn`` with ``num_classes``
    (incl. background): the file ``shagcl extract --checkpoint`` and ``model.config.box_head_checkpoint`` read."""
    import torch

    from shagcl.detector import build_detector

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_detector(num_classes, None, allow_random=True).state_dict(), path)
    return path


def write_glove(path: str | Path, words: list[str], dim: int = 200, seed: int = 0) -> Path:
    """Write random vectors in the ``glove.6B.<dim>d.txt`` text format (``word v1 ... v_dim`` per line) for every
    word of ``words`` (multi-word names are split into their words)."""
    rng = np.random.default_rng(seed)
    vocab = sorted({w for name in words for w in name.split(" ")})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [" ".join([w, *(f"{v:.5f}" for v in rng.standard_normal(dim))]) for w in vocab]
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    return path
