"""Editing benchmarks (spec §4): LOVEU-TGVE-2023 (official layout), ZVE-50 (package-defined layout), any folder of
videos with a prompts file; the synthetic generators of spec §8b; the LightningDataModule.

Every dataset yields one item per (clip, target prompt)::

    {"frames": uint8 (F, 3, S, S), "depth": float32 (F, S, S) or (0,) when no depth file, "source_prompt": str,
     "target_prompt": str, "video_id": str, "edit_type": str, "group": str, "fps": float}
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_range
from mmzoo.data import evaluation_sampler, read_json
from mmzoo.video import (
    VideoDecodeError,
    VideoReader,
    center_crop,
    resize_short_side,
    uniform_segment_indices,
    write_video,
)
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

__all__ = [
    "LOVEU_COLUMNS",
    "LOVEU_GROUPS",
    "LOVEU_HEADER_LABELS",
    "LOVEU_ROW_SLICES",
    "LOVEUDataset",
    "ZVEDataset",
    "VideoFolderDataset",
    "EVEDataModule",
    "collate_one",
    "synthetic_clip",
    "make_loveu",
    "make_zve",
]

FramesMode = Literal["first", "uniform", "stride"]
OnCorrupt = Literal["raise", "skip"]
LOVEU_GROUPS = ("DAVIS_480p", "youtube_480p", "videvo_480p")
#: the group header rows of the official CSV ("Video name" column), in the order of LOVEU_GROUPS
LOVEU_HEADER_LABELS = ("DAVIS Videos:", "Youtube Videos:", "Videvo Videos:")
#: the rows (pandas indices, the column header not counted) the official evaluation script takes as each group's
#: videos: df[1:17], df[19:42], df[44:82]; the group header rows sit just above them, at rows 0, 18 and 43
LOVEU_ROW_SLICES = ((1, 17), (19, 42), (44, 82))
#: edit type → column of the official CSV
LOVEU_COLUMNS = {
    "style": "Style Change Caption",
    "object": "Object Change Caption",
    "background": "Background Change Caption",
    "multiple": "Multiple Changes Caption",
}
_HELP = "see README, Data preparation"


def frame_indices(total: int, num_frames: int, mode: FramesMode, stride: int = 1) -> list[int]:
    """Indices of the F frames to edit (spec §4.3): the first F, uniform segments, or every ``stride``-th."""
    check_choice("data.frames_mode", mode, ("first", "uniform", "stride"))
    if mode == "first":
        return list(range(min(total, num_frames)))
    if mode == "uniform":
        # fewer frames than F: every frame once, as the other modes give them; uniform segments would repeat frames,
        # whose copies would then be edited and scored as frames of their own (a flattering frame consistency)
        return list(range(total)) if total < num_frames else uniform_segment_indices(total, num_frames, train=False)
    if stride < 1:
        raise ValueError(f"data.frame_stride={stride} must be >= 1")
    return list(range(0, total, stride))[:num_frames]


def _prompt(value: object, where: str) -> str:
    """A prompt read from an annotation file: a string with some text. ``where`` names the file and the entry."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a non-empty prompt string, got {value!r}; {_HELP}")
    return value


def loveu_group_of_header(name: str) -> str | None:
    """The group folder a LOVEU CSV header row opens, or None when ``name`` is not a header row.

    The official CSV labels its groups ``DAVIS Videos:``, ``Youtube Videos:``, ``Videvo Videos:``; the folder names
    themselves (``DAVIS_480p`` ...) are accepted too. Case, surrounding spaces and the trailing colon do not matter."""
    s = name.strip().lower().rstrip(":").strip()
    for suffix in (" videos", "_480p"):
        if s.endswith(suffix):
            s = s[: -len(suffix)].strip()
            break
    return {"davis": LOVEU_GROUPS[0], "youtube": LOVEU_GROUPS[1], "videvo": LOVEU_GROUPS[2]}.get(s)


def _prepare_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` and centre-crop size×size (spec §4.3). uint8 (F, 3, H, W)."""
    return center_crop(resize_short_side(frames, size), size)


def _prepare_depth(depth: torch.Tensor, frame_hw: tuple[int, int], size: int) -> torch.Tensor:
    """Precomputed depth (F, H', W') aligned with the frames: (F, S, S).

    A depth map covers the whole source frame, whatever its own resolution or aspect ratio (MiDaS is run on the
    frame resized to its input size, e.g. 384×384). It is resized bicubically, in one step, straight to the size the
    frames' short-side resize gives the source frame (spec §3.1: bicubic resize to the frame size), then cropped with
    the frames' centre crop, so it covers exactly the frames' window. Resizing and cropping the map at its own aspect
    ratio would crop a different window; resizing it twice (to the source size, then with the frames' bilinear
    short-side resize) would not be a bicubic resize. The same interpolation as the pipeline's resize of estimated
    maps (:meth:`evedit.pipeline.EVEPipeline.prepare_depth`)."""
    h, w = frame_hw
    short, long = (h, w) if h <= w else (w, h)
    new_long = max(1, int(size * long / short))  # the long side mmzoo.video.resize_short_side gives the frames
    resized_hw = (size, new_long) if h <= w else (new_long, size)
    d = depth[:, None].float()  # (F, 1, H', W')
    if tuple(d.shape[-2:]) != resized_hw:
        d = F.interpolate(d, size=resized_hw, mode="bicubic", align_corners=False)  # (F, 1, h, w)
    return center_crop(d, size)[:, 0]  # (F, S, S), the frames' crop


class _ClipDataset(Dataset):
    """Shared reading of one clip (video file or frame folder) plus optional precomputed depth."""

    def __init__(
        self,
        num_frames: int,
        size: int,
        frames_mode: FramesMode,
        frame_stride: int,
        on_corrupt: OnCorrupt,
        use_depth_files: bool,
    ):
        check_range("data.num_frames", num_frames, ge=1, integer=True)
        check_range("data.size", size, ge=1, integer=True)
        check_choice("data.frames_mode", frames_mode, ("first", "uniform", "stride"))
        check_choice("data.on_corrupt", on_corrupt, ("raise", "skip"))
        if frame_stride < 1:
            raise ValueError(f"data.frame_stride={frame_stride} must be >= 1")
        self.num_frames = num_frames
        self.size = size
        self.frames_mode = frames_mode
        self.frame_stride = frame_stride
        self.on_corrupt = on_corrupt
        self.use_depth_files = use_depth_files
        self.items: list[dict] = []

    def __len__(self) -> int:
        return len(self.items)

    def _check_unique(self, where: Path) -> None:
        """Each (video, edit type) names one output folder: a repeated pair would overwrite another edit and be
        scored in its place."""
        seen: set[tuple[str, str]] = set()
        for it in self.items:
            key = (it["group"], it["video_id"], it["edit_type"])
            if key in seen:
                raise ValueError(
                    f"{where}: video {it['video_id']!r} has two edits of type {it['edit_type']!r} (each (video, type) "
                    f"pair names one output folder); {_HELP}"
                )
            seen.add(key)

    def _read(self, video: Path | None, frame_dir: Path | None) -> tuple[torch.Tensor, list[int], float]:
        if video is not None:
            with VideoReader(video) as reader:
                idx = frame_indices(reader.num_frames, self.num_frames, self.frames_mode, self.frame_stride)
                return reader.get_frames(idx), idx, reader.fps
        from torchvision.io import ImageReadMode, read_image

        files = sorted(frame_dir.glob("*.jpg")) + sorted(frame_dir.glob("*.png"))
        if not files:
            raise VideoDecodeError(frame_dir, "no .jpg/.png frames in the folder")
        idx = frame_indices(len(files), self.num_frames, self.frames_mode, self.frame_stride)
        try:
            images = [read_image(str(files[i]), ImageReadMode.RGB) for i in idx]  # grey / RGBA files → RGB
        except RuntimeError as err:
            raise VideoDecodeError(frame_dir, f"cannot decode a frame: {err}") from err
        other = next((k for k, im in enumerate(images) if im.shape != images[0].shape), None)
        if other is not None:  # a broken clip (data.on_corrupt applies), named by its files, not by a stack error
            raise VideoDecodeError(
                frame_dir,
                f"frames {files[idx[0]].name} and {files[idx[other]].name} differ in size ({tuple(images[0].shape[-2:])} "
                f"vs {tuple(images[other].shape[-2:])}); the frames of a clip share one size",
            )
        return torch.stack(images), idx, 8.0

    def _depth(self, depth_dir: Path | None, idx: list[int], frame_hw: tuple[int, int]) -> torch.Tensor:
        """The clip's depth files (one 2-D float map per frame, one size for the clip, any aspect ratio), aligned
        with the frames of source size ``frame_hw`` (see :func:`_prepare_depth`); (0,) without depth files."""
        if not self.use_depth_files or depth_dir is None:
            return torch.zeros(0)
        files = [depth_dir / f"{i:05d}.npy" for i in idx]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"missing depth map {missing[0]} (data.use_depth_files=true expects "
                f"<depth dir>/%05d.npy per frame); {_HELP}"
            )
        maps = []
        for f in files:
            try:
                m = np.load(f)
            except (OSError, ValueError) as err:
                raise ValueError(f"depth map {f}: cannot be read as a .npy array ({err}); {_HELP}") from err
            if m.ndim != 2 or not np.issubdtype(m.dtype, np.number):
                raise ValueError(f"depth map {f}: expected a 2-D (H', W') numeric array, got {m.dtype} {m.shape}")
            if maps and m.shape != maps[0].shape:
                raise ValueError(
                    f"depth map {f}: size {m.shape} differs from {files[0]} {tuple(maps[0].shape)} (the maps of a "
                    "clip share one size)"
                )
            if not np.isfinite(m).all():
                raise ValueError(f"depth map {f}: contains NaN or infinite values")
            maps.append(torch.from_numpy(m.astype(np.float32)))
        return _prepare_depth(torch.stack(maps), frame_hw, self.size)  # (F, S, S)

    def __getitem__(self, i: int) -> dict | None:
        it = self.items[i]
        try:
            frames, idx, fps = self._read(it.get("video"), it.get("frame_dir"))
        except VideoDecodeError as err:
            if self.on_corrupt == "raise":
                raise
            log.warning("skipping corrupt clip %s: %s", err.path, err.reason)
            return None
        return {
            "frames": _prepare_frames(frames, self.size),
            "depth": self._depth(it.get("depth_dir"), idx, tuple(frames.shape[-2:])),  # aligned with the frames
            "source_prompt": it["source_prompt"],
            "target_prompt": it["target_prompt"],
            "video_id": it["video_id"],
            "edit_type": it["edit_type"],
            "group": it["group"],
            "fps": it.get("fps") or fps,  # an annotated frame rate, else the video's (frame folders: 8)
        }


class LOVEUDataset(_ClipDataset):
    """LOVEU-TGVE-2023 in its official layout (spec §4.2)::

        <data_root>/loveu-tgve-2023/LOVEU-TGVE-2023_Dataset.csv
        <data_root>/loveu-tgve-2023/<group>/480p_videos/<Video name>.mp4     (source: videos)
        <data_root>/loveu-tgve-2023/<group>/480p_frames/<Video name>/*.jpg   (source: frames)
        <data_root>/loveu-tgve-2023/<group>/depth/<Video name>/%05d.npy      (optional, package-defined)

    The CSV's group header rows (``DAVIS Videos:``, ``Youtube Videos:``, ``Videvo Videos:`` in the official file; the
    folder names ``DAVIS_480p`` ... are accepted too), which the official script skips by slicing its rows at 1:17,
    19:42, 44:82, assign each following video to its group. Captions are stripped of surrounding spaces (as the
    official script does); a video row without its source caption, with an empty caption of a selected edit, or
    listed twice is an error.

    Args:
        data_root: folder holding ``loveu-tgve-2023/``.
        split: ``all`` or one group name.
        edits: which edit columns to use (``style``, ``object``, ``background``, ``multiple``).
    """

    def __init__(
        self,
        data_root: str | Path,
        split: str = "all",
        edits: list[str] | None = None,
        num_frames: int = 8,
        size: int = 512,
        frames_mode: FramesMode = "uniform",
        frame_stride: int = 1,
        source: Literal["videos", "frames"] = "videos",
        on_corrupt: OnCorrupt = "raise",
        use_depth_files: bool = False,
    ):
        super().__init__(num_frames, size, frames_mode, frame_stride, on_corrupt, use_depth_files)
        root = Path(data_root) / "loveu-tgve-2023"
        csv_path = root / "LOVEU-TGVE-2023_Dataset.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"data.data_root={str(data_root)!r}: missing {csv_path} (the official "
                f"LOVEU-TGVE-2023 annotations); {_HELP}"
            )
        if split != "all" and split not in LOVEU_GROUPS:
            raise ValueError(f"data.split={split!r}: expected 'all' or one of {LOVEU_GROUPS}")
        check_choice("data.source", source, ("videos", "frames"))
        edits = list(edits or LOVEU_COLUMNS)
        unknown = [e for e in edits if e not in LOVEU_COLUMNS]
        if unknown:
            raise ValueError(f"data.edits: unknown edit types {unknown}; expected a subset of {list(LOVEU_COLUMNS)}")
        if len(set(edits)) != len(edits):  # each (video, type) is one output folder, edited and scored once
            raise ValueError(f"data.edits={edits}: an edit type is listed twice")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark is no column
            reader = csv.DictReader(f)
            needed = ["Video name", "Our GT caption", *(LOVEU_COLUMNS[e] for e in edits)]
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise KeyError(f"{csv_path}: missing columns {missing}; {_HELP}")
            rows = list(reader)
        group = None
        seen: set[str] = set()
        captions = list(LOVEU_COLUMNS.values())
        for i, row in enumerate(rows):  # i = the row's index in the official script's pandas frame
            name = (row.get("Video name") or "").strip()
            source_prompt = (row.get("Our GT caption") or "").strip()
            header = loveu_group_of_header(name) if name else None
            if header is not None:
                group = header
                continue
            if not name and not source_prompt:
                continue  # blank separator rows
            if not source_prompt:
                if any((row.get(c) or "").strip() for c in captions):
                    raise ValueError(f"{csv_path} row {i}: video {name!r} has edit captions but no 'Our GT caption'")
                log.warning(
                    "LOVEU-TGVE: %s row %d: skipping row %r (no captions, not a group header)", csv_path, i, name
                )
                continue
            if not name:
                raise ValueError(f"{csv_path} row {i}: a row with captions has no 'Video name'")
            if group is None:
                raise ValueError(
                    f"{csv_path}: video {name!r} appears before any group header row {LOVEU_HEADER_LABELS}"
                )
            if name in seen:
                raise ValueError(f"{csv_path} row {i}: video {name!r} is listed twice")
            seen.add(name)
            targets = {e: (row.get(LOVEU_COLUMNS[e]) or "").strip() for e in edits}
            empty = [LOVEU_COLUMNS[e] for e, t in targets.items() if not t]
            if empty:
                raise ValueError(
                    f"{csv_path} row {i}: video {name!r} has an empty {empty} (leave that edit out with data.edits)"
                )
            if split != "all" and group != split:
                continue
            video = root / group / "480p_videos" / f"{name}.mp4"
            frame_dir = root / group / "480p_frames" / name
            path = video if source == "videos" else frame_dir
            if not path.exists():
                raise FileNotFoundError(f"LOVEU-TGVE: missing {path} for video {name!r}; {_HELP}")
            for e in edits:
                self.items.append(
                    {
                        "video": video if source == "videos" else None,
                        "frame_dir": frame_dir if source == "frames" else None,
                        "depth_dir": root / group / "depth" / name,
                        "source_prompt": source_prompt,
                        "target_prompt": targets[e],
                        "video_id": name,
                        "edit_type": e,
                        "group": group,
                    }
                )


class ZVEDataset(_ClipDataset):
    """ZVE-50 in the layout this package defines (spec §4.1; the official files were never released)::

    <data_root>/ZVE-50/annotations.json   [{"video_id", "source_prompt", "edits": [{"type", "prompt"}], "fps"?}]
    <data_root>/ZVE-50/videos/<video_id>.mp4   or   <data_root>/ZVE-50/frames/<video_id>/00000.jpg ...
    <data_root>/ZVE-50/depth/<video_id>/%05d.npy   (optional precomputed MiDaS maps)

    An entry's optional ``fps`` is the clip's frame rate (the edited videos are written at it); without it a video
    keeps its own and a frame folder gets 8.
    """

    def __init__(
        self,
        data_root: str | Path,
        num_frames: int = 8,
        size: int = 512,
        frames_mode: FramesMode = "uniform",
        frame_stride: int = 1,
        on_corrupt: OnCorrupt = "raise",
        use_depth_files: bool = False,
    ):
        super().__init__(num_frames, size, frames_mode, frame_stride, on_corrupt, use_depth_files)
        root = Path(data_root) / "ZVE-50"
        ann_path = root / "annotations.json"
        if not ann_path.is_file():
            raise FileNotFoundError(
                f"data.data_root={str(data_root)!r}: missing {ann_path} (ZVE-50 annotations in "
                f"the package layout); {_HELP}"
            )
        entries = read_json(ann_path, "ZVE-50 annotations")
        if not isinstance(entries, list):
            raise ValueError(f"{ann_path}: expected a list of video entries, got {type(entries).__name__}; {_HELP}")
        for k, e in enumerate(entries):
            if not isinstance(e, dict):
                raise ValueError(f"{ann_path}: entry {k} is {type(e).__name__}, expected an object; {_HELP}")
            for key in ("video_id", "source_prompt", "edits"):
                if key not in e:
                    raise KeyError(f"{ann_path}: entry {k} lacks key {key!r}; {_HELP}")
            vid = e["video_id"]
            if not isinstance(vid, str) or not vid.strip():
                raise ValueError(f"{ann_path}: entry {k} has 'video_id' {vid!r}; expected a non-empty string; {_HELP}")
            source_prompt = _prompt(e["source_prompt"], f"{ann_path}: entry {k} ({vid!r}) 'source_prompt'")
            if not isinstance(e["edits"], list) or not e["edits"]:
                raise ValueError(
                    f"{ann_path}: entry {k} ({vid!r}) 'edits' must be a non-empty list of objects; {_HELP}"
                )
            fps = e.get("fps")
            if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0):
                raise ValueError(f"{ann_path}: entry {k} ({vid!r}) has 'fps' {fps!r}; expected a number > 0; {_HELP}")
            video, frame_dir = root / "videos" / f"{vid}.mp4", root / "frames" / vid
            if not video.is_file() and not frame_dir.is_dir():
                raise FileNotFoundError(f"ZVE-50: neither {video} nor {frame_dir} exists; {_HELP}")
            for j, edit in enumerate(e["edits"]):
                if not isinstance(edit, dict):
                    raise ValueError(f"{ann_path}: edit {j} of {vid!r} is {type(edit).__name__}, expected an object")
                if "prompt" not in edit:
                    raise KeyError(f"{ann_path}: an edit of {vid!r} lacks key 'prompt'; {_HELP}")
                edit_type = edit.get("type", "object")
                if not isinstance(edit_type, str) or not edit_type.strip():
                    raise ValueError(f"{ann_path}: edit {j} of {vid!r} has 'type' {edit_type!r}; expected a name")
                self.items.append(
                    {
                        "video": video if video.is_file() else None,
                        "frame_dir": None if video.is_file() else frame_dir,
                        "depth_dir": root / "depth" / vid,
                        "source_prompt": source_prompt,
                        "target_prompt": _prompt(edit["prompt"], f"{ann_path}: edit {j} of {vid!r} 'prompt'"),
                        "video_id": vid,
                        "edit_type": edit_type,
                        "group": "ZVE-50",
                        "fps": float(fps) if fps is not None else None,
                    }
                )
        self._check_unique(ann_path)


class VideoFolderDataset(_ClipDataset):
    """Any folder of videos with a prompts file::

    <data_root>/prompts.json   {"<file>.mp4": {"source": str, "targets": [str, ...]}, ...}
    <data_root>/<file>.mp4     <data_root>/depth/<file stem>/%05d.npy (optional)
    """

    def __init__(
        self,
        data_root: str | Path,
        num_frames: int = 8,
        size: int = 512,
        frames_mode: FramesMode = "uniform",
        frame_stride: int = 1,
        on_corrupt: OnCorrupt = "raise",
        use_depth_files: bool = False,
    ):
        super().__init__(num_frames, size, frames_mode, frame_stride, on_corrupt, use_depth_files)
        root = Path(data_root)
        p = root / "prompts.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"data.data_root={str(root)!r}: missing {p} ({{file: {{source, targets}}}}); {_HELP}"
            )
        prompts = read_json(p, "prompts file")
        if not isinstance(prompts, dict):
            raise ValueError(f"{p}: expected an object {{file: {{source, targets}}}}, got {type(prompts).__name__}")
        for name, e in prompts.items():
            if not isinstance(e, dict) or "source" not in e or "targets" not in e:
                raise KeyError(f"{p}: entry {name!r} needs keys 'source' and 'targets'; {_HELP}")
            if not (root / name).is_file():
                raise FileNotFoundError(f"{p} names {name!r} but {root / name} does not exist; {_HELP}")
            source_prompt = _prompt(e["source"], f"{p}: entry {name!r} 'source'")
            targets = e["targets"]
            if not isinstance(targets, list) or not targets:  # a bare string would be read letter by letter
                raise ValueError(f"{p}: entry {name!r} 'targets' must be a non-empty list of prompts, got {targets!r}")
            for k, target in enumerate(targets):
                self.items.append(
                    {
                        "video": root / name,
                        "depth_dir": root / "depth" / Path(name).stem,
                        "source_prompt": source_prompt,
                        "target_prompt": _prompt(target, f"{p}: entry {name!r} 'targets'[{k}]"),
                        "video_id": Path(name).stem,
                        "edit_type": f"edit{k}",
                        "group": "folder",
                    }
                )
        self._check_unique(p)


def collate_one(items: list[dict | None]) -> dict | None:
    """Batch of one clip (clips of different lengths are edited one at a time); None for a skipped clip."""
    if len(items) != 1:
        raise ValueError(f"EVE edits one clip per batch; got a batch of {len(items)} (load with batch_size=1)")
    return items[0]


# ----------------------------------------------------------------------------------------------- synthetic

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def synthetic_clip(
    num_frames: int = 8,
    size: int = 32,
    color: str = "red",
    shape: str = "circle",
    seed: int = 0,
    radius: float | None = None,
) -> dict[str, torch.Tensor]:
    """A coloured shape moving on a textured grey background (spec §8b).

    Returns ``frames`` uint8 (F, 3, S, S), ``depth`` float32 (F, S, S) (relative inverse depth: the shape is nearer,
    the background a smooth ramp) and ``mask`` bool (F, S, S) of the shape."""
    g = torch.Generator().manual_seed(seed)
    r = radius if radius is not None else size * (0.16 + 0.06 * float(torch.rand((), generator=g)))
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    phase = float(torch.rand((), generator=g)) * 6.28
    texture = 128 + 12 * torch.sin(xx * 0.7 + phase) * torch.cos(yy * 0.5)  # (S, S) grey texture
    ramp = 0.2 + 0.3 * yy / max(1, size - 1)  # background depth: nearer at the bottom
    cy = r + float(torch.rand((), generator=g)) * (size - 2 * r)
    cx0 = r + float(torch.rand((), generator=g)) * (size - 2 * r)
    vx = (1 if float(torch.rand((), generator=g)) > 0.5 else -1) * size * 0.04
    frames, depth, masks = [], [], []
    col = torch.tensor(COLORS[color], dtype=torch.float32).view(3, 1, 1)
    for t in range(num_frames):
        span = max(1e-6, size - 2 * r)
        p = (cx0 - r + vx * t) % (2 * span)
        cx = r + (p if p <= span else 2 * span - p)  # bounces between the borders
        if shape == "circle":
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            mask = ((yy - cy).abs() <= r * 0.886) & ((xx - cx).abs() <= r * 0.886)  # same area as the circle
        img = texture.expand(3, -1, -1).clone()
        img = torch.where(mask, col.expand(3, size, size), img)
        frames.append(img.round().clamp(0, 255).to(torch.uint8))
        depth.append(torch.where(mask, torch.full_like(ramp, 1.0), ramp))
        masks.append(mask)
    return {"frames": torch.stack(frames), "depth": torch.stack(depth), "mask": torch.stack(masks)}


def _clip_spec(k: int) -> tuple[str, str, str]:
    color = list(COLORS)[k % len(COLORS)]
    shape = SHAPES[k % 2]
    target = list(COLORS)[(k + 2) % len(COLORS)]
    return color, shape, target


def _write_depth(folder: Path, depth: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, d in enumerate(depth):
        np.save(folder / f"{t:05d}.npy", d.numpy().astype(np.float32))


def make_loveu(root: str | Path, n_videos: int = 3, frames: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Write a tiny LOVEU-TGVE-2023 in the official layout (CSV with group header rows, mp4s and jpg frames) plus
    ground-truth depth; videos are spread over the three groups. The CSV puts each group's header row and videos
    where the official evaluation script slices them (:data:`LOVEU_ROW_SLICES`), blank rows filling the gaps, so at
    most 16 + 23 + 38 videos fit. Returns ``root``."""
    from torchvision.io import write_jpeg

    base = Path(root) / "loveu-tgve-2023"
    base.mkdir(parents=True, exist_ok=True)
    header = ["Video name", "Our GT caption", *LOVEU_COLUMNS.values()]
    blank = [""] * len(header)
    capacity = [b - a for a, b in LOVEU_ROW_SLICES]
    if n_videos > sum(capacity):
        raise ValueError(f"make_loveu: n_videos={n_videos} exceeds the {sum(capacity)} rows of the official slices")
    per_group: list[list[int]] = [[], [], []]
    nxt = 0
    for k in range(n_videos):  # round robin over the groups, passing over those whose slice is full
        while len(per_group[nxt]) >= capacity[nxt]:
            nxt = (nxt + 1) % 3
        per_group[nxt].append(k)
        nxt = (nxt + 1) % 3
    rows: list[list[str]] = []
    for g, group in enumerate(LOVEU_GROUPS):
        first = LOVEU_ROW_SLICES[g][0]
        rows.extend([blank] * (first - 1 - len(rows)))  # blank separator rows up to the header row
        rows.append([LOVEU_HEADER_LABELS[g]] + [""] * (len(header) - 1))  # the official group label, row first − 1
        for k in per_group[g]:
            color, shape, target = _clip_spec(k)
            name = f"clip{k:02d}"
            clip = synthetic_clip(frames, size, color, shape, seed + k)
            write_video(base / group / "480p_videos" / f"{name}.mp4", clip["frames"], fps=8.0)
            fdir = base / group / "480p_frames" / name
            fdir.mkdir(parents=True, exist_ok=True)
            for t, img in enumerate(clip["frames"]):
                write_jpeg(img, str(fdir / f"{t:05d}.jpg"), quality=95)
            _write_depth(base / group / "depth" / name, clip["depth"])
            other = "square" if shape == "circle" else "circle"
            rows.append(
                [
                    name,
                    f"a {color} {shape} moving on a grey background",
                    f"a {color} {shape} moving on a grey background, watercolor style",
                    f"a {target} {shape} moving on a grey background",
                    f"a {color} {shape} moving on a dark background",
                    f"a {target} {other} moving on a dark background",
                ]
            )
    with open(base / "LOVEU-TGVE-2023_Dataset.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return Path(root)


def make_zve(
    root: str | Path, n_videos: int = 2, frames: int = 8, size: int = 32, seed: int = 0, as_frames: bool = False
) -> Path:
    """Write a tiny ZVE-50 in the package layout (annotations.json, videos/ or frames/, depth/). Returns ``root``."""
    from torchvision.io import write_jpeg

    base = Path(root) / "ZVE-50"
    entries = []
    for k in range(n_videos):
        color, shape, target = _clip_spec(k)
        vid = f"zve{k:02d}"
        clip = synthetic_clip(frames, size, color, shape, seed + k)
        if as_frames:
            fdir = base / "frames" / vid
            fdir.mkdir(parents=True, exist_ok=True)
            for t, img in enumerate(clip["frames"]):
                write_jpeg(img, str(fdir / f"{t:05d}.jpg"), quality=95)
        else:
            write_video(base / "videos" / f"{vid}.mp4", clip["frames"], fps=8.0)
        _write_depth(base / "depth" / vid, clip["depth"])
        entries.append(
            {
                "video_id": vid,
                "source_prompt": f"a {color} {shape} moving on a grey background",
                "edits": [
                    {"type": "object", "prompt": f"a {target} {shape} moving on a grey background"},
                    {"type": "style", "prompt": f"a {color} {shape} on a grey background, anime style"},
                ],
                "fps": 8.0,
            }
        )
    (base / "annotations.json").write_text(json.dumps(entries, indent=1))
    return Path(root)


# --------------------------------------------------------------------------------------------- DataModule


class EVEDataModule(pl.LightningDataModule):
    """Clips to edit. ``fit`` has nothing to train (EVE is zero-shot); its loaders are the same clips.

    Args:
        dataset: ``loveu`` (LOVEU-TGVE-2023), ``zve`` (ZVE-50 package layout) or ``folder`` (videos + prompts.json).
        data_root: the folder holding the dataset (see each Dataset's layout).
        split: LOVEU group (`all`, `DAVIS_480p`, `youtube_480p`, `videvo_480p`); ignored by the others.
        edits: LOVEU edit columns to use.
        num_frames: F frames per clip (spec §3.0: 8).
        size: S, short side resized and centre-cropped to S×S (spec §3.0: 512).
        frames_mode: `first`, `uniform` (default) or `stride` (spec §4.3).
        frame_stride: stride of `frames_mode: stride`.
        source: LOVEU only: read `480p_videos` (mp4 through mmzoo.video) or `480p_frames` (jpg).
        use_depth_files: read precomputed depth maps (with `model.model.depth_model: precomputed`).
        on_corrupt: `raise` or `skip` (logged with the path) for undecodable clips.
        max_items: keep only the first N (clip, prompt) items (None = all).
        generate_demo_data: write a tiny synthetic dataset of the chosen layout into `data_root` when it is absent.
        demo_videos, demo_frames, demo_size: its size.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: Literal["loveu", "zve", "folder"] = "loveu",
        data_root: str = "data",
        split: str = "all",
        edits: list[str] | None = None,
        num_frames: int = 8,
        size: int = 512,
        frames_mode: FramesMode = "uniform",
        frame_stride: int = 1,
        source: Literal["videos", "frames"] = "videos",
        use_depth_files: bool = False,
        on_corrupt: OnCorrupt = "raise",
        max_items: int | None = None,
        generate_demo_data: bool = False,
        demo_videos: int = 2,
        demo_frames: int = 8,
        demo_size: int = 32,
        num_workers: int = 0,
    ):
        for key, value in (("num_frames", num_frames), ("size", size), ("frame_stride", frame_stride)):
            check_range(f"data.{key}", value, ge=1, integer=True)
        if max_items is not None:  # 0 would edit nothing, a negative count would drop clips from the end
            check_range("data.max_items", max_items, ge=1, integer=True)
        if generate_demo_data:
            for key, value in (("demo_videos", demo_videos), ("demo_frames", demo_frames), ("demo_size", demo_size)):
                check_range(f"data.{key}", value, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        # setup() reads any other dataset name as a plain folder, and source matters only for loveu
        check_choice("data.dataset", dataset, ("loveu", "zve", "folder"))
        check_choice("data.source", source, ("videos", "frames"))
        super().__init__()
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.data_root = data_root
        self.kw = {
            "num_frames": num_frames,
            "size": size,
            "frames_mode": frames_mode,
            "frame_stride": frame_stride,
            "on_corrupt": on_corrupt,
            "use_depth_files": use_depth_files,
        }
        self.split, self.edits, self.source = split, edits, source
        self.max_items = max_items
        self.generate_demo_data = generate_demo_data
        self.demo = (demo_videos, demo_frames, demo_size)
        self.num_workers = num_workers
        self.data: Dataset | None = None

    def prepare_data(self) -> None:
        if not self.generate_demo_data:
            return
        n, f, s = self.demo
        root = Path(self.data_root)
        if self.dataset_name == "loveu" and not (root / "loveu-tgve-2023").exists():
            make_loveu(root, n, f, s)
        elif self.dataset_name == "zve" and not (root / "ZVE-50").exists():
            make_zve(root, n, f, s)
        elif self.dataset_name == "folder" and not (root / "prompts.json").exists():
            raise ValueError("data.generate_demo_data supports dataset 'loveu' and 'zve' only")

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        if self.dataset_name == "loveu":
            data = LOVEUDataset(self.data_root, self.split, self.edits, source=self.source, **self.kw)
        elif self.dataset_name == "zve":
            data = ZVEDataset(self.data_root, **self.kw)
        else:
            data = VideoFolderDataset(self.data_root, **self.kw)
        if len(data) == 0:
            raise ValueError(
                f"data.data_root={self.data_root!r}: the {self.dataset_name} dataset has no items "
                f"(split={self.split!r}); {_HELP}"
            )
        if self.max_items is not None:
            data.items = data.items[: self.max_items]
        self.data = data

    def _loader(self, evaluate: bool = False) -> DataLoader:
        """One clip per batch. ``evaluate`` under several processes: each clip goes to exactly one process
        (Lightning's default DistributedSampler would pad the last round with repeated clips, which the metrics
        would then count twice); predict gets the same from Lightning itself."""
        sampler = evaluation_sampler(self.data, self.trainer, unit="clips") if evaluate else None
        return DataLoader(
            self.data,
            batch_size=1,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_one,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader(evaluate=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(evaluate=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
