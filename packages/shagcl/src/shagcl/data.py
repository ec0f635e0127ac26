"""Readers of the official VG150 and GQA200 scene-graph formats (spec §4), feature sources (§3.2.4), relation
pair sampling (§3.7), training statistics (§3.5, §3.6.4), collate, and the LightningDataModule.

Each reader parses its annotation files into per-image records (boxes xyxy in pixels, labels, relations with
local indices and predicates in frequency order). The shared :class:`SceneGraphDataset` base turns a record
into a training/evaluation sample: object features, sampled relation pairs and their union features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, read_json, reload_train_loader_every_epoch, worker_options
from mmzoo.features import H5Features, open_h5
from torch.utils.data import DataLoader, Dataset

from shagcl.gcl import VG150_PREDICATE_REMAP, VG150_PREDICATES_FREQ_ORDER
from shagcl.models import box_iou

__all__ = [
    "SceneRecord",
    "SyntheticFeaturesConfig",
    "SceneGraphDataset",
    "VG150Dataset",
    "GQA200Dataset",
    "TrainStatistics",
    "compute_statistics",
    "collate_scene_graphs",
    "SGGDataModule",
    "VG_CORRUPTED_IMAGE_IDS",
]

log = logging.getLogger(__name__)
SEE_README = "see README, Data preparation"
VG_CORRUPTED_IMAGE_IDS = (1592, 1722, 4616, 4617)

DatasetName = Literal["vg150", "gqa200"]
"""Readers of :class:`SGGDataModule` (``data.dataset``)."""
Split = Literal["train", "val", "test"]
Protocol = Literal["predcls", "sgcls", "sgdet"]
"""PredCls, SGCls, SGDet (spec §2; ``data.protocol``, as ``model.config.protocol``)."""
FeatureSource = Literal["synthetic", "cached"]
"""Where object and union features come from (``data.feature_source``)."""
PredicateOrder = Literal["frequency", "file"]
"""VG150 predicate indices: the official frequency re-indexing, or the vocabulary file's (``data.predicate_order``)."""
MissingFeatures = Literal["raise", "drop"]
INCOMPLETE_PREFIX = "incomplete:"
"""``shagcl extract`` writes an image's group under this prefix and renames it once every dataset is written, so a
run stopped mid-image leaves no group that looks complete; readers ignore such names and the next run removes them."""
"""A cached source's image without features in the cache (``data.missing_features``): refuse, or leave it out."""


@dataclass
class SceneRecord:
    """One annotated image: boxes (N, 4) xyxy pixels, labels (N,) 1-based, rels (G, 3) = (sub, obj, predicate)."""

    image_id: str
    filename: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    rels: np.ndarray


@dataclass
class SyntheticFeaturesConfig:
    """Synthetic features for tests/demos (§8a): r_i = class vector + noise, u_so = predicate vector + noise."""

    feature_dim: int = 64
    """P of the synthetic features (must equal model.config.feature_dim)."""
    noise: float = 1.0
    """Std of the Gaussian noise added to the class/predicate vectors."""
    det_logit_scale: float = 3.0
    """Synthetic detector logits = scale · onehot(label) + N(0, 1) (SGCls/SGDet)."""
    box_jitter: float = 0.05
    """SGDet: detections are GT boxes jittered by this fraction of their size."""
    seed: int = 0
    """Seed of the class/predicate vectors (noise is seeded per image index)."""
    pooled: bool = False
    """Also emit pooled ROI maps (class / predicate map + noise): obj_pooled (N, C, R, R) and union_pooled
    (M, L·C, R, R), the inputs of the trainable box head and the official union path."""
    pooled_channels: int = 8
    """C of the synthetic pooled maps (must equal model.config.roi_channels)."""
    pooled_resolution: int = 7
    """R of the synthetic pooled maps (model.config.roi_resolution)."""
    pooled_levels: int = 4
    """L of the synthetic union maps (model.config.fpn_levels)."""

    def __post_init__(self) -> None:
        for key in ("feature_dim", "pooled_channels", "pooled_resolution", "pooled_levels"):
            check_range(f"data.synthetic.{key}", getattr(self, key), ge=1, integer=True)
        # standard deviations and scales; a negative logit scale would make the synthetic detector avoid the label
        for key in ("noise", "det_logit_scale", "box_jitter"):
            check_range(f"data.synthetic.{key}", getattr(self, key), ge=0)


class SceneGraphDataset(Dataset):
    """Base of the format readers: features + pair sampling for one split.

    Item dict: index; image_id str; image_size (2,) = (W, H); boxes (N, 4) the boxes the model sees (GT boxes,
    or detections in SGDet, plus the GT boxes in SGDet training with ``sgdet_add_gt_boxes``); labels (N,) their
    object targets (GT labels; SGDet: matched GT label or 0); det_logits (N, C_obj) or None; obj_feats (N, P) and
    obj_pooled (N, C, R, R) (either may be None: what the cache / synthetic source holds); pair_idx (M, 2) local;
    pair_labels (M,) (0 = background); union_feats (M, P) and union_pooled (M, L·C, R, R) (either may be None);
    gt_boxes (G_obj, 4); gt_labels (G_obj,); gt_rels (G, 3).
    Training samples ≤ ``max_fg_pairs`` labelled pairs plus background pairs up to ``max_pairs`` (§3.7);
    evaluation uses all ordered pairs s ≠ o.
    """

    CACHE_KEYS = ("boxes", "obj_feats", "obj_pooled", "det_logits", "union_feats", "union_pooled", "num_det")

    records: list[SceneRecord]
    object_classes: list[str]
    predicate_classes: list[str]

    @staticmethod
    def _check_options(split: str, protocol: str, feature_source: str, missing_features: str = "raise") -> None:
        """Refuse unknown values before any file is read: the readers branch on them with if/else (an unknown split
        reads the training images, or the GQA test file; an unknown protocol gives SGCls inputs; anything but
        ``raise`` would drop images without features)."""
        check_choice("split", split, get_args(Split))
        check_choice("data.protocol", protocol, get_args(Protocol))
        check_choice("data.feature_source", feature_source, get_args(FeatureSource))
        check_choice("data.missing_features", missing_features, get_args(MissingFeatures))

    @staticmethod
    def _check_counts(
        num_val_images: int, max_pairs: int, max_fg_pairs: int, samples_per_gt_rel: int, max_images: int | None
    ) -> None:
        """Refuse counts that the readers would slice with (a negative one drops images or pairs from the end) or
        sample with (0 stops in torch.multinomial)."""
        check_range("data.num_val_images", num_val_images, ge=0, integer=True)
        check_range("data.max_pairs", max_pairs, ge=1, integer=True)
        check_range("data.max_fg_pairs", max_fg_pairs, ge=1, integer=True)
        check_range("data.samples_per_gt_rel", samples_per_gt_rel, ge=1, integer=True)
        if max_fg_pairs > max_pairs:  # official: the foreground is a fraction (0.25) of the pairs per image
            raise ValueError(
                f"data.max_fg_pairs={max_fg_pairs} exceeds data.max_pairs={max_pairs}: the foreground pairs are part "
                f"of the max_pairs sampled per training image (1024 and 256 officially)"
            )
        if max_images is not None:  # null: every image
            check_range("max_images", max_images, ge=1, integer=True)

    def _init_features(
        self,
        split: Split,
        protocol: Protocol,
        feature_source: FeatureSource,
        feature_cache: str | None,
        synthetic: SyntheticFeaturesConfig,
        max_pairs: int,
        max_fg_pairs: int,
        filter_duplicate_rels: bool,
        samples_per_gt_rel: int,
        sgdet_add_gt_boxes: bool = True,
        missing_features: MissingFeatures = "raise",
    ) -> None:
        self.split, self.protocol, self.feature_source = split, protocol, feature_source
        self.sgdet_add_gt_boxes = sgdet_add_gt_boxes
        self.train = split == "train"
        self.max_pairs, self.max_fg_pairs = max_pairs, max_fg_pairs
        self.filter_duplicate_rels, self.samples_per_gt_rel = filter_duplicate_rels, samples_per_gt_rel
        self.synthetic = synthetic
        self.epoch_seed = 0
        if feature_source == "synthetic":
            g = torch.Generator().manual_seed(synthetic.seed)
            self.class_vectors = torch.randn(len(self.object_classes), synthetic.feature_dim, generator=g)
            self.predicate_vectors = torch.randn(len(self.predicate_classes), synthetic.feature_dim, generator=g)
        elif feature_source == "cached":
            if not feature_cache or not Path(feature_cache).is_file():
                raise FileNotFoundError(
                    f"data.feature_cache={feature_cache!r}: no feature cache; write one with `shagcl extract` "
                    f"({SEE_README})"
                )
            with open_h5(feature_cache, "data.feature_cache") as f:
                cached_ids = {k for k in f.keys() if not k.startswith(INCOMPLETE_PREFIX)}  # names only
                first = next((f[k] for k in cached_ids if hasattr(f[k], "keys")), None)
                present = set(first.keys()) if first is not None else set()
            self._check_cached_ids(feature_cache, cached_ids, missing_features)
            self.cache = {key: H5Features(feature_cache, dataset_key=key) for key in self.CACHE_KEYS if key in present}
            missing = [k for k in ("boxes", "det_logits") if k not in self.cache]
            if "obj_feats" not in self.cache and "obj_pooled" not in self.cache:
                missing.append("obj_feats or obj_pooled")
            if "union_feats" not in self.cache and "union_pooled" not in self.cache:
                missing.append("union_feats or union_pooled")
            if first is not None and missing:
                raise KeyError(
                    f"data.feature_cache={feature_cache!r}: the cache lacks {missing}; re-extract with "
                    f"`shagcl extract` ({SEE_README})"
                )
        else:
            raise ValueError(f"data.feature_source={feature_source!r}: expected synthetic|cached")

    def _check_cached_ids(self, feature_cache: str, cached_ids: set[str], missing_features: MissingFeatures) -> None:
        """Every record's image must have a group in the cache: checked here for the whole split, not when the item
        is first read (possibly hours into training). ``drop`` removes the others in record order, the same on
        every rank, so DDP ranks keep equal batch counts."""
        missing = [rec.image_id for rec in self.records if rec.image_id not in cached_ids]
        if not missing:
            return
        what = (
            f"{self.split}: {len(missing)} of {len(self.records)} images have no features in "
            f"data.feature_cache={feature_cache!r} (e.g. {missing[:5]})"
        )
        if missing_features == "raise":
            raise KeyError(
                f"{what}; extract them with `shagcl extract` (an image skipped as corrupt, or left out by "
                f"--max_images, has none) or set data.missing_features: drop; {SEE_README}"
            )
        rank_zero_warn(f"{what}; dropping them (data.missing_features: drop)")
        gone = set(missing)
        self.records = [rec for rec in self.records if rec.image_id not in gone]

    def __len__(self) -> int:
        return len(self.records)

    # ---------------------------------------------------------------- features
    def _synthetic_objects(self, rec: SceneRecord, g: torch.Generator):
        cfg = self.synthetic
        gt_boxes = torch.as_tensor(rec.boxes, dtype=torch.float32)
        labels = torch.as_tensor(rec.labels, dtype=torch.long)
        boxes = gt_boxes
        if self.protocol == "sgdet":  # detections = jittered GT boxes
            wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).repeat(1, 2)
            boxes = (gt_boxes + cfg.box_jitter * wh * torch.randn(gt_boxes.shape, generator=g)).clamp_min(0)
        feats = self.class_vectors[labels] + cfg.noise * torch.randn(len(labels), cfg.feature_dim, generator=g)
        logits = None
        if self.protocol != "predcls":
            logits = torch.randn(len(labels), len(self.object_classes), generator=g)
            logits[torch.arange(len(labels)), labels] += cfg.det_logit_scale
        if self.protocol == "sgdet" and self.train and self.sgdet_add_gt_boxes:  # GT boxes join the proposals
            gt_feats = self.class_vectors[labels] + cfg.noise * torch.randn(len(labels), cfg.feature_dim, generator=g)
            gt_logits = torch.randn(len(labels), len(self.object_classes), generator=g)
            gt_logits[torch.arange(len(labels)), labels] += cfg.det_logit_scale
            boxes, feats = torch.cat([boxes, gt_boxes]), torch.cat([feats, gt_feats])
            logits = torch.cat([logits, gt_logits])
        return boxes, feats, logits

    def _synthetic_pooled(
        self, obj_classes: torch.Tensor, pair_classes: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled maps: obj (N, C, R, R) = class map + noise, union (M, L·C, R, R) = predicate map + noise."""
        cfg = self.synthetic
        c, r, lv = cfg.pooled_channels, cfg.pooled_resolution, cfg.pooled_levels
        if not hasattr(self, "class_maps"):
            gm = torch.Generator().manual_seed(cfg.seed + 1)
            self.class_maps = torch.randn(len(self.object_classes), c, r, r, generator=gm)
            self.predicate_maps = torch.randn(len(self.predicate_classes), lv * c, r, r, generator=gm)
        obj = self.class_maps[obj_classes] + cfg.noise * torch.randn(len(obj_classes), c, r, r, generator=g)
        union = self.predicate_maps[pair_classes] + cfg.noise * torch.randn(
            len(pair_classes), lv * c, r, r, generator=g
        )
        return obj, union

    def _synthetic_union(self, pair_labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = torch.randn(len(pair_labels), self.synthetic.feature_dim, generator=g)
        return self.predicate_vectors[pair_labels] + self.synthetic.noise * noise  # (M, P)

    # ---------------------------------------------------------------- pairs
    def _relation_map(self, rels: np.ndarray, n: int, g: torch.Generator) -> torch.Tensor:
        """(N, N) label of every ordered pair; duplicate predicates on one pair: one chosen at random (training)."""
        rel_map = torch.zeros(n, n, dtype=torch.long)
        order = (
            torch.randperm(len(rels), generator=g)
            if self.train and self.filter_duplicate_rels
            else torch.arange(len(rels))
        )
        for s, o, p in rels[order.numpy()]:
            rel_map[s, o] = int(p)
        return rel_map

    def _sample_pairs(self, rel_map: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = rel_map.shape[0]
        all_pairs = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2)
        all_pairs = all_pairs[all_pairs[:, 0] != all_pairs[:, 1]]  # (N(N-1), 2) ordered s != o
        labels = rel_map[all_pairs[:, 0], all_pairs[:, 1]]
        if not self.train:
            return all_pairs, labels
        fg = (labels > 0).nonzero().squeeze(1)
        fg = fg[torch.randperm(len(fg), generator=g)[: self.max_fg_pairs]]
        bg = (labels == 0).nonzero().squeeze(1)
        bg = bg[torch.randperm(len(bg), generator=g)[: max(self.max_pairs - len(fg), 0)]]
        keep = torch.cat([fg, bg])
        return all_pairs[keep], labels[keep]

    def _sgdet_targets(self, boxes, gt_boxes, gt_labels, rels, g):
        """SGDet training targets (§3.7): every proposal gets the label of its best-IoU GT box when IoU >= 0.5,
        else 0 (the official ``assign_label_to_proposals``); a proposal matches a GT object with that same label
        and IoU > 0.5; per GT relation at most ``samples_per_gt_rel`` matched (head, tail) pairs drawn ∝
        IoU(head)·IoU(tail); ≤ max_fg_pairs foreground; background = other ordered pairs of proposals with a
        non-background target (the official sampler zeroes the rows and columns of unmatched proposals, and every
        pair matching a GT relation, drawn or not), up to max_pairs. Returns object targets, pairs, labels."""
        iou = box_iou(boxes, gt_boxes)  # (N, G_obj)
        best_iou, best_gt = iou.max(1) if iou.numel() else (torch.zeros(len(boxes)), torch.zeros(len(boxes)).long())
        obj_targets = torch.where(best_iou >= 0.5, gt_labels[best_gt], torch.zeros_like(best_gt))
        ok = (iou > 0.5) & (obj_targets[:, None] == gt_labels[None, :])
        iou_ok = torch.where(ok, iou, torch.zeros_like(iou))
        n = len(boxes)
        rel_map = torch.zeros(n, n, dtype=torch.long)
        fg_pairs, fg_labels = [], []
        for s, o, p in rels:
            heads, tails = iou_ok[:, s], iou_ok[:, o]
            score = heads[:, None] * tails[None, :]  # (N, N)
            score.fill_diagonal_(0)
            cand = score.flatten().nonzero().squeeze(1)
            if len(cand) == 0:
                continue
            rel_map.view(-1)[cand] = int(p)  # every matched pair leaves the background pool, drawn below or not
            if len(cand) > self.samples_per_gt_rel:
                cand = cand[torch.multinomial(score.flatten()[cand], self.samples_per_gt_rel, generator=g)]
            for c in cand.tolist():
                i, j = divmod(c, n)
                fg_pairs.append((i, j))
                fg_labels.append(int(p))
                rel_map[i, j] = int(p)
        fg_t = torch.tensor(fg_pairs, dtype=torch.long).reshape(-1, 2)
        lab_t = torch.tensor(fg_labels, dtype=torch.long)
        sel = torch.randperm(len(fg_t), generator=g)[: self.max_fg_pairs]
        fg_t, lab_t = fg_t[sel], lab_t[sel]
        all_pairs = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2)
        all_pairs = all_pairs[all_pairs[:, 0] != all_pairs[:, 1]]
        matched = obj_targets > 0
        bg_ok = (
            (rel_map.flatten()[all_pairs[:, 0] * n + all_pairs[:, 1]] == 0)
            & matched[all_pairs[:, 0]]
            & matched[all_pairs[:, 1]]
        )
        if len(fg_t) or bg_ok.any():
            all_pairs = all_pairs[bg_ok]
        else:  # nothing matched: one background pair keeps the image in the batch (the official fake relation)
            all_pairs = all_pairs[:1]
        bg = all_pairs[torch.randperm(len(all_pairs), generator=g)[: max(self.max_pairs - len(fg_t), 0)]]
        pairs = torch.cat([fg_t, bg])
        labels = torch.cat([lab_t, torch.zeros(len(bg), dtype=torch.long)])
        return obj_targets, pairs, labels

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        seed = index + (self.epoch_seed * 1_000_003 if self.train else 0)
        g = torch.Generator().manual_seed(seed)
        gt_boxes = torch.as_tensor(rec.boxes, dtype=torch.float32)
        gt_labels = torch.as_tensor(rec.labels, dtype=torch.long)
        gt_rels = torch.as_tensor(rec.rels, dtype=torch.long).reshape(-1, 3)
        obj_pooled = union_pooled = None
        if self.feature_source == "synthetic":
            boxes, obj_feats, det_logits = self._synthetic_objects(rec, g)
            n_all = len(boxes)
        else:
            boxes, obj_feats, obj_pooled, det_logits, n_all = self._cached_objects(rec)
            if self.protocol != "sgdet" and len(boxes) != len(gt_boxes):
                raise ValueError(
                    f"feature cache: image {rec.image_id} has {len(boxes)} boxes, the annotations "
                    f"{len(gt_boxes)}; re-extract with --protocol {self.protocol}"
                )
        n = len(boxes)
        if self.protocol == "sgdet" and self.train:
            # the GT relations come from the same relation map as in PredCls/SGCls: one predicate per ordered GT
            # pair (a random one of its duplicates), so a proposal pair never gets two conflicting positives
            rel_map = self._relation_map(rec.rels, len(gt_boxes), g)
            gt_pairs = rel_map.nonzero()  # (G', 2) row-major
            gt_rel_list = torch.cat([gt_pairs, rel_map[gt_pairs[:, 0], gt_pairs[:, 1]][:, None]], 1).numpy()
            labels, pairs, pair_labels = self._sgdet_targets(boxes, gt_boxes, gt_labels, gt_rel_list, g)
        elif self.protocol == "sgdet":
            labels = torch.zeros(n, dtype=torch.long)
            pairs, pair_labels = self._sample_pairs(torch.zeros(n, n, dtype=torch.long), g)
        else:
            labels = gt_labels
            pairs, pair_labels = self._sample_pairs(self._relation_map(rec.rels, n, g), g)
        if self.feature_source == "synthetic":
            pair_classes = (
                pair_labels
                if self.protocol != "sgdet" or self.train
                else self._sgdet_eval_labels(boxes, gt_boxes, gt_rels, pairs)
            )
            union = self._synthetic_union(pair_classes, g)
            if self.synthetic.pooled:  # own generator: the feature stream above stays as without pooled maps
                gp = torch.Generator().manual_seed(seed + 7919)
                obj_classes = gt_labels if self.protocol != "sgdet" else gt_labels[box_iou(boxes, gt_boxes).argmax(1)]
                obj_pooled, union_pooled = self._synthetic_pooled(obj_classes, pair_classes, gp)
        else:
            # rows of the cached ordered pairs s != o of all n_all boxes (row-major)
            row = pairs[:, 0] * (n_all - 1) + pairs[:, 1] - (pairs[:, 1] > pairs[:, 0]).long()
            union = self.cache["union_feats"][rec.image_id].float()[row] if "union_feats" in self.cache else None
            if "union_pooled" in self.cache and len(row):
                lo, hi = int(row.min()), int(row.max()) + 1  # read only the needed row range
                union_pooled = self.cache["union_pooled"].read(rec.image_id, lo, hi)[row - lo]
        return {
            "index": index,
            "image_id": rec.image_id,
            "image_size": torch.tensor([rec.width, rec.height], dtype=torch.float32),
            "boxes": boxes,
            "labels": labels,
            "det_logits": det_logits,
            "obj_feats": obj_feats,
            "pair_idx": pairs,
            "pair_labels": pair_labels,
            "union_feats": union,
            "obj_pooled": obj_pooled,
            "union_pooled": union_pooled,
            "gt_boxes": gt_boxes,
            "gt_labels": gt_labels,
            "gt_rels": gt_rels,
            "filename": rec.filename,
        }

    def _cached_objects(self, rec: SceneRecord):
        """Boxes, obj_feats | None, obj_pooled | None, det_logits | None and the cached box count of one image.

        An SGDet cache of a training image may hold the GT boxes after the detections (``num_det`` = number of
        detections, written by ``shagcl extract``); they are used in training when ``sgdet_add_gt_boxes``."""
        vid = rec.image_id
        boxes = self.cache["boxes"][vid].float()
        n_all = len(boxes)
        n_det = int(self.cache["num_det"][vid].reshape(-1)[0]) if "num_det" in self.cache else n_all
        n_use = n_all if (self.protocol == "sgdet" and self.train and self.sgdet_add_gt_boxes) else n_det

        def rows(key: str) -> torch.Tensor | None:
            return self.cache[key].read(vid, 0, n_use).float() if key in self.cache else None

        det_logits = rows("det_logits") if self.protocol != "predcls" else None
        return boxes[:n_use], rows("obj_feats"), rows("obj_pooled"), det_logits, n_all

    def _sgdet_eval_labels(self, boxes, gt_boxes, gt_rels, pairs) -> torch.Tensor:
        """Synthetic union features at SGDet test time: the predicate of the GT pair each detection pair overlaps."""
        best = box_iou(boxes, gt_boxes).argmax(1)  # detections are jittered GT boxes
        rel_map = torch.zeros(len(gt_boxes), len(gt_boxes), dtype=torch.long)
        for s, o, p in gt_rels.tolist():
            rel_map[s, o] = p
        return rel_map[best[pairs[:, 0]], best[pairs[:, 1]]]


def clip_to_image(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """xyxy pixel boxes clamped to the image as the official loaders' ``BoxList.clip_to_image`` does: x to
    [0, W − 1], y to [0, H − 1] (its ``TO_REMOVE = 1``). Deviation: the official training loader then drops a box
    left without width or height (one wholly outside its image) with its relations; such a box is kept here."""
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width - 1)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height - 1)
    return out


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"data.data_root: missing {str(path)!r} ({what}); {SEE_README}")
    return path


def _check_annotations(
    path: Path, image_id: str, num_boxes: int, labels: np.ndarray, rels: np.ndarray, num_obj: int, num_pred: int
) -> None:
    """Refuse an image whose annotations do not fit its boxes or the vocabularies: object labels in 1..num_obj−1,
    relation subject/object indices in 0..num_boxes−1 (local), predicates in 1..num_pred−1 (before any re-indexing).
    Unchecked, a negative index would silently wrap to another box and a predicate 0 would become background."""
    problem = None
    if len(labels) and (labels.min() < 1 or labels.max() >= num_obj):
        problem = f"object labels {labels.min()}..{labels.max()} outside 1..{num_obj - 1}"
    elif len(rels) and (rels[:, :2].min() < 0 or rels[:, :2].max() >= num_boxes):
        problem = f"relation box indices {rels[:, :2].min()}..{rels[:, :2].max()} outside its {num_boxes} boxes"
    elif len(rels) and (rels[:, 2].min() < 1 or rels[:, 2].max() >= num_pred):
        problem = f"predicates {rels[:, 2].min()}..{rels[:, 2].max()} outside 1..{num_pred - 1}"
    if problem:
        raise ValueError(f"{path}: image {image_id}: {problem}; the annotation files do not belong together")


class VG150Dataset(SceneGraphDataset):
    """Visual Genome VG150 in the Scene-Graph-Benchmark format (spec §4.1), under ``<data_root>/vg/``.

    Files: ``VG-SGG-with-attri.h5`` (split, img_to_first/last_box/rel, labels, boxes_<box_scale>, relationships,
    predicates), ``VG-SGG-dicts-with-attri.json``, ``image_data.json``. Splits: test = split 2; the first
    ``num_val_images`` of split 0 are ``val``, the rest ``train``; images without boxes or relations are dropped.
    Boxes cxcywh at the 1024 scale -> xyxy pixels, clamped to the image with ``clip_boxes`` (:func:`clip_to_image`,
    as the official loader); relation rows -> local indices; predicates re-indexed to frequency order
    (``predicate_order=frequency``, §4.3) or kept (``file``).
    """

    H5_KEYS = (
        "split",
        "img_to_first_box",
        "img_to_last_box",
        "img_to_first_rel",
        "img_to_last_rel",
        "labels",
        "relationships",
        "predicates",
    )
    DICT_KEYS = ("label_to_idx", "idx_to_label", "predicate_to_idx", "idx_to_predicate")

    def __init__(
        self,
        data_root: str | Path,
        split: Split,
        protocol: Protocol = "predcls",
        feature_source: FeatureSource = "synthetic",
        feature_cache: str | None = None,
        synthetic: SyntheticFeaturesConfig | None = None,
        num_val_images: int = 5000,
        predicate_order: PredicateOrder = "frequency",
        box_scale: int = 1024,
        max_pairs: int = 1024,
        max_fg_pairs: int = 256,
        filter_duplicate_rels: bool = True,
        samples_per_gt_rel: int = 4,
        max_images: int | None = None,
        sgdet_add_gt_boxes: bool = True,
        missing_features: MissingFeatures = "raise",
        clip_boxes: bool = True,
    ) -> None:
        self._check_options(split, protocol, feature_source, missing_features)
        check_choice("data.predicate_order", predicate_order, get_args(PredicateOrder))  # else: the file's order
        self._check_counts(num_val_images, max_pairs, max_fg_pairs, samples_per_gt_rel, max_images)
        check_range("data.box_scale", box_scale, ge=1, integer=True)  # the stored boxes are divided by it
        root = Path(data_root) / "vg"
        h5_path = _require(root / "VG-SGG-with-attri.h5", "VG150 annotations")
        dicts_path = _require(root / "VG-SGG-dicts-with-attri.json", "VG150 vocabularies")
        info_path = _require(root / "image_data.json", "VG image metadata")
        dicts = read_json(dicts_path, "VG150 vocabularies")
        for key in self.DICT_KEYS:
            if key not in dicts:
                raise KeyError(f"{dicts_path}: missing key {key!r}; {SEE_README}")
        self.object_classes = ["__background__"] + sorted(dicts["label_to_idx"], key=dicts["label_to_idx"].get)
        file_predicates = ["__background__"] + sorted(dicts["predicate_to_idx"], key=dicts["predicate_to_idx"].get)
        if predicate_order == "frequency":
            if len(file_predicates) != 51:
                raise ValueError(
                    f"data.predicate_order=frequency applies the official VG150 re-indexing and needs "
                    f"50 predicates; {dicts_path} has {len(file_predicates) - 1} (use 'file')"
                )
            alphabetical = sorted(VG150_PREDICATES_FREQ_ORDER[1:])  # the released file's ids 1..50
            wrong = [(i, a, b) for i, (a, b) in enumerate(zip(file_predicates[1:], alphabetical), 1) if a != b]
            if wrong:  # the re-indexing goes by id: other names would be relabelled as VG150's predicates
                i, got, want = wrong[0]
                raise ValueError(
                    f"{dicts_path}: predicate {i} is {got!r} where VG150 has {want!r} ({len(wrong)} of 50 differ); "
                    f"data.predicate_order=frequency re-indexes VG150's own predicates by id (use 'file' for others)"
                )
            remap = np.array(VG150_PREDICATE_REMAP)
            self.predicate_classes = list(VG150_PREDICATES_FREQ_ORDER)
        else:
            remap = np.arange(len(file_predicates))
            self.predicate_classes = file_predicates
        image_data = [
            d for d in read_json(info_path, "VG image metadata") if d["image_id"] not in VG_CORRUPTED_IMAGE_IDS
        ]
        boxes_key = f"boxes_{box_scale}"
        with open_h5(h5_path, "VG-SGG file") as f:
            for key in (*self.H5_KEYS, boxes_key):
                if key not in f:
                    raise KeyError(f"{h5_path}: missing dataset {key!r}; {SEE_README}")
            arr = {key: f[key][:] for key in (*self.H5_KEYS, boxes_key)}
        if len(image_data) != len(arr["split"]):
            raise ValueError(
                f"{info_path} lists {len(image_data)} images (after dropping the 4 corrupted ones) but "
                f"{h5_path} has {len(arr['split'])}; the two files must come from the same release"
            )
        want = 2 if split == "test" else 0
        keep = np.nonzero((arr["split"] == want) & (arr["img_to_first_box"] >= 0) & (arr["img_to_first_rel"] >= 0))[0]
        if split == "val":
            keep = keep[:num_val_images]
        elif split == "train":
            keep = keep[num_val_images:]
        if max_images is not None:
            keep = keep[:max_images]
        self.records = []
        for i in keep:
            info = image_data[i]
            b0, b1 = arr["img_to_first_box"][i], arr["img_to_last_box"][i]
            r0, r1 = arr["img_to_first_rel"][i], arr["img_to_last_rel"][i]
            cxcywh = arr[boxes_key][b0 : b1 + 1].astype(np.float64)
            empty = np.nonzero((cxcywh[:, 2:] <= 0).any(1))[0]
            if len(empty):  # the official loader asserts every stored width and height > 0
                j = int(empty[0])
                raise ValueError(
                    f"{h5_path}: image {info['image_id']}: box {j} (row {b0 + j} of {boxes_key!r}, data.box_scale="
                    f"{box_scale}) has width/height {cxcywh[j, 2]:g}/{cxcywh[j, 3]:g}; every box needs a positive "
                    f"width and height ({len(empty)} such boxes in this image)"
                )
            xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
            xyxy = xyxy * max(info["width"], info["height"]) / box_scale
            if clip_boxes:
                xyxy = clip_to_image(xyxy, info["width"], info["height"])
            pairs = arr["relationships"][r0 : r1 + 1] - b0
            file_preds = arr["predicates"][r0 : r1 + 1, 0]
            labels = arr["labels"][b0 : b1 + 1, 0].astype(np.int64)
            _check_annotations(
                h5_path,
                str(info["image_id"]),
                len(labels),
                labels,
                np.concatenate([pairs, file_preds[:, None]], 1),
                len(self.object_classes),
                len(file_predicates),
            )
            rels = np.concatenate([pairs, remap[file_preds][:, None]], 1).astype(np.int64)
            self.records.append(
                SceneRecord(
                    str(info["image_id"]),
                    f"VG_100K/{info['image_id']}.jpg",
                    info["width"],
                    info["height"],
                    xyxy.astype(np.float32),
                    labels,
                    rels,
                )
            )
        self._init_features(
            split,
            protocol,
            feature_source,
            feature_cache,
            synthetic or SyntheticFeaturesConfig(),
            max_pairs,
            max_fg_pairs,
            filter_duplicate_rels,
            samples_per_gt_rel,
            sgdet_add_gt_boxes,
            missing_features,
        )


class GQA200Dataset(SceneGraphDataset):
    """GQA200 (the authors' split, spec §4.2), under ``<data_root>/gqa/``: ``GQA_200_ID_Info.json``,
    ``GQA_200_Train.json``, ``GQA_200_Test.json``. Boxes are xyxy pixels as stored, clamped to the image with
    ``clip_boxes`` (:func:`clip_to_image`, as the official loader); relations local.

    Images without objects or relations are dropped; val/test skip the ``skip_test_entry``-th entry (1-based,
    counted before filtering; 5,580 officially); ``val`` = the first ``num_val_images`` kept test images.
    """

    SPLIT_KEYS = ("filenames_all", "img_info_all", "gt_boxes_all", "gt_classes_all", "relationships_all")

    def __init__(
        self,
        data_root: str | Path,
        split: Split,
        protocol: Protocol = "predcls",
        feature_source: FeatureSource = "synthetic",
        feature_cache: str | None = None,
        synthetic: SyntheticFeaturesConfig | None = None,
        num_val_images: int = 5000,
        skip_test_entry: int | None = 5580,
        max_pairs: int = 1024,
        max_fg_pairs: int = 256,
        filter_duplicate_rels: bool = True,
        samples_per_gt_rel: int = 4,
        max_images: int | None = None,
        sgdet_add_gt_boxes: bool = True,
        missing_features: MissingFeatures = "raise",
        clip_boxes: bool = True,
    ) -> None:
        self._check_options(split, protocol, feature_source, missing_features)
        self._check_counts(num_val_images, max_pairs, max_fg_pairs, samples_per_gt_rel, max_images)
        if skip_test_entry is not None:  # 1-based; null skips no entry
            check_range("data.gqa_skip_test_entry", skip_test_entry, ge=1, integer=True)
        root = Path(data_root) / "gqa"
        info_path = _require(root / "GQA_200_ID_Info.json", "GQA200 vocabularies")
        split_path = _require(root / f"GQA_200_{'Train' if split == 'train' else 'Test'}.json", "GQA200 split")
        info = read_json(info_path, "GQA200 vocabularies")
        for key in ("ind_to_classes", "ind_to_predicates"):
            if key not in info:
                raise KeyError(f"{info_path}: missing key {key!r}; {SEE_README}")
        self.object_classes = list(info["ind_to_classes"])
        self.predicate_classes = list(info["ind_to_predicates"])
        data = read_json(split_path, "GQA200 split")
        for key in self.SPLIT_KEYS:
            if key not in data:
                raise KeyError(f"{split_path}: missing key {key!r}; {SEE_README}")
        self.records = []
        for i, (fname, meta, boxes, classes, rels) in enumerate(zip(*(data[k] for k in self.SPLIT_KEYS), strict=True)):
            if split != "train" and skip_test_entry is not None and i + 1 == skip_test_entry:
                continue
            if len(classes) == 0 or len(rels) == 0:
                continue
            rec = SceneRecord(
                Path(fname).stem,
                f"images/{fname}",
                int(meta["width"]),
                int(meta["height"]),
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(classes, dtype=np.int64),
                np.asarray(rels, dtype=np.int64).reshape(-1, 3),
            )
            if len(rec.boxes) != len(rec.labels):
                raise ValueError(
                    f"{split_path}: image {fname}: {len(rec.boxes)} boxes in gt_boxes_all but {len(rec.labels)} "
                    f"classes in gt_classes_all"
                )
            swapped = np.nonzero((rec.boxes[:, 2:] < rec.boxes[:, :2]).any(1))[0]
            if len(swapped):  # IoU would be 0 or NaN even against the box itself: never matched, never reported
                j = int(swapped[0])
                raise ValueError(
                    f"{split_path}: image {fname}: box {j} of gt_boxes_all is {rec.boxes[j].tolist()}, with x2 < x1 "
                    f"or y2 < y1; boxes are stored as [x1, y1, x2, y2] pixels ({len(swapped)} such boxes in this "
                    f"image)"
                )
            _check_annotations(
                split_path, fname, len(rec.labels), rec.labels, rec.rels, len(self.object_classes),
                len(self.predicate_classes),
            )  # fmt: skip
            if clip_boxes:
                rec.boxes = clip_to_image(rec.boxes, rec.width, rec.height)
            self.records.append(rec)
        if split == "val":
            self.records = self.records[:num_val_images]
        if max_images is not None:
            self.records = self.records[:max_images]
        self._init_features(
            split,
            protocol,
            feature_source,
            feature_cache,
            synthetic or SyntheticFeaturesConfig(),
            max_pairs,
            max_fg_pairs,
            filter_duplicate_rels,
            samples_per_gt_rel,
            sgdet_add_gt_boxes,
            missing_features,
        )


@dataclass
class TrainStatistics:
    """Training-split statistics: predicate_counts (C_rel,) (index 0 = background pairs), fg_matrix
    (C_obj, C_obj, C_rel) co-occurrence counts for the frequency bias (§3.5), triplet_counts
    (C_obj, C_obj, C_rel) GT triplet counts (zero-shot triplets are zeros there)."""

    predicate_counts: torch.Tensor
    fg_matrix: torch.Tensor
    triplet_counts: torch.Tensor
    object_classes: list[str] = field(default_factory=list)
    predicate_classes: list[str] = field(default_factory=list)
    dataset: str = "vg150"


def compute_statistics(
    records: list[SceneRecord],
    num_obj_classes: int,
    num_predicates: int,
    max_pairs: int = 1024,
    filter_non_overlap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicate counts, frequency-bias matrix F and triplet counts from training records (§3.5, §3.6.4).

    F[s, o, p>0] counts GT triplets (duplicates kept); F[s, o, 0] = 1 + the number of overlapping ordered box
    pairs with classes (s, o) (positive intersection area, no '+1'; all ordered pairs if an image has none
    overlapping). ``filter_non_overlap`` drops relations between non-overlapping boxes ('+1' convention) from F and
    images left without relations from F entirely (the VG side effect of the official loader).
    Reconstruction: the background count (predicate_counts[0]) is the number of background pairs the sampler
    draws per epoch, Σ_img min(N(N−1) − #fg pairs, max_pairs − #fg pairs).
    """
    fg = np.zeros((num_obj_classes, num_obj_classes, num_predicates), dtype=np.int64)
    trip = np.zeros_like(fg)
    counts = np.zeros(num_predicates, dtype=np.int64)
    for rec in records:
        labels, rels = rec.labels, rec.rels
        n = len(labels)
        np.add.at(trip, (labels[rels[:, 0]], labels[rels[:, 1]], rels[:, 2]), 1)
        np.add.at(counts, rels[:, 2], 1)
        n_fg = len({(int(s), int(o)) for s, o, _ in rels})
        counts[0] += max(min(n * (n - 1) - n_fg, max_pairs - n_fg), 0)
        r = rels
        if filter_non_overlap:
            r = rels[_overlap(rec.boxes, 1.0)[rels[:, 0], rels[:, 1]]]
            if len(r) == 0:  # the official loader drops the image
                continue
        np.add.at(fg, (labels[r[:, 0]], labels[r[:, 1]], r[:, 2]), 1)
        offdiag = ~np.eye(n, dtype=bool)
        pairs = np.argwhere(_overlap(rec.boxes, 0.0) & offdiag)
        if len(pairs) == 0:
            pairs = np.argwhere(offdiag)
        np.add.at(fg, (labels[pairs[:, 0]], labels[pairs[:, 1]], 0), 1)
    fg[:, :, 0] += 1
    return torch.from_numpy(counts), torch.from_numpy(fg), torch.from_numpy(trip)


def _overlap(boxes: np.ndarray, to_move: float) -> np.ndarray:
    """(N, N) bool: positive intersection area, widths/heights computed as x2 − x1 + ``to_move`` (the official
    bbox_overlaps: 1 in the relation filter, 0 in the background-pair filter)."""
    b = np.asarray(boxes, dtype=np.float64)
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt + to_move, 0.0, None)  # (N, N, 2)
    return wh[..., 0] * wh[..., 1] > 0


def _cat_optional(items: list[dict], key: str) -> torch.Tensor | None:
    """Concatenate one feature key over the items, or None when the items do not carry it."""
    if any(it.get(key) is None for it in items):
        return None
    return torch.cat([it[key] for it in items])


def collate_scene_graphs(items: list[dict]) -> dict:
    """Concatenate per-image items: objects (N = Σ N_i) and pairs (M = Σ M_i), pair_idx made global.

    Adds num_objs, num_pairs, obj_image_sizes (N, 2), pair_image_sizes (M, 2), image_sizes (B, 2), and keeps
    per-image lists local_pair_idx, gt_boxes, gt_labels, gt_rels, image_ids, image_index (dataset indices, used to
    count DistributedSampler duplicates once), filenames.
    """
    if not items:
        raise ValueError("collate_scene_graphs: empty batch")
    num_objs = [len(it["boxes"]) for it in items]
    num_pairs = [len(it["pair_idx"]) for it in items]
    offsets = np.cumsum([0, *num_objs[:-1]])
    has_logits = items[0]["det_logits"] is not None
    sizes = torch.stack([it["image_size"] for it in items])  # (B, 2)
    return {
        "image_ids": [it["image_id"] for it in items],
        "image_index": [int(it["index"]) for it in items],
        "filenames": [it["filename"] for it in items],
        "image_sizes": sizes,
        "num_objs": num_objs,
        "num_pairs": num_pairs,
        "boxes": torch.cat([it["boxes"] for it in items]),
        "labels": torch.cat([it["labels"] for it in items]),
        "det_logits": torch.cat([it["det_logits"] for it in items]) if has_logits else None,
        "obj_feats": _cat_optional(items, "obj_feats"),
        "obj_pooled": _cat_optional(items, "obj_pooled"),
        "obj_image_sizes": sizes.repeat_interleave(torch.tensor(num_objs), 0),
        "pair_idx": torch.cat([it["pair_idx"] + int(off) for it, off in zip(items, offsets, strict=True)]),
        "local_pair_idx": [it["pair_idx"] for it in items],
        "pair_labels": torch.cat([it["pair_labels"] for it in items]),
        "union_feats": _cat_optional(items, "union_feats"),
        "union_pooled": _cat_optional(items, "union_pooled"),
        "pair_image_sizes": sizes.repeat_interleave(torch.tensor(num_pairs), 0),
        "gt_boxes": [it["gt_boxes"] for it in items],
        "gt_labels": [it["gt_labels"] for it in items],
        "gt_rels": [it["gt_rels"] for it in items],
    }


class SGGDataModule(SplitLoaders, pl.LightningDataModule):
    """VG150 / GQA200 scene graphs with synthetic or cached features.

    Args:
        dataset: vg150 | gqa200 (reader chosen by a plain branch).
        data_root: folder holding ``vg/`` or ``gqa/`` (spec §4).
        protocol: predcls | sgcls | sgdet (must equal model.config.protocol).
        feature_source: synthetic (tests/demo) | cached (HDF5 written by ``shagcl extract``).
        feature_cache: the HDF5 cache (cached source).
        synthetic: synthetic-feature settings.
        num_val_images: images carved as validation (VG: from train; GQA: from test), 5,000 officially.
        predicate_order: VG only; frequency = the official re-indexing (§4.3), file = keep file ids.
        box_scale: VG box key ``boxes_<box_scale>`` (1024 officially).
        gqa_skip_test_entry: GQA entry skipped in val/test (5,580 officially; null: none).
        max_pairs, max_fg_pairs: training pairs per image (1024, 256 officially, §3.7).
        filter_duplicate_rels: one random predicate per ordered pair in training.
        samples_per_gt_rel: SGDet positives per GT relation (NUM_SAMPLE_PER_GT_REL = 4).
        sgdet_add_gt_boxes: SGDet training adds the GT boxes to the proposals (spec §3.7, as the official code);
            a cached source needs them in the cache (``shagcl extract --protocol sgdet`` writes them for train).
        missing_features: cached source: an image of the split without features in the cache (e.g. skipped as
            corrupt by ``shagcl extract --on_corrupt skip``): ``raise`` (when the split is built, naming the cache)
            or ``drop`` it from the split with a warning.
        clip_boxes: clamp the annotated boxes to their image, x to [0, W − 1] and y to [0, H − 1], as the official
            loaders (``BoxList.clip_to_image``); ``shagcl extract`` reads the boxes the same way (its
            ``--clip_boxes``), so a cache and the datasets built with the same value hold the same boxes.
        statistics_filter_non_overlap: drop non-overlapping relations from the frequency-bias statistics (the
            official VG side effect, §3.5).
        max_train_images, max_eval_images: caps for quick runs (null: all).
        batch_size, test_batch_size, num_workers, pin_memory, persistent_workers: loaders.
        generate_demo_data: write a synthetic dataset in the official format to data_root when it is missing.
        demo_num_images: size of that generated dataset.
    """

    def __init__(
        self,
        dataset: DatasetName = "vg150",
        data_root: str = "data",
        protocol: Protocol = "predcls",
        feature_source: FeatureSource = "cached",
        feature_cache: str | None = None,
        synthetic: SyntheticFeaturesConfig | None = None,
        num_val_images: int = 5000,
        predicate_order: PredicateOrder = "frequency",
        box_scale: int = 1024,
        gqa_skip_test_entry: int | None = 5580,
        max_pairs: int = 1024,
        max_fg_pairs: int = 256,
        filter_duplicate_rels: bool = True,
        samples_per_gt_rel: int = 4,
        sgdet_add_gt_boxes: bool = True,
        missing_features: MissingFeatures = "raise",
        clip_boxes: bool = True,
        statistics_filter_non_overlap: bool = False,
        max_train_images: int | None = None,
        max_eval_images: int | None = None,
        batch_size: int = 8,
        test_batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        generate_demo_data: bool = False,
        demo_num_images: int = 64,
        demo_num_obj_classes: int = 8,
        demo_num_predicates: int = 10,
    ) -> None:
        super().__init__()
        # refused here, not at setup: an unknown dataset would skip writing the demo data, and the readers would
        # take an unknown protocol or predicate order for another one
        for key, value, hint in (
            ("dataset", dataset, DatasetName),
            ("protocol", protocol, Protocol),
            ("feature_source", feature_source, FeatureSource),
            ("predicate_order", predicate_order, PredicateOrder),
            ("missing_features", missing_features, MissingFeatures),
        ):
            check_choice(f"data.{key}", value, get_args(hint))
        # the readers check their own counts again when they are built (at setup); refused here already
        SceneGraphDataset._check_counts(num_val_images, max_pairs, max_fg_pairs, samples_per_gt_rel, None)
        check_range("data.box_scale", box_scale, ge=1, integer=True)
        if gqa_skip_test_entry is not None:
            check_range("data.gqa_skip_test_entry", gqa_skip_test_entry, ge=1, integer=True)
        for key, value in (("max_train_images", max_train_images), ("max_eval_images", max_eval_images)):
            if value is not None:  # null: every image
                check_range(f"data.{key}", value, ge=1, integer=True)
        for key, value, least in (
            ("batch_size", batch_size, 1),
            ("test_batch_size", test_batch_size, 1),
            ("num_workers", num_workers, 0),
            ("demo_num_images", demo_num_images, 1),
            ("demo_num_obj_classes", demo_num_obj_classes, 1),
            ("demo_num_predicates", demo_num_predicates, 1),
        ):
            check_range(f"data.{key}", value, ge=least, integer=True)
        self.save_hyperparameters()
        self.synthetic = synthetic or SyntheticFeaturesConfig()
        self.datasets: dict[str, SceneGraphDataset] = {}
        self._statistics: TrainStatistics | None = None

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generate_demo_data:
            from shagcl.testing import write_gqa200, write_vg150

            if hp.dataset == "vg150" and not (Path(hp.data_root) / "vg" / "VG-SGG-with-attri.h5").is_file():
                write_vg150(hp.data_root, hp.demo_num_images, hp.demo_num_obj_classes, hp.demo_num_predicates)
            if hp.dataset == "gqa200" and not (Path(hp.data_root) / "gqa" / "GQA_200_ID_Info.json").is_file():
                write_gqa200(
                    hp.data_root,
                    hp.demo_num_images * 3 // 4,
                    hp.demo_num_images // 4,
                    hp.demo_num_obj_classes,
                    hp.demo_num_predicates,
                )

    def make_dataset(self, split: Split) -> SceneGraphDataset:
        hp = self.hparams
        cap = hp.max_train_images if split == "train" else hp.max_eval_images
        common = dict(
            protocol=hp.protocol,
            feature_source=hp.feature_source,
            feature_cache=hp.feature_cache,
            synthetic=self.synthetic,
            num_val_images=hp.num_val_images,
            max_pairs=hp.max_pairs,
            max_fg_pairs=hp.max_fg_pairs,
            filter_duplicate_rels=hp.filter_duplicate_rels,
            samples_per_gt_rel=hp.samples_per_gt_rel,
            max_images=cap,
            sgdet_add_gt_boxes=hp.sgdet_add_gt_boxes,
            missing_features=hp.missing_features,
            clip_boxes=hp.clip_boxes,
        )
        if hp.dataset == "vg150":
            return VG150Dataset(
                hp.data_root, split, predicate_order=hp.predicate_order, box_scale=hp.box_scale, **common
            )
        elif hp.dataset == "gqa200":
            return GQA200Dataset(hp.data_root, split, skip_test_entry=hp.gqa_skip_test_entry, **common)
        raise ValueError(f"data.dataset={hp.dataset!r}: expected vg150|gqa200")

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            reload_train_loader_every_epoch(
                self.trainer, "shagcl resamples duplicate predicates, relation pairs and SGDet positives every epoch"
            )
        self.prepare_data()  # idempotent; lets tests call setup() alone
        if "train" not in self.datasets:
            self.datasets["train"] = self.make_dataset("train")
        if stage in ("fit", "validate", None) and "val" not in self.datasets:
            self.datasets["val"] = self.make_dataset("val")
        if stage in ("test", "predict", None) and "test" not in self.datasets:
            self.datasets["test"] = self.make_dataset("test")

    def statistics(self) -> TrainStatistics:
        """Training statistics (computed once from the train split)."""
        if self._statistics is None:
            if "train" not in self.datasets:
                self.setup("fit")
            train = self.datasets["train"]
            counts, fg, trip = compute_statistics(
                train.records,
                len(train.object_classes),
                len(train.predicate_classes),
                self.hparams.max_pairs,
                self.hparams.statistics_filter_non_overlap,
            )
            self._statistics = TrainStatistics(
                counts, fg, trip, train.object_classes, train.predicate_classes, self.hparams.dataset
            )
        return self._statistics

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        ds = self.datasets[split]
        if len(ds) == 0:
            carved = "train" if hp.dataset == "vg150" else "test"
            raise ValueError(
                f"data: the {split} split of {hp.dataset} at {hp.data_root!r} has no usable image; the splits are "
                f"carved and capped by data.num_val_images={hp.num_val_images} (taken from {carved}), "
                f"data.max_train_images={hp.max_train_images} and data.max_eval_images={hp.max_eval_images}"
                + (f", and generated with data.demo_num_images={hp.demo_num_images}" if hp.generate_demo_data else "")
            )
        return DataLoader(
            ds,
            batch_size=hp.batch_size if train else hp.test_batch_size,
            shuffle=train,
            drop_last=train and len(ds) >= hp.batch_size,
            collate_fn=collate_scene_graphs,
            **worker_options(hp),
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.datasets["train"]
        ds.epoch_seed = self.trainer.current_epoch if self.trainer is not None else 0
        return super().train_dataloader()
