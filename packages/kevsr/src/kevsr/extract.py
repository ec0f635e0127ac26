"""``kevsr extract``: videos (read through mmzoo.video) → the feature files of spec §4.2 (reconstruction, §4.3).

Per video: N_f keyframes at segment centres; f2d = ResNet global feature; regions = the top N_r Faster R-CNN
boxes (score ≥ threshold) pooled by RoIAlign from the ResNet C5 map; f3d = a torchvision video model on the
``clip_len`` frames centred at each keyframe (normalised with the Kinetics statistics those models were trained
with, not ImageNet's); text = BERT [CLS] of the description. Every model is loaded
from a local file or folder; a missing one raises an error naming it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from mmzoo.data import read_torch, written_whole
from mmzoo.video import VideoDecodeError, VideoReader, normalize, resize_short_side, uniform_segment_indices

from kevsr.data import read_annotations

log = logging.getLogger(__name__)


RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VIDEO_MODELS = ("r3d_18", "r2plus1d_18", "mc3_18")
DETECTORS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")
# Input statistics of torchvision's Kinetics-400 video models (r3d_18, r2plus1d_18, mc3_18: their weights'
# VideoClassification transform), which differ from ImageNet's; the ResNet trunk keeps ImageNet's.
KINETICS_STATS = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))


def clip_input(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 clip (C_len, 3, H, W) → the video model's input (1, 3, C_len, h, w): short side ``size``,
    normalised with the Kinetics statistics of torchvision's video models."""
    clip = normalize(resize_short_side(frames, size), KINETICS_STATS)  # (C_len, 3, h, w)
    return clip.permute(1, 0, 2, 3)[None]


C5_STRIDE = 32  # a torchvision ResNet's last stage: one C5 cell per 32×32 input pixels


def pool_regions(c5: torch.Tensor, boxes: torch.Tensor, frame_hw: tuple[int, int], input_hw: tuple[int, int]):
    """RoIAlign of one frame's ``boxes`` (n, 4) x1y1x2y2 in the decoded frame's pixels (``frame_hw``, where the
    detector ran) on its C5 map ``c5`` (1, C, h', w') of the resized trunk input (``input_hw``) → (n, C) means of
    7×7 bins. Boxes are rescaled to the trunk input per axis and then mapped by the trunk's stride: the C5 map's
    own size rounds up (398 px → 13 cells, not 12.4), so dividing by it would stretch the boxes."""
    from torchvision.ops import roi_align

    (fh, fw), (ih, iw) = frame_hw, input_hw
    rescale = boxes.new_tensor([iw / fw, ih / fh, iw / fw, ih / fh])
    pooled = roi_align(c5, [boxes * rescale], output_size=(7, 7), spatial_scale=1.0 / C5_STRIDE, aligned=True)
    return pooled.mean(dim=(2, 3))


def _require(path: str | None, flag: str, what: str) -> str:
    if not path or not Path(path).exists():
        raise FileNotFoundError(f"kevsr extract {flag}={path!r}: supply {what} (local file, no download)")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kevsr extract", description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, help="folder with annotations/<split>.jsonl; writes features/")
    p.add_argument("--split", required=True, choices=["train", "val", "test"])
    p.add_argument("--videos-dir", required=True, help="videos as <video_id>.mp4 unless the annotation has video_path")
    p.add_argument("--resnet", choices=sorted(RESNETS), default="resnet50", help="torchvision ResNet for f2d/regions")
    p.add_argument("--resnet-weights", required=True, help="torchvision ResNet state_dict (.pth)")
    p.add_argument("--video-model", choices=sorted(VIDEO_MODELS), default="r3d_18", help="torchvision video model")
    p.add_argument("--video-model-weights", required=True, help="torchvision video model state_dict (.pth)")
    p.add_argument("--detector", choices=sorted(DETECTORS), default="fasterrcnn_resnet50_fpn")
    p.add_argument("--detector-weights", required=True, help="torchvision Faster R-CNN state_dict (.pth)")
    p.add_argument("--detector-num-classes", type=int, default=91, help="classes of the detector (COCO: 91)")
    p.add_argument("--bert", required=True, help="local transformers BERT folder (bert-base-chinese / -uncased)")
    p.add_argument("--num-frames", type=int, default=12, help="N_f keyframes (spec §3.7)")
    p.add_argument("--clip-len", type=int, default=16, help="N_c frames per 3D clip (spec §3.1)")
    p.add_argument("--num-regions", type=int, default=10, help="N_r boxes per keyframe")
    p.add_argument("--score-threshold", type=float, default=0.2, help="keep boxes scoring at least this")
    p.add_argument("--image-size", type=int, default=224, help="short side of the frames fed to the ResNet")
    p.add_argument("--clip-size", type=int, default=112, help="short side of the frames fed to the video model")
    p.add_argument("--on-corrupt", choices=["raise", "skip"], default="raise")
    p.add_argument("--device", default="cpu")
    return p


class FeatureExtractor:
    """The models of spec §4.3, built from local weights."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torchvision
        from torchvision.models import detection, video
        from transformers import AutoModel, AutoTokenizer

        for path, flag, what in (
            (args.resnet_weights, "--resnet-weights", "ResNet weights"),
            (args.video_model_weights, "--video-model-weights", "video model weights"),
            (args.detector_weights, "--detector-weights", "Faster R-CNN weights"),
            (args.bert, "--bert", "a BERT folder"),
        ):
            _require(path, flag, what)  # every file is checked before any model is built
        dev = torch.device(args.device)
        resnet = getattr(torchvision.models, args.resnet)(weights=None)
        resnet.load_state_dict(read_torch(args.resnet_weights, "--resnet-weights"))
        self.trunk = torch.nn.Sequential(*list(resnet.children())[:-2]).eval().to(dev)  # up to C5
        vmodel = getattr(video, args.video_model)(weights=None)
        vmodel.load_state_dict(read_torch(args.video_model_weights, "--video-model-weights"))
        vmodel.fc = torch.nn.Identity()
        self.video_model = vmodel.eval().to(dev)
        det = getattr(detection, args.detector)(
            weights=None, weights_backbone=None, num_classes=args.detector_num_classes
        )
        det.load_state_dict(read_torch(args.detector_weights, "--detector-weights"))
        self.detector = det.eval().to(dev)
        self.tokenizer = AutoTokenizer.from_pretrained(args.bert)
        self.bert = AutoModel.from_pretrained(args.bert).eval().to(dev)
        self.args, self.device = args, dev

    @torch.no_grad()
    def __call__(self, reader: VideoReader, text: str) -> dict[str, np.ndarray]:
        a, dev = self.args, self.device
        n = reader.num_frames
        keys = uniform_segment_indices(n, a.num_frames, train=False)
        frames = reader.get_frames(keys).to(dev)  # (T, 3, H, W) uint8
        x = normalize(resize_short_side(frames, a.image_size), "imagenet")  # (T, 3, h, w)
        c5 = self.trunk(x)  # (T, 2048, h/32, w/32)
        f2d = c5.mean(dim=(2, 3))  # (T, 2048)
        dets = self.detector(list(frames.float() / 255.0))
        t = len(keys)
        regions = torch.zeros(t, a.num_regions, c5.shape[1], device=dev)
        mask = torch.zeros(t, a.num_regions, dtype=torch.uint8)
        boxes_out = np.zeros((t, a.num_regions, 4), np.float32)
        for j, d in enumerate(dets):
            keep = d["scores"] >= a.score_threshold
            boxes = d["boxes"][keep][: a.num_regions]  # sorted by score
            if len(boxes):
                pooled = pool_regions(c5[j : j + 1], boxes, frames.shape[-2:], x.shape[-2:])  # (n, 2048)
                regions[j, : len(boxes)] = pooled
                mask[j, : len(boxes)] = 1
                boxes_out[j, : len(boxes)] = boxes.cpu().numpy()
        f3d = []
        for k in keys:
            idx = [min(max(k - a.clip_len // 2 + i, 0), n - 1) for i in range(a.clip_len)]
            clip = clip_input(reader.get_frames(idx), a.clip_size).to(dev)  # (1, 3, C_len, h, w)
            f3d.append(self.video_model(clip)[0])  # (D3,)
        tok = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=128).to(dev)
        cls = self.bert(**tok).last_hidden_state[0, 0]  # (768,)
        return {
            "f2d": f2d.cpu().numpy(),
            "f3d": torch.stack(f3d).cpu().numpy(),
            "text": cls.cpu().numpy(),
            "regions": regions.cpu().numpy(),
            "region_mask": mask.numpy(),
            "region_boxes": boxes_out,
        }


def main(argv: list[str]) -> Path:
    import h5py
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    root = Path(args.data_root)
    rows = read_annotations(root / "annotations" / f"{args.split}.jsonl")
    extractor = FeatureExtractor(args)
    out = root / "features" / f"{args.split}.h5"
    with written_whole(out) as tmp, h5py.File(tmp, "w") as f:  # a run stopped part-way leaves no partial file
        for row in tqdm(rows, desc=f"kevsr extract {args.split}", total=len(rows)):
            path = row.get("video_path") or str(Path(args.videos_dir) / f"{row['video_id']}.mp4")
            try:
                with VideoReader(path) as reader:
                    feats = extractor(reader, row["text"])
            except VideoDecodeError as err:
                if args.on_corrupt == "raise":
                    raise
                log.warning("skipping corrupt video %s: %s", err.path, err)
                continue
            g = f.create_group(row["video_id"])
            for key, arr in feats.items():
                g.create_dataset(key, data=arr)
    return out
