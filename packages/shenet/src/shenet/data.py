"""Readers of the CLIP4Clip-standard formats of MSR-VTT, MSVD, DiDeMo and ActivityNet Captions (spec §4), the
in-memory digits task (spec §8c), the collate function and :class:`SHENetDataModule`.

Every dataset item is a dict::

    video        (T, 3, S, S) float32 CLIP-normalised frames (zero-padded to T = max_frames)
    video_mask   (T,) bool, True for real frames
    video_index  int, the video's index in the split's gallery
    video_id     str, the annotation's video id (the four datasets; the digits task has none)
    unreadable   bool, True when the video could not be decoded and ``data.on_corrupt: skip`` fed it as an
                 all-padding video (the four datasets)
    captions     list[str]: one caption (training pairs) or all queries of the video (evaluation)
    text_ids     list[int]: global query index of each caption (evaluation order)

Training items are (video, caption) pairs ("unfold sentences"); evaluation items are videos with all their queries
(MSR-VTT 1k-A: one; MSVD: ~40 captions; DiDeMo/ActivityNet: one paragraph).
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, read_json, worker_options
from mmzoo.video import VideoDecodeError, VideoReader, center_crop, normalize, resize_short_side
from torch.utils.data import DataLoader, Dataset

from shenet.hierarchy import CachedParser, ParserConfig, ParseTable, build_parser
from shenet.tokenization import TextEncoder, collate_texts

__all__ = [
    "load_frames",
    "MSRVTTDataset",
    "MSVDDataset",
    "DiDeMoDataset",
    "ActivityNetDataset",
    "DigitsDataset",
    "RetrievalCollate",
    "SHENetDataModule",
]

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test"]
OnCorrupt = Literal["raise", "skip"]
"""What an unreadable video does (``data.on_corrupt``): stop the run, or be logged and fed as padding."""
DatasetName = Literal["msrvtt", "msvd", "didemo", "activitynet", "digits"]
"""Readers of :class:`SHENetDataModule` (``data.dataset``)."""
_HINT = "see README, Data preparation"
VIDEO_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".flv", ".wmv", ".mpg", ".mpeg", ".3gp")


def load_frames(
    path: str | Path,
    max_frames: int,
    image_size: int,
    fps: float = 1.0,
    start: float | None = None,
    end: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames at ``fps`` (spec §3.10): 1 fps, ``linspace(0, n-1, max_frames)`` when more (truncated to integers, as
    CLIP4Clip's ``slice_framepos 2``: ``np.linspace(..., dtype=int)``), shorter side resized to ``image_size``, centre
    crop, CLIP normalisation, zero padding.

    Returns video (max_frames, 3, S, S) float32 and mask (max_frames,) bool. The resize is bicubic with
    antialiasing and the crop is torchvision's, as CLIP4Clip's ``Resize(224, BICUBIC)`` + ``CenterCrop`` on PIL images.
    """
    with VideoReader(path) as reader:
        t0 = max(0.0, start or 0.0)
        # a container without a duration: the frame count gives it (the clip's end still applies, e.g. DiDeMo's 31 s)
        length = reader.duration if reader.duration > 0 else reader.num_frames / reader.fps
        t1 = length if end is None else min(end, length)
        n = max(1, int(math.ceil((t1 - t0) * fps - 1e-6)))
        idx = [min(reader.num_frames - 1, int(round((t0 + k / fps) * reader.fps))) for k in range(n)]
        if len(idx) > max_frames:
            idx = [idx[j] for j in _uniform_indices(len(idx), max_frames)]
        frames = reader.get_frames(idx)  # (n, 3, H, W) uint8
    frames = resize_short_side(frames, image_size, interpolation="bicubic")
    frames = normalize(center_crop(frames, image_size), "clip")  # (n, 3, S, S)
    video = torch.zeros(max_frames, 3, image_size, image_size)
    video[: len(idx)] = frames
    mask = torch.zeros(max_frames, dtype=torch.bool)
    mask[: len(idx)] = True
    return video, mask


def _uniform_indices(n: int, k: int) -> list[int]:
    """``k`` of ``n`` positions, as CLIP4Clip's ``np.linspace(0, n - 1, num=k, dtype=int)``: float64 positions
    ``i·(n−1)/(k−1)`` truncated toward zero, the last one ``n − 1`` (rounding instead would pick other frames)."""
    if k <= 1:
        return [0] * k
    step = (n - 1) / (k - 1)
    return [int(i * step) for i in range(k - 1)] + [n - 1]


def _require(path: Path, what: str, key: str = "data.data_root") -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{key}={str(path.parent)!r}: missing {path.name!r} ({what}); {_HINT}")
    return path


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _check_frames(max_frames: int, image_size: int, fps: float) -> None:
    check_range("data.max_frames", max_frames, ge=1, integer=True)
    check_range("data.image_size", image_size, ge=1, integer=True)
    check_range("data.fps", fps, gt=0)  # frames are taken every 1 / fps seconds


class _VideoTextDataset(Dataset):
    """Shared machinery: ``self.videos`` (video ids in gallery order), ``self.queries`` (video ids → captions) and a
    video-path index built from ``videos_dir``."""

    dataset_name = "?"

    def __init__(
        self,
        data_root: str | Path,
        split: Split,
        videos_dir: str | Path | None,
        max_frames: int,
        image_size: int,
        fps: float,
        on_corrupt: OnCorrupt,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train|val|test, got {split!r}")
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))  # anything but 'raise' would skip
        _check_frames(max_frames, image_size, fps)
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data.data_root={str(self.root)!r} is not a directory ({self.dataset_name} "
                f"annotations expected); {_HINT}"
            )
        self.split = split
        self.videos_dir = Path(videos_dir) if videos_dir else self.root / "videos"
        self.max_frames, self.image_size, self.fps, self.on_corrupt = max_frames, image_size, fps, on_corrupt
        self.train = split == "train"
        self.videos: list[str] = []
        self.captions: dict[str, list[str]] = {}
        self.intervals: dict[str, tuple[float | None, float | None]] = {}

    # -- built by subclasses, then finished here -----------------------------------------------------------
    def _finish(self) -> None:
        missing = [v for v in self.videos if not self.captions.get(v)]
        if missing:
            raise KeyError(f"{self.dataset_name} {self.split}: videos without captions, e.g. {missing[:3]}; {_HINT}")
        for v in self.videos:  # a null or numeric caption would fail later inside the tokenizer, without its video
            odd = [c for c in self.captions[v] if not isinstance(c, str)]
            if odd:
                raise TypeError(
                    f"{self.dataset_name} {self.split} (data.data_root={str(self.root)!r}): video {v!r} has a "
                    f"caption that is not a string: {odd[0]!r}; {_HINT}"
                )
        if not self.videos_dir.is_dir():
            raise FileNotFoundError(
                f"data.videos_dir={str(self.videos_dir)!r}: no such folder ({self.dataset_name} videos); {_HINT}"
            )
        index: dict[str, Path] = {}
        for p in sorted(self.videos_dir.rglob("*")):
            if p.suffix.lower() in VIDEO_EXTS:
                index.setdefault(p.name, p)
                index.setdefault(p.stem, p)
        self.paths = {v: index.get(v) or index.get(Path(v).stem) for v in self.videos}
        absent = [v for v, p in self.paths.items() if p is None]
        if absent:
            msg = (
                f"{self.dataset_name} {self.split}: {len(absent)} of {len(self.videos)} videos not found under "
                f"data.videos_dir={str(self.videos_dir)!r}, e.g. {absent[:3]}"
            )
            if self.on_corrupt == "raise" or len(absent) == len(self.videos):
                raise FileNotFoundError(f"{msg}; {_HINT}")
            log.warning("%s; skipping them (data.on_corrupt=skip)", msg)
            self.videos = [v for v in self.videos if self.paths[v] is not None]
        self.video_index = {v: i for i, v in enumerate(self.videos)}
        if self.train:
            self.items = [(v, [c], [-1]) for v in self.videos for c in self.captions[v]]
        else:
            self.items, k = [], 0
            for v in self.videos:
                n = len(self.captions[v])
                self.items.append((v, self.captions[v], list(range(k, k + n))))
                k += n
        self.num_queries = sum(len(c) for _, c, _ in self.items)

    def texts(self) -> list[str]:
        """Every caption of the split (for parsing ahead of training)."""
        return [c for _, caps, _ in self.items for c in caps]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        vid, caps, ids = self.items[i]
        start, end = self.intervals.get(vid, (None, None))
        unreadable = False
        try:
            video, mask = load_frames(self.paths[vid], self.max_frames, self.image_size, self.fps, start, end)
        except VideoDecodeError as err:
            if self.on_corrupt == "raise":
                raise
            log.warning("skipping corrupt video %s (%s): it is fed as an all-padding video", err.path, err)
            video = torch.zeros(self.max_frames, 3, self.image_size, self.image_size)
            mask = torch.zeros(self.max_frames, dtype=torch.bool)
            unreadable = True
        return {
            "video": video,
            "video_mask": mask,
            "video_index": self.video_index[vid],
            "video_id": vid,
            "unreadable": unreadable,
            "captions": caps,
            "text_ids": ids,
        }


class MSRVTTDataset(_VideoTextDataset):
    """MSR-VTT (spec §4): ``MSRVTT_data.json`` + ``MSRVTT_train.9k.csv`` (train: every caption of the listed videos)
    and ``MSRVTT_JSFUSION_test.csv`` (val/test: 1000 queries, query i ↔ video i). Videos ``<video_id>.mp4|webm``."""

    dataset_name = "MSR-VTT"

    def __init__(
        self,
        data_root,
        split: Split = "train",
        videos_dir=None,
        max_frames: int = 12,
        image_size: int = 224,
        fps: float = 1.0,
        on_corrupt: OnCorrupt = "raise",
        train_csv: str = "MSRVTT_train.9k.csv",
    ):
        super().__init__(data_root, split, videos_dir, max_frames, image_size, fps, on_corrupt)
        if self.train:
            data = read_json(_require(self.root / "MSRVTT_data.json", "MSR-VTT annotations"), "MSR-VTT annotations")
            if "sentences" not in data:
                raise KeyError(f"{self.root / 'MSRVTT_data.json'}: missing key 'sentences'; {_HINT}")
            with open(_require(self.root / train_csv, "MSR-VTT train split; data.train_csv")) as f:
                rows = list(csv.DictReader(f))
            if rows and "video_id" not in rows[0]:
                raise KeyError(f"{self.root / train_csv}: missing column 'video_id'; {_HINT}")
            self.videos = list(dict.fromkeys(r["video_id"] for r in rows))
            wanted = set(self.videos)
            for k, s in enumerate(data["sentences"]):
                for key in ("video_id", "caption"):
                    if key not in s:
                        raise KeyError(f"{self.root / 'MSRVTT_data.json'}: sentences[{k}] lacks key {key!r}; {_HINT}")
                if s["video_id"] in wanted:
                    self.captions.setdefault(s["video_id"], []).append(s["caption"])
        else:
            path = _require(self.root / "MSRVTT_JSFUSION_test.csv", "MSR-VTT 1k-A test split")
            with open(path) as f:
                rows = list(csv.DictReader(f))
            for key in ("video_id", "sentence"):
                if rows and key not in rows[0]:
                    raise KeyError(f"{path}: missing column {key!r}; {_HINT}")
            for r in rows:
                self.videos.append(r["video_id"])
                self.captions.setdefault(r["video_id"], []).append(r["sentence"])
            self.videos = list(dict.fromkeys(self.videos))
        self._finish()


class MSVDDataset(_VideoTextDataset):
    """MSVD (spec §4): ``raw-captions.pkl`` (video id → list of token lists) and ``{train,val,test}_list.txt``.
    Evaluation is multi-caption: every caption of every video is a query."""

    dataset_name = "MSVD"

    def __init__(
        self,
        data_root,
        split: Split = "train",
        videos_dir=None,
        max_frames: int = 12,
        image_size: int = 224,
        fps: float = 1.0,
        on_corrupt: OnCorrupt = "raise",
    ):
        super().__init__(data_root, split, videos_dir, max_frames, image_size, fps, on_corrupt)
        with open(_require(self.root / "raw-captions.pkl", "MSVD captions"), "rb") as f:
            raw = pickle.load(f)
        self.videos = _read_lines(_require(self.root / f"{split}_list.txt", f"MSVD {split} split"))
        for v in self.videos:
            if v not in raw:
                raise KeyError(
                    f"{self.root / 'raw-captions.pkl'}: no captions for video {v!r} of {split}_list.txt; {_HINT}"
                )
            if any(isinstance(tokens, str) for tokens in raw[v]):
                # " ".join of a string would space out its characters ("a dog" -> "a   d o g")
                raise ValueError(
                    f"{self.root / 'raw-captions.pkl'}: the captions of video {v!r} are strings; each caption must "
                    f"be a list of word tokens, as in CLIP4Clip's raw-captions.pkl; {_HINT}"
                )
            self.captions[v] = [" ".join(tokens) for tokens in raw[v]]
        self._finish()


def _matched(ids: list[str], annotated, split_file: Path, ann_file: Path, dataset: str) -> list[str]:
    """The ids of ``split_file`` that ``ann_file`` annotates (in split order). Raises when none match (a naming
    mismatch such as a missing extension or ``v_`` prefix); warns with the count when only some do."""
    kept = [v for v in ids if v in annotated]
    if ids and not kept:
        raise ValueError(
            f"{dataset}: none of the {len(ids)} ids of {split_file} (e.g. {ids[0]!r}) is annotated in {ann_file} "
            f"(e.g. {next(iter(annotated), None)!r}); the two files name videos differently; {_HINT}"
        )
    dropped = [v for v in ids if v not in annotated]
    if dropped:
        log.warning(
            "%s: %d of %d ids of %s have no annotation in %s and are skipped (e.g. %r)",
            dataset,
            len(dropped),
            len(ids),
            split_file,
            ann_file,
            dropped[0],
        )
    return kept


class DiDeMoDataset(_VideoTextDataset):
    """DiDeMo (spec §4): ``{split}_data.json`` (list of {video, times, description}) and ``{split}_list.txt``.
    Paragraph retrieval: all descriptions of a video joined in file order; the clip is the video from 0 to 31 s
    (CLIP4Clip's fixed window: DiDeMo videos longer than 30 s were annotated on their first 30 s only)."""

    clip_end = 31.0
    """End of the clip in seconds (spec §4: 0 to 31 s)."""

    dataset_name = "DiDeMo"

    def __init__(
        self,
        data_root,
        split: Split = "train",
        videos_dir=None,
        max_frames: int = 64,
        image_size: int = 224,
        fps: float = 1.0,
        on_corrupt: OnCorrupt = "raise",
    ):
        super().__init__(data_root, split, videos_dir, max_frames, image_size, fps, on_corrupt)
        names = _read_lines(_require(self.root / f"{split}_list.txt", f"DiDeMo {split} split"))
        data = read_json(
            _require(self.root / f"{split}_data.json", f"DiDeMo {split} annotations"), "DiDeMo annotations"
        )
        parts: dict[str, list[str]] = {}
        for k, row in enumerate(data):
            for key in ("video", "description"):
                if key not in row:
                    raise KeyError(f"{self.root / f'{split}_data.json'}: entry {k} lacks key {key!r}; {_HINT}")
            if not isinstance(row["description"], str):
                raise TypeError(
                    f"{self.root / f'{split}_data.json'}: entry {k} (video {row['video']!r}) has description="
                    f"{row['description']!r}; a string expected; {_HINT}"
                )
            parts.setdefault(row["video"], []).append(row["description"].strip())
        self.videos = _matched(
            names, parts, self.root / f"{split}_list.txt", self.root / f"{split}_data.json", self.dataset_name
        )
        self.captions = {v: [" ".join(parts[v])] for v in self.videos}
        self.intervals = dict.fromkeys(self.videos, (0.0, self.clip_end))
        self._finish()


class ActivityNetDataset(_VideoTextDataset):
    """ActivityNet Captions (spec §4): ``train.json``/``val_1.json`` ({"v_<id>": {duration, timestamps, sentences}})
    and ``train_ids.json``/``val_ids.json``; val and test both read ``val_1``. Paragraph retrieval over the whole
    video (0 to ceil(duration)); video files are ``<id without v_>.<ext>``."""

    dataset_name = "ActivityNet"

    def __init__(
        self,
        data_root,
        split: Split = "train",
        videos_dir=None,
        max_frames: int = 64,
        image_size: int = 224,
        fps: float = 1.0,
        on_corrupt: OnCorrupt = "raise",
    ):
        super().__init__(data_root, split, videos_dir, max_frames, image_size, fps, on_corrupt)
        ann, ids = ("train.json", "train_ids.json") if self.train else ("val_1.json", "val_ids.json")
        data = read_json(_require(self.root / ann, "ActivityNet captions"), "ActivityNet captions")
        keys = read_json(_require(self.root / ids, "ActivityNet split ids"), "ActivityNet split ids")
        for k in _matched(keys, data, self.root / ids, self.root / ann, self.dataset_name):
            if "sentences" not in data[k]:
                raise KeyError(f"{self.root / ann}: entry {k!r} lacks key 'sentences'; {_HINT}")
            vid = k[2:] if k.startswith("v_") else k
            self.videos.append(vid)
            sentences = data[k]["sentences"]
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                raise TypeError(f"{self.root / ann}: entry {k!r}: 'sentences' must be a list of strings; {_HINT}")
            self.captions[vid] = [" ".join(s.strip() for s in sentences)]
            duration = data[k].get("duration")
            if duration is None:  # no duration recorded: the whole decoded video
                continue
            if isinstance(duration, bool) or not isinstance(duration, numbers.Real) or not math.isfinite(duration):
                raise ValueError(
                    f"{self.root / ann}: entry {k!r} has duration={duration!r}; expected a number of seconds, or "
                    f"no 'duration' key to read the whole video; {_HINT}"
                )
            if duration > 0:
                self.intervals[vid] = (0.0, float(math.ceil(duration)))
            else:  # 0 would read a single frame of a video that is meant to be used whole
                log.warning(
                    "%s: entry %r has duration=%r; the whole decoded video is used instead",
                    self.root / ann,
                    k,
                    duration,
                )
        self._finish()


class DigitsDataset(Dataset):
    """The in-memory digits task of spec §8c (see :mod:`shenet.synthetic`); same item dict as the video readers."""

    def __init__(
        self, split: Split = "train", num_videos: int = 512, seed: int = 0, image_size: int = 32, scale: int = 2
    ):
        from shenet.synthetic import digit_images, make_split, render_video

        check_range(f"data.demo_num_{'train' if split == 'train' else 'test'}", num_videos, ge=1, integer=True)
        check_range("data.image_size", image_size, ge=1, integer=True)
        self.split, self.train = split, split == "train"
        self.specs = make_split(split, num_videos, seed)
        images, labels = digit_images(split)
        g = torch.Generator().manual_seed(seed + 17)
        frames = torch.stack([render_video(s, images, labels, g, scale) for s in self.specs])  # (N, T, 3, h, w)
        self.frames = frames
        self.image_size = image_size
        self.num_queries = len(self.specs)

    def texts(self) -> list[str]:
        return [s.caption for s in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> dict:
        frames = resize_short_side(self.frames[i], self.image_size, interpolation="bicubic")  # as real videos
        video = normalize(center_crop(frames, self.image_size), "clip")
        return {
            "video": video,
            "video_mask": torch.ones(video.shape[0], dtype=torch.bool),
            "video_index": i,
            "captions": [self.specs[i].caption],
            "text_ids": [-1 if self.train else i],
        }


class RetrievalCollate:
    """Batch items: stacks videos and encodes every caption with :class:`~shenet.tokenization.TextEncoder`.

    Output: video (B, T, 3, S, S), video_mask (B, T), video_index (B,), the ``text_*`` tensors (N_text, ...),
    caption_video (N_text,) index of each caption's video within the batch, text_ids (N_text,) global query ids,
    captions (N_text strings), and video_id (B strings) and unreadable (B,) bool when the items have them.
    """

    def __init__(self, text_encoder: TextEncoder):
        self.text_encoder = text_encoder

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise ValueError("RetrievalCollate: empty batch")
        captions, owner, ids = [], [], []
        for b, it in enumerate(items):
            captions += it["captions"]
            owner += [b] * len(it["captions"])
            ids += it["text_ids"]
        batch = {
            "video": torch.stack([it["video"] for it in items]),
            "video_mask": torch.stack([it["video_mask"] for it in items]),
            "video_index": torch.tensor([it["video_index"] for it in items], dtype=torch.long),
            "caption_video": torch.tensor(owner, dtype=torch.long),
            "text_ids": torch.tensor(ids, dtype=torch.long),
            "captions": captions,
        }
        if "video_id" in items[0]:
            batch["video_id"] = [it["video_id"] for it in items]
        if "unreadable" in items[0]:
            batch["unreadable"] = torch.tensor([it["unreadable"] for it in items], dtype=torch.bool)
        batch.update(collate_texts([self.text_encoder(c) for c in captions]))
        return batch


class SHENetDataModule(SplitLoaders, pl.LightningDataModule):
    """Data for SHE-Net: one of the four datasets (spec §4) or the digits task (spec §8c).

    Every caption of the splits in use is parsed once in ``setup`` (spaCy's ``nlp.pipe`` when the backend is spaCy)
    and the parses are handed to the workers, so training never parses a caption twice.

    Args:
        dataset: msrvtt | msvd | didemo | activitynet | digits.
        data_root: folder of the official annotation files (for ``digits``: unused).
        videos_dir: folder of the video files (searched recursively); default ``<data_root>/videos``.
        train_csv: MSR-VTT training split file (``MSRVTT_train.9k.csv`` or ``MSRVTT_train.7k.csv``).
        max_frames: frames per video at 1 fps (spec §3.10: 12 MSR-VTT/MSVD, 64 DiDeMo/ActivityNet).
        max_words: text tokens incl. SOT/EOT (spec §3.10: 32 captions, 64 paragraphs).
        image_size: frame size (224 for CLIP).
        fps: sampling rate (spec §3.10: 1).
        parser: syntax parser settings (spec §3.2).
        batch_size: training pairs per device (global batch = batch_size × devices; spec §3.10 gives global sizes).
        eval_batch_size: videos per evaluation batch.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        on_corrupt: ``raise`` or ``skip`` (a corrupt video is logged and fed as an all-padding video).
        generate_demo_data: write the digits task in MSR-VTT format into ``data_root`` when it is missing.
        demo_num_train, demo_num_test: sizes of the generated demo data / digits splits.
        seed: seed of the generated data.
    """

    def __init__(
        self,
        dataset: DatasetName = "msrvtt",
        data_root: str = "data/msrvtt",
        videos_dir: str | None = None,
        train_csv: str = "MSRVTT_train.9k.csv",
        max_frames: int = 12,
        max_words: int = 32,
        image_size: int = 224,
        fps: float = 1.0,
        parser: ParserConfig | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        on_corrupt: OnCorrupt = "raise",
        generate_demo_data: bool = False,
        demo_num_train: int = 160,
        demo_num_test: int = 40,
        seed: int = 0,
    ):
        super().__init__()
        # an unknown dataset would read the digits task, an unknown on_corrupt would skip unreadable videos
        check_choice("data.dataset", dataset, get_args(DatasetName))
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))
        self.save_hyperparameters()
        self.parser_cfg = parser or ParserConfig()
        _check_frames(max_frames, image_size, fps)
        check_range("data.max_words", max_words, ge=3, integer=True)  # SOT, one token, EOT
        check_range("data.batch_size", batch_size, ge=1, integer=True)
        check_range("data.eval_batch_size", eval_batch_size, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        check_range("data.demo_num_train", demo_num_train, ge=1, integer=True)
        check_range("data.demo_num_test", demo_num_test, ge=1, integer=True)
        self.datasets: dict[str, Dataset] = {}
        self.parser_backend: str | None = None
        self._text_encoder: TextEncoder | None = None

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generate_demo_data and hp.dataset == "msrvtt" and not (Path(hp.data_root) / "MSRVTT_data.json").is_file():
            from shenet.synthetic import write_msrvtt_digits

            rank_zero_info(f"writing the digits demo data (MSR-VTT format) to {hp.data_root}")
            write_msrvtt_digits(hp.data_root, hp.demo_num_train, hp.demo_num_test, hp.seed)

    def make_dataset(self, split: Split) -> Dataset:
        hp = self.hparams
        common = dict(
            videos_dir=hp.videos_dir,
            max_frames=hp.max_frames,
            image_size=hp.image_size,
            fps=hp.fps,
            on_corrupt=hp.on_corrupt,
        )
        if hp.dataset == "msrvtt":
            return MSRVTTDataset(hp.data_root, split, train_csv=hp.train_csv, **common)
        if hp.dataset == "msvd":
            return MSVDDataset(hp.data_root, split, **common)
        if hp.dataset == "didemo":
            return DiDeMoDataset(hp.data_root, split, **common)
        if hp.dataset == "activitynet":
            return ActivityNetDataset(hp.data_root, split, **common)
        n = hp.demo_num_train if split == "train" else hp.demo_num_test
        return DigitsDataset(split, n, hp.seed, hp.image_size)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage or "fit", ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)
        texts = [t for ds in self.datasets.values() for t in ds.texts()]
        self.text_encoder.parser.prefill(texts)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            parser: CachedParser = build_parser(self.parser_cfg)
            self.parser_backend = parser.name
            rank_zero_info(f"shenet: syntax parser backend = {parser.name}")
            caps = self.parser_cfg.caps
            self._text_encoder = TextEncoder(parser, self.hparams.max_words, caps["verb"], caps["noun"], caps["adj"])
        return self._text_encoder

    def _loader(self, split: Split, train: bool) -> DataLoader:
        hp = self.hparams
        enc = self.text_encoder
        frozen = TextEncoder(ParseTable(enc.parser.cache, enc.parser.name), hp.max_words, *enc.slots.values())
        return DataLoader(
            self.datasets[split],
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            shuffle=train,
            drop_last=train,  # the gathered contrastive loss needs equal batches on every rank
            **worker_options(hp),
            collate_fn=RetrievalCollate(frozen),
        )

    def num_queries(self, split: Split) -> int:
        return self.datasets[split].num_queries

    def state_dict(self) -> dict:
        """Recorded in checkpoints so runs with different parsers are never mixed silently (spec §9)."""
        return {"parser_backend": self.parser_backend, "parser": asdict(self.parser_cfg)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Lightning hands over the checkpoint's record when it resumes, validates or tests from a checkpoint:
        compare the parser backend and node caps it was trained with against this run's and warn loudly on a
        difference (the node sets, hence the scores, depend on the parser; spec §9). A warning rather than an
        error: a ``precomputed`` cache written by the same parser is a legitimate switch."""
        recorded = state_dict.get("parser_backend")
        current = self.parser_backend or self.text_encoder.parser.name
        problems = []
        if recorded is not None and recorded != current:
            problems.append(f"parser backend {recorded!r} in the checkpoint, {current!r} now")
        then = state_dict.get("parser") or {}
        pre = "paragraph_" if then.get("paragraph") else ""
        caps_then = {lv: then.get(f"{pre}max_{lv}s") for lv in ("verb", "noun", "adj")}
        if then and caps_then != self.parser_cfg.caps:
            problems.append(f"node caps {caps_then} in the checkpoint, {self.parser_cfg.caps} now")
        if problems:
            rank_zero_warn(
                "shenet: the checkpoint was trained with a different syntax parser (" + "; ".join(problems) + "). "
                "Texts now get other hierarchy nodes than in training, so results mix two parsers; set "
                "data.parser to the checkpoint's settings unless this is intended (e.g. a precomputed cache "
                "written by the same parser)."
            )
