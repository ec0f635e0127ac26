"""Feature extraction with a torchvision Faster R-CNN (spec §3.2.4, ``detector`` source), cached to HDF5 so that
relation training does not rerun the detector: ``shagcl extract --help``.

Per image the cache holds (group ``<image_id>``, float16 except boxes): ``boxes`` (N, 4) xyxy pixels (GT boxes
for PredCls/SGCls; up to 80 detections for SGDet, followed in the train split by the GT boxes, ``num_det`` (1,)
= number of detections), ``det_logits`` (N, C_obj) the detector's class logits, ``det_scores`` (N,), and

* objects (``--object_stage``): ``obj_pooled`` (N, 256, 7, 7) the ROIAlign maps fc6 consumes (``pooled``, the
  default: the relation head trains its own fc6/fc7 copies, spec §3.2.1), or ``obj_feats`` (N, P) the detector's
  frozen box-head output (``fc7``);
* pairs, every ordered pair s ≠ o (row-major over s, then o) (``--union_stage``): ``union_pooled`` (N(N−1), 4·256,
  7, 7) ROIAlign of the union box on all four FPN levels, concatenated (``pooled``, the default: the official
  union path, spec §3.2.2), or ``union_feats`` (N(N−1), P) the detector's box head on the union box at the one
  level MultiScaleRoIAlign picks (``fc7``, the compact simplified path).

Boxes are stored in the annotation's frame (the image size listed in ``image_data.json`` / the GQA JSON): when the
image file's size differs, boxes are rescaled to the file only to pool features and scaled back before they are
written, as the official loader does.

SGDet detections follow the official post-processing (``MODEL.ROI_HEADS``): per-class NMS at IoU 0.3 over the
(proposal, class) scores above 0.01, and with ``filter_duplicates`` (NMS_FILTER_DUPLICATES: True) at most one
detection per proposal, its best class among those surviving NMS; at most 80 per image.

Deviation (README): the paper's detector is maskrcnn-benchmark ResNeXt-101-32x8d-FPN (P = 4096); here torchvision
ResNet-50-FPN (P = 1024).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Literal, get_args

import torch
from mmzoo.config import check_choice
from mmzoo.data import read_torch
from torch import nn

__all__ = ["FasterRCNNFeatures", "extract_main", "build_detector", "filter_duplicate_detections"]

log = logging.getLogger(__name__)

Stage = Literal["pooled", "fc7"]
"""What the cache stores of objects / union boxes (``--object_stage``, ``--union_stage``): ROIAlign maps or fc7."""


def build_detector(
    num_classes: int,
    checkpoint: str | None,
    min_size: int = 600,
    max_size: int = 1000,
    detections_per_img: int = 80,
    allow_random: bool = False,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.3,
) -> nn.Module:
    """A torchvision ``fasterrcnn_resnet50_fpn`` with ``num_classes`` (incl. background) loaded from ``checkpoint``
    (a state dict, or a dict with ``model``/``state_dict``). ``allow_random`` builds random weights (tests only).
    ``score_thresh`` / ``nms_thresh``: detection post-processing (official ROI_HEADS.SCORE_THRESH 0.01, NMS 0.3)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        box_detections_per_img=detections_per_img,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
    )
    if checkpoint is None:
        if allow_random:
            return model.eval()
        raise FileNotFoundError(
            "--checkpoint (detector_checkpoint) is required: a torchvision fasterrcnn_resnet50_fpn "
            f"state dict trained on the dataset's {num_classes - 1} classes; see README, "
            "Data preparation"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"--checkpoint {checkpoint!r} does not exist (detector_checkpoint: a torchvision "
            "fasterrcnn_resnet50_fpn state dict); see README, Data preparation"
        )
    state = read_torch(path, "--checkpoint")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    model.load_state_dict(state)
    return model.eval()


def filter_duplicate_detections(
    boxes_per_cls: torch.Tensor,
    scores: torch.Tensor,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    per_class_topn: int = 300,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detection post-processing with NMS_FILTER_DUPLICATES (the official box-head post-processor).

    boxes_per_cls (P, C, 4) regressed boxes of every proposal for every class, scores (P, C) softmax (column 0 =
    background). Per foreground class: the proposals scoring above ``score_thresh``, greedy NMS at ``nms_thresh``
    (at most ``per_class_topn`` kept). Each proposal then keeps only its best-scoring class among those it survived
    NMS for (none: dropped), so one proposal gives at most one detection. Sorted by score, at most
    ``detections_per_img``. Returns proposal indices (D,), labels (D,), scores (D,), boxes (D, 4)."""
    from torchvision.ops import nms

    survived = torch.zeros_like(scores, dtype=torch.bool)
    for c in range(1, scores.shape[1]):
        idx = (scores[:, c] > score_thresh).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        keep = nms(boxes_per_cls[idx, c].float(), scores[idx, c].float(), nms_thresh)[:per_class_topn]
        survived[idx[keep], c] = True
    best, labels = torch.where(survived, scores, torch.zeros_like(scores)).max(1)  # (P,) best surviving class
    props = best.nonzero().squeeze(1)
    props = props[best[props].argsort(descending=True)][:detections_per_img]
    labels = labels[props]
    return props, labels, best[props], boxes_per_cls[props, labels]


class FasterRCNNFeatures(nn.Module):
    """Object and union features from a frozen torchvision Faster R-CNN.

    forward(image (3, H, W) float in [0, 1], boxes (N, 4) xyxy pixels or None, extra_boxes (E, 4) or None) -> dict
    (see the module docstring). With ``boxes=None`` the detector's own detections (SGDet) are used, followed by
    ``extra_boxes`` (the GT boxes of a training image); ``num_det`` counts the detections. Boxes are in the frame of
    ``image``. ``filter_duplicates``: at most one detection per proposal (official NMS_FILTER_DUPLICATES: True);
    false: torchvision's post-processing (every surviving (proposal, class)).
    """

    def __init__(
        self,
        detector: nn.Module,
        object_stage: Stage = "pooled",
        union_stage: Stage = "pooled",
        chunk: int = 256,
        filter_duplicates: bool = True,
    ) -> None:
        super().__init__()
        # `shagcl extract` lets argparse check these; anything else would silently cache fc7 features
        check_choice("object_stage", object_stage, get_args(Stage))
        check_choice("union_stage", union_stage, get_args(Stage))
        self.detector = detector.eval().requires_grad_(False)
        self.object_stage, self.union_stage, self.chunk = object_stage, union_stage, chunk
        self.filter_duplicates = filter_duplicates

    def _detect(self, images, features) -> tuple[torch.Tensor, torch.Tensor]:
        """SGDet detections of one transformed image: boxes (D, 4) in the transformed frame, scores (D,)."""
        from torchvision.ops import boxes as box_ops

        det, roi = self.detector, self.detector.roi_heads
        proposals, _ = det.rpn(images, features)
        size_t = images.image_sizes[0]
        class_logits, box_regression = roi.box_predictor(roi.box_head(roi.box_roi_pool(features, proposals, [size_t])))
        if not self.filter_duplicates:
            boxes, scores, _ = roi.postprocess_detections(class_logits, box_regression, proposals, [size_t])
            return boxes[0], scores[0]
        boxes_per_cls = box_ops.clip_boxes_to_image(roi.box_coder.decode(box_regression, proposals), size_t)
        _, _, scores, boxes = filter_duplicate_detections(
            boxes_per_cls, class_logits.softmax(-1), roi.score_thresh, roi.nms_thresh, roi.detections_per_img
        )
        return boxes, scores

    def _all_levels(self, features, boxes_t: torch.Tensor) -> torch.Tensor:
        """ROIAlign 7×7 (sampling ratio 2) of ``boxes_t`` on every FPN level, concatenated: (M, L·256, 7, 7)."""
        from torchvision.ops import roi_align

        pool = self.detector.roi_heads.box_roi_pool
        rois = torch.cat([boxes_t.new_zeros(len(boxes_t), 1), boxes_t], 1)  # (M, 5) batch index 0
        maps = [
            roi_align(features[name], rois, pool.output_size, spatial_scale=scale, sampling_ratio=pool.sampling_ratio)
            for name, scale in zip(pool.featmap_names, pool.scales)
        ]
        return torch.cat(maps, 1)

    @torch.no_grad()
    def forward(
        self, image: torch.Tensor, boxes: torch.Tensor | None = None, extra_boxes: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        det = self.detector
        roi = det.roi_heads
        images, _ = det.transform([image])
        features = det.backbone(images.tensors)
        size_t = images.image_sizes[0]
        h_t, w_t = size_t
        ratio = torch.tensor([w_t / image.shape[-1], h_t / image.shape[-2]] * 2, device=image.device)
        scores = None
        if boxes is None:
            boxes_det, scores = self._detect(images, features)
            boxes = boxes_det / ratio  # back to the frame of ``image``
        num_det = len(boxes)
        if extra_boxes is not None and len(extra_boxes):
            boxes = torch.cat([boxes, extra_boxes.to(boxes)])
        boxes_t = boxes.float() * ratio  # (N, 4) in the transformed image
        obj_pooled = roi.box_roi_pool(features, [boxes_t], [size_t])  # (N, 256, 7, 7) level chosen by box size
        obj_feats = roi.box_head(obj_pooled)  # (N, P) fc6 -> fc7
        det_logits, _ = roi.box_predictor(obj_feats)  # (N, C)
        n = len(boxes)
        s, o = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = s != o
        s, o = s[keep], o[keep]  # (N(N-1),) row-major ordered pairs
        union = torch.cat(
            [torch.minimum(boxes_t[s, :2], boxes_t[o, :2]), torch.maximum(boxes_t[s, 2:], boxes_t[o, 2:])], -1
        )  # (N(N-1), 4)
        parts = []  # stored as float16 on the host: the cache's storage format (module docstring)
        for chunk in union.split(self.chunk):
            if self.union_stage == "pooled":
                part = self._all_levels(features, chunk)
            else:
                part = roi.box_head(roi.box_roi_pool(features, [chunk], [size_t]))
            parts.append(part.to(device="cpu", dtype=torch.float16))
        width = (
            (len(roi.box_roi_pool.featmap_names) * obj_pooled.shape[1], *obj_pooled.shape[2:])
            if self.union_stage == "pooled"
            else (obj_feats.shape[1],)
        )
        union_out = torch.cat(parts) if parts else torch.zeros(0, *width, dtype=torch.float16)
        if scores is None:
            scores = det_logits.softmax(-1)[:, 1:].max(-1).values
        else:
            scores = torch.cat([scores, det_logits[num_det:].softmax(-1)[:, 1:].max(-1).values])
        out = {
            "boxes": boxes.float(),
            "det_logits": det_logits,
            "det_scores": scores,
            "num_det": torch.tensor([num_det]),
        }
        if self.object_stage == "pooled":
            out["obj_pooled"] = obj_pooled
        else:
            out["obj_feats"] = obj_feats
        out["union_pooled" if self.union_stage == "pooled" else "union_feats"] = union_out
        return out


def extract_main(argv: list[str]) -> Path:
    """``shagcl extract``: run the detector over a dataset split and write the HDF5 feature cache."""
    import h5py
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from tqdm import tqdm

    from shagcl.data import INCOMPLETE_PREFIX, GQA200Dataset, VG150Dataset

    p = argparse.ArgumentParser(prog="shagcl extract", description=extract_main.__doc__)
    p.add_argument("--dataset", choices=["vg150", "gqa200"], default="vg150")
    p.add_argument("--data_root", required=True, help="folder holding vg/ or gqa/ (spec §4)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    p.add_argument(
        "--protocol",
        choices=["predcls", "sgcls", "sgdet"],
        default="predcls",
        help="predcls/sgcls: features of the GT boxes; sgdet: of the detector's detections",
    )
    p.add_argument(
        "--checkpoint", default=None, help="detector_checkpoint: torchvision fasterrcnn_resnet50_fpn state dict"
    )
    p.add_argument("--num_classes", type=int, default=None, help="detector classes incl. background (default: data)")
    p.add_argument("--output", required=True, help="HDF5 cache to write (data.feature_cache)")
    p.add_argument("--min_size", type=int, default=600, help="shorter side (spec §3.9: 600)")
    p.add_argument("--max_size", type=int, default=1000, help="longer side cap (spec §3.9: 1000)")
    p.add_argument("--detections_per_img", type=int, default=80, help="SGDet detections per image (spec §3.7)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max_images", type=int, default=None)
    p.add_argument("--num_val_images", type=int, default=5000)
    p.add_argument(
        "--object_stage",
        choices=list(get_args(Stage)),
        default="pooled",
        help="pooled: ROIAlign maps for the relation head's trainable fc6/fc7 (paper, spec §3.2.1); "
        "fc7: the detector's frozen box-head features",
    )
    p.add_argument(
        "--union_stage",
        choices=list(get_args(Stage)),
        default="pooled",
        help="pooled: all-level union ROIAlign maps, the official union path (spec §3.2.2; "
        "≈ 100 kB per ordered pair); fc7: the detector's box head on the union box (2 kB per pair)",
    )
    p.add_argument(
        "--sgdet_gt_boxes",
        choices=["true", "false"],
        default="true",
        help="SGDet: also cache the GT boxes of training images after the detections (spec §3.7)",
    )
    p.add_argument("--score_thresh", type=float, default=0.01, help="SGDet detection score threshold (official 0.01)")
    p.add_argument("--nms_thresh", type=float, default=0.3, help="SGDet per-class NMS IoU (official ROI_HEADS.NMS 0.3)")
    p.add_argument(
        "--filter_duplicates",
        choices=["true", "false"],
        default="true",
        help="SGDet: at most one detection per proposal, its best class surviving NMS (official "
        "NMS_FILTER_DUPLICATES: True); false: every surviving (proposal, class), torchvision's default",
    )
    p.add_argument(
        "--on_corrupt",
        choices=["raise", "skip"],
        default="raise",
        help="an image file that cannot be decoded: raise (naming it) or skip it with a warning; a skipped image "
        "has no entry in the cache (the datasets then need data.missing_features: drop)",
    )
    p.add_argument(
        "--clip_boxes",
        choices=["true", "false"],
        default="true",
        help="clamp the annotated boxes to their image as the official loaders (data.clip_boxes; use the same value)",
    )
    p.add_argument("--random_weights", action="store_true", help="random detector (tests only)")
    args = p.parse_args(argv)

    splits = ["train", "val", "test"] if args.split == "all" else [args.split]
    records = []
    for split in splits:
        if args.dataset == "vg150":
            ds = VG150Dataset(
                args.data_root,
                split,
                num_val_images=args.num_val_images,
                max_images=args.max_images,
                predicate_order="file",
                clip_boxes=args.clip_boxes == "true",
            )
        else:
            ds = GQA200Dataset(
                args.data_root,
                split,
                num_val_images=args.num_val_images,
                max_images=args.max_images,
                clip_boxes=args.clip_boxes == "true",
            )
        records += [(split, rec) for rec in ds.records]
    num_classes = args.num_classes or len(ds.object_classes)
    image_root = Path(args.data_root) / ("vg" if args.dataset == "vg150" else "gqa")
    detector = build_detector(
        num_classes,
        args.checkpoint,
        args.min_size,
        args.max_size,
        args.detections_per_img,
        allow_random=args.random_weights,
        score_thresh=args.score_thresh,
        nms_thresh=args.nms_thresh,
    )
    extractor = FasterRCNNFeatures(
        detector, args.object_stage, args.union_stage, filter_duplicates=args.filter_duplicates == "true"
    ).to(args.device)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    skipped: list[str] = []
    try:
        f = h5py.File(out, "a")
    except OSError as err:  # h5py's message names no file
        raise OSError(f"--output {str(out)!r} cannot be opened as HDF5 ({err}); a run killed while writing can "
                      "leave it so: delete it to extract again") from err  # fmt: skip
    with f:
        for name in [k for k in f.keys() if k.startswith(INCOMPLETE_PREFIX)]:  # an earlier run stopped mid-image
            del f[name]
        for split, rec in tqdm(records, desc="shagcl extract", total=len(records)):
            if rec.image_id in seen or rec.image_id in f:
                continue
            seen.add(rec.image_id)
            path = image_root / rec.filename
            if not path.is_file():
                raise FileNotFoundError(f"image {str(path)!r} missing; see README, Data preparation")
            try:
                with Image.open(path) as im:
                    im.load()  # decode the whole file here: a truncated one fails now, not later
                    pil = im.convert("RGB")
            except (OSError, ValueError, SyntaxError, EOFError) as err:  # UnidentifiedImageError is an OSError
                if args.on_corrupt == "raise":
                    raise ValueError(
                        f"corrupt image {str(path)!r} (image {rec.image_id}): {err}; replace the file, or pass "
                        "--on_corrupt skip to leave it out of the cache"
                    ) from err
                log.warning("skipping corrupt image %s (image %s): %s", path, rec.image_id, err)
                skipped.append(rec.image_id)
                continue
            if pil.size != (rec.width, rec.height):
                log.warning(
                    "%s: file size %s differs from the annotation's %s; using the file",
                    path,
                    pil.size,
                    (rec.width, rec.height),
                )
            image = pil_to_tensor(pil).float().div(255).to(args.device)
            gt = torch.as_tensor(rec.boxes, dtype=torch.float32, device=args.device)  # annotation frame
            # boxes go to the file's frame only to pool features; the cache keeps the annotation frame
            to_file = torch.tensor([pil.size[0] / rec.width, pil.size[1] / rec.height] * 2, device=args.device)
            if args.protocol == "sgdet":
                extra = gt * to_file if split == "train" and args.sgdet_gt_boxes == "true" else None
                feats = extractor(image, None, extra)
                num_det = int(feats["num_det"][0])
                feats["boxes"] = torch.cat([feats["boxes"][:num_det] / to_file, gt[: len(feats["boxes"]) - num_det]])
            else:
                feats = extractor(image, gt * to_file)
                feats["boxes"] = gt
            partial = INCOMPLETE_PREFIX + rec.image_id
            grp = f.create_group(partial)
            for key, value in feats.items():
                dtype = {"boxes": torch.float32, "num_det": torch.int64}.get(key, torch.float16)
                grp.create_dataset(key, data=value.cpu().to(dtype).numpy())
            f.move(partial, rec.image_id)  # complete: only now under the image's id
    if skipped:
        log.warning(
            "skipped %d corrupt images (--on_corrupt skip), e.g. %s; they have no features in %s, so the datasets "
            "need data.missing_features: drop",
            len(skipped),
            skipped[:5],
            out,
        )
    log.info("wrote %d images to %s", len(seen) - len(skipped), out)
    return out
