"""Feature extraction with a torchvision Faster R-CNN (spec §3.2.4, ``detector`` source), cached to HDF5 so that
relation training does not rerun the detector: ``shagcl extract --help``.

Per image the cache holds (group ``<image_id>``): ``boxes`` (N, 4) xyxy pixels (GT boxes for PredCls/SGCls,
up to 80 detections for SGDet), ``obj_feats`` (N, P) box-head features r_i, ``det_logits`` (N, C_obj) the
detector's class logits, ``union_feats`` (N(N−1), P) box-head features of the union box of every ordered pair
s ≠ o (row-major over s, then o), ``det_scores`` (N,). Stored as float16.

Deviations (README): the paper's detector is maskrcnn-benchmark ResNeXt-101-32x8d-FPN with 4096-d fc6/fc7 copies
fine-tuned with the relation head, and union features from a 4-level ROIAlign + 3×3 conv. Here the detector's
own (frozen) box head is applied to the union box through torchvision's MultiScaleRoIAlign (P = 1024), and the
trainable spatial 'rect' branch runs in the relation model on top of the cached feature.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

__all__ = ["FasterRCNNFeatures", "extract_main", "build_detector"]

log = logging.getLogger(__name__)


def build_detector(num_classes: int, checkpoint: str | None, min_size: int = 600, max_size: int = 1000,
                   detections_per_img: int = 80, allow_random: bool = False) -> nn.Module:
    """A torchvision ``fasterrcnn_resnet50_fpn`` with ``num_classes`` (incl. background) loaded from ``checkpoint``
    (a state dict, or a dict with ``model``/``state_dict``). ``allow_random`` builds random weights (tests only)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size,
                                    max_size=max_size, box_detections_per_img=detections_per_img)
    if checkpoint is None:
        if allow_random:
            return model.eval()
        raise FileNotFoundError("--checkpoint (detector_checkpoint) is required: a torchvision fasterrcnn_resnet50_fpn "
                                f"state dict trained on the dataset's {num_classes - 1} classes; see README, "
                                "Data preparation")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist (detector_checkpoint: a torchvision "
                                "fasterrcnn_resnet50_fpn state dict); see README, Data preparation")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    model.load_state_dict(state)
    return model.eval()


class FasterRCNNFeatures(nn.Module):
    """Object and union features from a frozen torchvision Faster R-CNN.

    forward(image (3, H, W) float in [0, 1], boxes (N, 4) xyxy pixels or None) -> dict with boxes, obj_feats
    (N, P), det_logits (N, C), union_feats (N(N−1), P), det_scores (N,). With ``boxes=None`` the detector's own
    detections (SGDet) are used.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval().requires_grad_(False)

    def _box_features(self, features, boxes_t: torch.Tensor, image_size) -> torch.Tensor:
        roi = self.detector.roi_heads
        pooled = roi.box_roi_pool(features, [boxes_t], [image_size])  # (N, 256, 7, 7) level chosen by size
        return roi.box_head(pooled)  # (N, P) fc6 -> fc7

    @torch.no_grad()
    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        det = self.detector
        scores = None
        if boxes is None:
            out = det([image])[0]
            boxes, scores = out["boxes"], out["scores"]
        images, _ = det.transform([image])
        features = det.backbone(images.tensors)
        h_t, w_t = images.image_sizes[0]
        ratio = torch.tensor([w_t / image.shape[-1], h_t / image.shape[-2]] * 2, device=boxes.device)
        boxes_t = boxes.float() * ratio  # (N, 4) in the transformed image
        obj_feats = self._box_features(features, boxes_t, images.image_sizes[0])
        det_logits, _ = det.roi_heads.box_predictor(obj_feats)  # (N, C)
        n = len(boxes)
        s, o = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = s != o
        s, o = s[keep], o[keep]  # (N(N-1),) row-major ordered pairs
        union = torch.cat([torch.minimum(boxes_t[s, :2], boxes_t[o, :2]),
                           torch.maximum(boxes_t[s, 2:], boxes_t[o, 2:])], -1)  # (N(N-1), 4)
        union_feats = self._box_features(features, union, images.image_sizes[0]) if len(union) else \
            obj_feats.new_zeros(0, obj_feats.shape[1])
        if scores is None:
            scores = det_logits.softmax(-1)[:, 1:].max(-1).values
        return {"boxes": boxes.float(), "obj_feats": obj_feats, "det_logits": det_logits, "union_feats": union_feats,
                "det_scores": scores}


def extract_main(argv: list[str]) -> Path:
    """``shagcl extract``: run the detector over a dataset split and write the HDF5 feature cache."""
    import h5py
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from tqdm import tqdm

    from shagcl.data import GQA200Dataset, VG150Dataset

    p = argparse.ArgumentParser(prog="shagcl extract", description=extract_main.__doc__)
    p.add_argument("--dataset", choices=["vg150", "gqa200"], default="vg150")
    p.add_argument("--data_root", required=True, help="folder holding vg/ or gqa/ (spec §4)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    p.add_argument("--protocol", choices=["predcls", "sgcls", "sgdet"], default="predcls",
                   help="predcls/sgcls: features of the GT boxes; sgdet: of the detector's detections")
    p.add_argument("--checkpoint", default=None, help="detector_checkpoint: torchvision fasterrcnn_resnet50_fpn state dict")
    p.add_argument("--num_classes", type=int, default=None, help="detector classes incl. background (default: data)")
    p.add_argument("--output", required=True, help="HDF5 cache to write (data.feature_cache)")
    p.add_argument("--min_size", type=int, default=600, help="shorter side (spec §3.9: 600)")
    p.add_argument("--max_size", type=int, default=1000, help="longer side cap (spec §3.9: 1000)")
    p.add_argument("--detections_per_img", type=int, default=80, help="SGDet detections per image (spec §3.7)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max_images", type=int, default=None)
    p.add_argument("--num_val_images", type=int, default=5000)
    p.add_argument("--random_weights", action="store_true", help="random detector (tests only)")
    args = p.parse_args(argv)

    splits = ["train", "val", "test"] if args.split == "all" else [args.split]
    records = []
    for split in splits:
        if args.dataset == "vg150":
            ds = VG150Dataset(args.data_root, split, num_val_images=args.num_val_images, max_images=args.max_images,
                              predicate_order="file")
        else:
            ds = GQA200Dataset(args.data_root, split, num_val_images=args.num_val_images, max_images=args.max_images)
        records += ds.records
    num_classes = args.num_classes or len(ds.object_classes)
    image_root = Path(args.data_root) / ("vg" if args.dataset == "vg150" else "gqa")
    detector = build_detector(num_classes, args.checkpoint, args.min_size, args.max_size, args.detections_per_img,
                              allow_random=args.random_weights)
    extractor = FasterRCNNFeatures(detector).to(args.device)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    with h5py.File(out, "a") as f:
        for rec in tqdm(records, desc="shagcl extract", total=len(records)):
            if rec.image_id in seen or rec.image_id in f:
                continue
            seen.add(rec.image_id)
            path = image_root / rec.filename
            if not path.is_file():
                raise FileNotFoundError(f"image {str(path)!r} missing; see README, Data preparation")
            pil = Image.open(path).convert("RGB")
            if pil.size != (rec.width, rec.height):
                log.warning("%s: file size %s differs from the annotation's %s; using the file", path, pil.size,
                            (rec.width, rec.height))
            image = pil_to_tensor(pil).float().div(255).to(args.device)
            boxes = None if args.protocol == "sgdet" else torch.as_tensor(rec.boxes, device=args.device)
            if boxes is not None and pil.size != (rec.width, rec.height):
                boxes = boxes * torch.tensor([pil.size[0] / rec.width, pil.size[1] / rec.height] * 2,
                                             device=args.device)
            feats = extractor(image, boxes)
            grp = f.create_group(rec.image_id)
            for key, value in feats.items():
                grp.create_dataset(key, data=value.cpu().to(torch.float16 if key != "boxes" else torch.float32).numpy())
    log.info("wrote %d images to %s", len(seen), out)
    return out
