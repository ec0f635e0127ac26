"""Readers of the official SNP-S3 formats (spec §4), frame transforms, caption processing, collate, DataModule.

Every annotation file is JSON-lines. Videos live in a folder (``clip_name`` + ``.mp4`` when it has no extension;
without such a file, ``.avi``, ``.webm``, ``.mkv`` or ``.mov``) or in an LMDB whose key is the basename without extension and whose value is the video file's bytes. Videos are
decoded only through mmzoo.video.
"""

from __future__ import annotations

import abc
import inspect
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, read_json, worker_options
from mmzoo.data import read_jsonl as _json_lines
from mmzoo.video import (
    VideoDecodeError,
    VideoReader,
    center_crop,
    normalize,
    random_crop,
    resize_short_side,
    uniform_segment_indices,
)
from torch.utils.data import DataLoader, Dataset

from snps3.masking import MSSMasker, bert_mlm_mask
from snps3.models import check_literal_args
from snps3.significant import load_rank, load_same_lemma, significant_mask

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "TASK_OF",
    "VideoStore",
    "FrameTransform",
    "CaptionProcessor",
    "PretrainDataset",
    "RetrievalDataset",
    "QADataset",
    "MCDataset",
    "collate",
    "SNPS3DataModule",
    "read_jsonl",
    "load_tokenizer",
]

DatasetName = Literal[
    "webvid", "cc3m", "coco_vg", "msrvtt_7k", "msrvtt_9k", "didemo", "msvd", "msrvtt_qa", "msvd_qa", "msrvtt_mc"
]
Task = Literal["pretrain", "retrieval", "qa", "mc"]
Masking = Literal["mssm", "mlm", "none"]
TransformMode = Literal["crop", "long_side"]
LongSideScale = Literal["at_most", "official"]
OnCorrupt = Literal["raise", "skip"]
HINT = "see README, Data preparation"

DATASETS: dict[str, dict] = {
    # name: annotation files per split (relative to data_root), video store, images root
    "webvid": {
        "train": ["webvid/annotations/train.jsonl"],
        "val": ["webvid/annotations/val.jsonl"],
        "test": ["webvid/annotations/val.jsonl"],
        "videos": "webvid/videos",
        "images": "images",
    },
    "cc3m": {
        "train": ["cc3m/cc_train.jsonl"],
        "val": ["cc3m/image_val.jsonl"],  # official cc_videoswin.yml: annotations/image_val.jsonl
        "test": ["cc3m/image_val.jsonl"],
        "videos": "cc3m/videos",
        "images": "cc3m/images",
    },
    "coco_vg": {
        "train": [
            "coco_vg/coco_train2017_pretrain_format_with_subfix.jsonl",
            "coco_vg/image_val_left.jsonl",
            "coco_vg/region_desc_pretrain_format_with_subfix.jsonl",
        ],
        "val": ["coco_vg/image_val.jsonl"],  # official coco_vg_{pvt,resnet}.yml: annotations/image_val.jsonl
        "test": ["coco_vg/image_val.jsonl"],
        "videos": "coco_vg/videos",
        "images": "coco_vg/images",
    },
    "msrvtt_7k": {
        "train": ["msrvtt_retrieval/train_7k.jsonl"],
        "val": ["msrvtt_retrieval/val.jsonl"],
        "test": ["msrvtt_retrieval/test.jsonl"],
        "videos": "msrvtt_videos.lmdb",
    },
    "msrvtt_9k": {
        "train": ["msrvtt_retrieval/train.jsonl"],
        "val": ["msrvtt_retrieval/val.jsonl"],
        "test": ["msrvtt_retrieval/test.jsonl"],
        "videos": "msrvtt_videos.lmdb",
    },
    "didemo": {
        "train": ["didemo_retrieval/train.jsonl"],
        "val": ["didemo_retrieval/val.jsonl"],
        "test": ["didemo_retrieval/test.jsonl"],
        "videos": "didemo_videos.lmdb",
    },
    "msvd": {
        "train": ["msvd_retrieval/MSVD_train.jsonl"],
        "val": ["msvd_retrieval/MSVD_test.jsonl"],
        "test": ["msvd_retrieval/MSVD_test.jsonl"],
        "videos": "YouTubeClips",
    },
    "msrvtt_qa": {
        "train": ["msrvtt_qa_antmmf/train_antmmf.jsonl"],
        "val": ["msrvtt_qa_antmmf/val_antmmf.jsonl"],
        "test": ["msrvtt_qa_antmmf/test_antmmf.jsonl"],
        "videos": "msrvtt_videos.lmdb",
    },
    "msvd_qa": {
        "train": ["msvd_qa/msvd_train_qa.jsonl"],
        "val": ["msvd_qa/msvd_test_qa.jsonl"],
        "test": ["msvd_qa/msvd_test_qa.jsonl"],
        "videos": "YouTubeClips",
    },
    "msrvtt_mc": {
        "train": ["msrvtt_retrieval/mc_test.jsonl"],
        "val": ["msrvtt_retrieval/mc_test.jsonl"],
        "test": ["msrvtt_retrieval/mc_test.jsonl"],
        "videos": "msrvtt_videos.lmdb",
    },
}
TASK_OF: dict[str, str] = {
    "webvid": "pretrain",
    "cc3m": "pretrain",
    "coco_vg": "pretrain",
    "msrvtt_7k": "retrieval",
    "msrvtt_9k": "retrieval",
    "didemo": "retrieval",
    "msvd": "retrieval",
    "msrvtt_qa": "qa",
    "msvd_qa": "qa",
    "msrvtt_mc": "mc",
}


_TEXT_KEYS = ("caption", "clip_name")
"""Keys that must hold a string when a line has them (a null caption would otherwise fail inside the tokenizer)."""
_TIME_KEYS = ("start", "end")
"""Keys that must hold seconds (a number) or null when a line has them."""


def _check_row_types(row: dict, path: Path, lineno: int) -> None:
    """Refuse a line whose caption or clip name is not a string, or whose start / end is not a number or null."""
    for key in _TEXT_KEYS:
        if key in row and not isinstance(row[key], str):
            raise ValueError(f"{path}:{lineno}: {key!r} = {row[key]!r} is not a string; {HINT}")
    for key in _TIME_KEYS:
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ValueError(f"{path}:{lineno}: {key!r} = {value!r} is not a time in seconds (or null); {HINT}")


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    """Lines of a JSONL file; raises naming the file and line when a required key is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist; {HINT}")
    rows = []
    for lineno, row in _json_lines(path, "annotation file"):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: not a JSON object; {HINT}")
        missing = [k for k in required if k not in row]
        if missing:
            raise KeyError(f"{path}:{lineno}: missing key(s) {missing}; {HINT}")
        _check_row_types(row, path, lineno)
        rows.append(row)
    if not rows:
        raise ValueError(f"annotation file {str(path)!r} is empty; {HINT}")
    return rows


# ------------------------------------------------------------------------------------------------ video access

_LMDB_ENVS: dict[tuple[str, int], object] = {}  # open LMDB environments per (path, process id)


OTHER_VIDEO_SUFFIXES = (".avi", ".webm", ".mkv", ".mov")
"""Looked for, in this order, when a folder store holds no ``<clip_name>.mp4`` for a clip name without extension."""


class VideoStore:
    """A folder of video files or an LMDB (key = basename without extension, value = the file's bytes)."""

    def __init__(self, path: Path, must_exist: bool = True):
        self.path = path
        if must_exist and not path.exists():
            raise FileNotFoundError(f"video store {str(path)!r} does not exist (a folder of videos or an LMDB); {HINT}")
        self.is_lmdb = path.suffix == ".lmdb" or (path / "data.mdb").is_file()
        self._env = None

    def _lmdb(self):
        if self._env is None:  # opened lazily, once per process (LMDB allows one handle per file and process)
            import lmdb

            key = (str(self.path.resolve()), os.getpid())
            if key not in _LMDB_ENVS:
                _LMDB_ENVS[key] = lmdb.open(key[0], readonly=True, lock=False, readahead=False, meminit=False)
            self._env = _LMDB_ENVS[key]
        return self._env

    def source(self, clip_name: str) -> tuple[str | bytes, str]:
        """(path or bytes, name for errors) of one clip."""
        if self.is_lmdb:
            key = Path(clip_name).stem  # the basename without extension, also for a clip_name with folders
            with self._lmdb().begin() as txn:
                value = txn.get(key.encode("utf-8"))
            if value is None:
                raise VideoDecodeError(f"{self.path}[{key}]", "key not in the LMDB")
            return bytes(value), f"{self.path}[{key}]"
        name = clip_name
        if not Path(clip_name).suffix:  # ".mp4" (spec), else another video file of that name (MSVD's are .avi)
            candidates = [clip_name + s for s in (".mp4", *OTHER_VIDEO_SUFFIXES)]
            name = next((c for c in candidates if (self.path / c).is_file()), candidates[0])
        return str(self.path / name), str(self.path / name)

    def read(
        self,
        clip_name: str,
        num_frames: int,
        train: bool,
        start: float | None = None,
        end: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """uint8 (T, 3, H, W): T equal segments of the clip (or of its [start, end] seconds); a random frame per
        segment in training, the middle one in evaluation (spec §3.7)."""
        src, name = self.source(clip_name)
        with VideoReader(src, name=name) as reader:
            first, stop = 0, reader.num_frames
            if start is not None:
                first = min(reader.num_frames - 1, max(0, int(start * reader.fps)))
            if end is not None:
                stop = max(first + 1, min(reader.num_frames, int(round(end * reader.fps))))
            idx = [first + i for i in uniform_segment_indices(stop - first, num_frames, train, generator)]
            return reader.get_frames(idx)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None  # LMDB handles are not picklable
        return state


def _check_frame_sizes(
    crop_size: int, train_scale: Sequence[int], eval_short_side: int, long_side: int, hflip: float
) -> None:
    """Refuse frame sizes and a flip probability that no transform can use, naming their ``data.*`` keys."""
    check_range("data.crop_size", crop_size, ge=1, integer=True)
    if len(train_scale) != 2:
        raise ValueError(f"data.train_scale={list(train_scale)}: expected [min, max] short sides")
    for i, side in enumerate(train_scale):
        check_range(f"data.train_scale[{i}]", side, ge=1, integer=True)
    if train_scale[0] > train_scale[1]:  # the training short side is drawn from [min, max]
        raise ValueError(
            f"data.train_scale[0]={train_scale[0]} must be <= data.train_scale[1]={train_scale[1]} (min, max)"
        )
    check_range("data.eval_short_side", eval_short_side, ge=1, integer=True)
    check_range("data.long_side", long_side, ge=1, integer=True)
    check_range("data.hflip", hflip, ge=0, le=1)


def _check_caption_settings(max_text_len: int, mask_prob: float) -> None:
    """Refuse a text length without room for one token between [CLS] and [SEP], and a masking probability
    outside [0, 1]."""
    check_range("data.max_text_len", max_text_len, ge=3, integer=True)
    check_range("data.mask_prob", mask_prob, ge=0, le=1)


class FrameTransform:
    """uint8 (T, 3, H, W) -> normalised float32 frames (spec §3.7).

    ``crop`` (VST runs): train = random short side in ``train_scale``, random crop ``crop_size``, horizontal flip,
    optional RandAugment; eval = short side ``eval_short_side``, centre crop. ``long_side`` (R50/PVT runs), no crop;
    the collate pads frames of different sizes with a mask. Two readings of spec §3.7 "scale the long side to at
    most ``long_side``, random scale in training" (``long_side_scale``):

    * ``at_most``: only down-scales, to a long side of at most ``long_side`` (train: a random factor in [0.75, 1]
      of it; Reconstruction);
    * ``official``: always resizes the long side to exactly a target (up or down), the target being ``long_side``
      in evaluation and drawn uniformly from {224, 256, ..., ``long_side``} (multiples of 32, plus ``long_side``)
      in training; the short side is truncated to an integer (the official code's rule).
    """

    def __init__(
        self,
        mode: TransformMode = "crop",
        crop_size: int = 224,
        train_scale: Sequence[int] = (268, 336),
        eval_short_side: int = 268,
        long_side: int = 448,
        hflip: float = 0.5,
        randaugment: bool = True,
        stats: str = "imagenet",
        long_side_scale: LongSideScale = "at_most",
    ):
        check_choice("data.transform", mode, get_args(TransformMode))  # anything else would resize the long side
        check_choice("data.long_side_scale", long_side_scale, get_args(LongSideScale))
        _check_frame_sizes(crop_size, train_scale, eval_short_side, long_side, hflip)
        self.mode, self.crop_size, self.train_scale = mode, crop_size, tuple(train_scale)
        self.eval_short_side, self.long_side, self.hflip = eval_short_side, long_side, hflip
        self.randaugment, self.stats, self.long_side_scale = randaugment, stats, long_side_scale

    def long_side_size(self, h: int, w: int, train: bool, rng: random.Random) -> tuple[int, int]:
        """Output (H, W) of the ``long_side`` mode for an (h, w) frame."""
        if self.long_side_scale == "official":
            scales = [32 * i for i in range(7, 25) if 32 * i <= self.long_side]
            if self.long_side not in scales:
                scales.append(self.long_side)
            target = rng.choice(scales) if train else self.long_side
            return (target, max(1, int(target * w / h))) if h >= w else (max(1, int(target * h / w)), target)
        target = self.long_side * (rng.uniform(0.75, 1.0) if train else 1.0)
        scale = min(1.0, target / max(h, w))
        if scale >= 1.0:
            return h, w
        return max(32, int(round(h * scale))), max(32, int(round(w * scale)))

    def __call__(self, frames: torch.Tensor, train: bool, rng: random.Random) -> torch.Tensor:
        if self.mode == "crop":
            short = rng.randint(*self.train_scale) if train else self.eval_short_side
            frames = resize_short_side(frames, max(short, self.crop_size))
            frames = (
                random_crop(frames, self.crop_size, torch.Generator().manual_seed(rng.getrandbits(31)))
                if train
                else center_crop(frames, self.crop_size)
            )
        else:
            h, w = frames.shape[-2:]
            size = self.long_side_size(h, w, train, rng)
            if size != (h, w):
                frames = (
                    F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                    .round()
                    .clamp(0, 255)
                    .to(torch.uint8)
                )
        if train and self.hflip > 0 and rng.random() < self.hflip:
            frames = frames.flip(-1)
        if train and self.randaugment:
            from torchvision.transforms import v2

            torch.manual_seed(rng.getrandbits(31))
            frames = v2.RandAugment()(frames)
        return normalize(frames, self.stats)  # (T, 3, H, W) float32


class CaptionProcessor:
    """Tokenise, window-truncate, mask and pack captions as ``[CLS] x_1..x_n [SEP] [PAD]..`` of length L.

    Truncation keeps ``L − 2`` tokens: a random window in training (pre-training), the head otherwise; the raw and
    masked ids come from the same window (spec §7 weak spot 9).
    """

    def __init__(
        self,
        tokenizer,
        max_len: int = 30,
        masking: Masking = "none",
        mask_prob: float = 0.15,
        mssm: MSSMasker | None = None,
        significant: np.ndarray | None = None,
    ):
        check_choice("data.masking", masking, get_args(Masking))  # anything else would mask nothing
        _check_caption_settings(max_len, mask_prob)
        self.tok = tokenizer
        self.significant = significant
        self.max_len = max_len
        self.masking, self.mask_prob, self.mssm = masking, mask_prob, mssm
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        if masking == "mssm" and mssm is None:
            raise ValueError("data.masking='mssm' needs data.significant_words (the count_reprocess_*.json file)")

    def tokens(self, caption: str, train_window: bool, rng: random.Random) -> list[int]:
        ids = self.tok(caption, add_special_tokens=False)["input_ids"]
        n = self.max_len - 2
        if len(ids) > n:
            start = rng.randint(0, len(ids) - n) if train_window else 0
            ids = ids[start : start + n]
        return ids

    def pack(self, ids: Sequence[int], labels: Sequence[int] | None = None) -> tuple[torch.Tensor, ...]:
        """ids -> (input_ids (L,), attention_mask (L,)[, labels (L,)])."""
        pad = self.max_len - len(ids) - 2
        input_ids = torch.tensor([self.cls_id, *ids, self.sep_id] + [self.pad_id] * pad)
        mask = torch.tensor([1] * (len(ids) + 2) + [0] * pad)
        if labels is None:
            return input_ids, mask
        return input_ids, mask, torch.tensor([-1, *labels, -1] + [-1] * pad)

    def __call__(self, caption: str, train: bool, rng: random.Random, mask: bool = False) -> dict[str, torch.Tensor]:
        """{input_ids, attention_mask} of the raw caption, plus {mlm_input_ids, mlm_labels} when ``mask``."""
        ids = self.tokens(caption, train, rng)
        if not ids:
            self.num_empty = getattr(self, "num_empty", 0) + 1
            if self.num_empty in (1, 10, 100, 1000, 10000):
                log.warning(
                    "empty caption (%d so far in this process): encoded as [CLS] [SEP] only; for pre-training lines "
                    "set data.asr_root to use ASR text instead (spec §4.1)",
                    self.num_empty,
                )
        input_ids, attn = self.pack(ids)
        out = {"input_ids": input_ids, "attention_mask": attn}
        if self.significant is not None:  # per-token significance of the raw caption (LVWM word choice)
            sig = [bool(self.significant[i]) if i < len(self.significant) else False for i in ids]
            out["word_significant"] = torch.tensor([False, *sig, False] + [False] * (self.max_len - len(ids) - 2))
        if mask:
            if self.masking == "mssm":
                masked, labels = self.mssm(ids, rng)
            elif self.masking == "mlm":
                masked, labels = bert_mlm_mask(ids, rng, self.mask_id, self.vocab_size, self.mask_prob)
            else:
                masked, labels = list(ids), [-1] * len(ids)
            out["mlm_input_ids"], _, out["mlm_labels"] = self.pack(masked, labels)
        return out


class _VideoTextBase(Dataset, abc.ABC):
    """Shared pieces: annotation files, the video store, frame reading with ``on_corrupt``."""

    def __init__(
        self,
        data_root: str,
        split: str,
        dataset: str,
        files: Sequence[str] | None,
        video_store: str | None,
        processor: CaptionProcessor,
        transform: FrameTransform,
        num_frames: int,
        train: bool,
        on_corrupt: OnCorrupt,
        required: Sequence[str],
    ):
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))  # anything else would skip unreadable clips
        check_range("data.num_frames", num_frames, ge=1, integer=True)
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.data_root={data_root!r} does not exist; {HINT}")
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset={dataset!r} is not one of {sorted(DATASETS)}")
        files = list(files) if files else DATASETS[dataset][split]
        self.rows: list[dict] = []
        self.row_files: list[Path] = []  # the annotation file of each row, for messages
        for f in files:
            part = read_jsonl(self.root / f, required)
            self.rows += part
            self.row_files += [self.root / f] * len(part)
        # image-text corpora (CC3M, COCO+VG) come without a video folder: it is needed only when a line is a video
        has_videos = any(r.get("type", "video") != "image" for r in self.rows)
        self.store = VideoStore(self.root / (video_store or DATASETS[dataset]["videos"]), must_exist=has_videos)
        self.processor, self.transform = processor, transform
        self.num_frames, self.train, self.on_corrupt = num_frames, train, on_corrupt
        self.seed = 0
        # substitutions under on_corrupt=skip: slot 0 counts this process, slot 1 + w DataLoader worker w. The tensor
        # is in shared memory, so the workers (forked or spawned copies of this dataset) add to the counts that the
        # process which built the dataset reads; each worker writes only its own slot.
        self._substituted = torch.zeros(1 + self.COUNTED_WORKERS, dtype=torch.long).share_memory_()

    MAX_SUBSTITUTES = 100
    """Training under ``on_corrupt: skip``: how many following items are tried in place of an unreadable one."""
    COUNTED_WORKERS = 64
    """DataLoader workers with a substitution counter of their own (more share slots, and may miss a count)."""

    @property
    def num_substituted(self) -> int:
        """Unreadable training items replaced so far by this dataset, summed over the process that built it and all
        its DataLoader workers (``on_corrupt: skip``)."""
        return int(self._substituted.sum())

    def _count_substitution(self) -> tuple[str, int]:
        """Count one substitution in this process's slot; returns who made it and the running total."""
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % self.COUNTED_WORKERS
        self._substituted[slot] += 1
        return ("the main process" if info is None else f"loader worker {info.id}"), self.num_substituted

    def _rng(self, index: int) -> random.Random:
        return random.Random(random.getrandbits(63) if self.train else self.seed * 1_000_003 + index)

    def _unreadable(self, name: str, reason: str) -> torch.Tensor | None:
        """Record an unreadable video/image under ``on_corrupt: skip``; evaluation gets blank (mean-colour)
        frames in its place so the test set and the per-rank batch sizes stay unchanged."""
        self._failed.append(name)
        log.warning("unreadable %s (%s)", name, reason)
        if self.train:
            return None
        size = self.transform.crop_size
        return torch.zeros(self.num_frames, 3, size, size)  # normalised zeros = the mean colour

    def _frames(self, clip_name: str, rng: random.Random, start=None, end=None) -> torch.Tensor | None:
        try:
            raw = self.store.read(
                clip_name, self.num_frames, self.train, start, end, torch.Generator().manual_seed(rng.getrandbits(31))
            )
        except VideoDecodeError as err:
            if self.on_corrupt == "raise":
                raise
            return self._unreadable(str(err.path), err.reason)
        return self.transform(raw, self.train, rng)

    @abc.abstractmethod
    def _item(self, index: int) -> dict | None:
        """The item at ``index`` as the task's dataset builds it; None when its clip is unreadable under skip."""

    def __getitem__(self, index: int) -> dict:
        """Item ``index``. Under ``on_corrupt: skip`` an unreadable clip is replaced in training by the next readable
        item (``index + 1``, ``index + 2``, ..., with a warning and a running count), so batches never shrink and
        every rank sees the same batch size; evaluation items keep their place with blank frames and
        ``unreadable`` = True (the module reports them at the end of the epoch)."""
        self._failed: list[str] = []
        item = self._item(index)
        if not self.train:
            item["unreadable"] = torch.tensor(bool(self._failed))
            item["item_index"] = torch.tensor(index)
            return item
        if item is not None:
            return item
        failed = list(self._failed)
        for offset in range(1, min(len(self), self.MAX_SUBSTITUTES + 1)):
            j = (index + offset) % len(self)
            self._failed = []
            item = self._item(j)
            if item is not None:
                who, total = self._count_substitution()
                log.warning(
                    "on_corrupt=skip: training item %d (%s) is unreadable and was replaced by item %d in %s "
                    "(%d replacements so far on this rank, all its loader workers together)",
                    index,
                    ", ".join(failed),
                    j,
                    who,
                    total,
                )
                return item
            failed += self._failed
        raise RuntimeError(
            f"on_corrupt=skip: training item {index} and the next {self.MAX_SUBSTITUTES} items are all unreadable "
            f"(e.g. {failed[:3]}); check the video store"
        )

    def describe(self, index: int) -> str:
        """The video (or image) an item reads, for messages."""
        return str(self.rows[index]["clip_name"])


class PretrainDataset(_VideoTextBase):
    """Pre-training pairs (spec §4.1): lines ``{clip_name, caption, type: video|image, sen_id?, start?, end?}``.

    Lines are grouped by ``(clip_name, start, end)`` (ordered by ``sen_id``); an item is one group and one of its
    captions at random. Images (``type: image``, under ``images_root``) are repeated to T frames.

    Item: frames (T, 3, H, W) float; input_ids, attention_mask (L,) raw caption; mlm_input_ids, mlm_labels (L,)
    (data-side MSSM or MLM masking); neg_input_ids, neg_attention_mask (L,) an unmasked caption of another clip
    (ITM negative; "this is a dummy text" after 3 failed draws); video_index (); text_index () the annotation line
    (position in ``rows``) whose caption was drawn.
    """

    def __init__(
        self,
        data_root: str,
        split: str,
        dataset: str,
        processor: CaptionProcessor,
        transform: FrameTransform,
        num_frames: int,
        train: bool,
        files: Sequence[str] | None = None,
        video_store: str | None = None,
        images_root: str | None = None,
        on_corrupt: OnCorrupt = "raise",
        asr_root: str | None = None,
    ):
        super().__init__(
            data_root,
            split,
            dataset,
            files,
            video_store,
            processor,
            transform,
            num_frames,
            train,
            on_corrupt,
            required=("clip_name", "caption"),
        )
        self.asr_root = None if asr_root is None else self.root / asr_root
        if self.asr_root is not None and not self.asr_root.is_dir():
            raise FileNotFoundError(f"data.asr_root={asr_root!r}: {str(self.asr_root)!r} is not a folder; {HINT}")
        groups: dict[tuple, list[int]] = {}
        for n, r in enumerate(self.rows):
            groups.setdefault((r["clip_name"], r.get("start"), r.get("end"), r.get("type", "video")), []).append(n)
        # per group, its annotation lines (positions in ``rows``) ordered by sen_id, and those lines themselves
        self.group_lines = [sorted(v, key=lambda n: self.rows[n].get("sen_id", 0)) for v in groups.values()]
        self.groups = [(k, [self.rows[n] for n in lines]) for k, lines in zip(groups, self.group_lines)]
        self.images = self.root / (images_root or DATASETS[dataset]["images"])
        if any(k[3] == "image" for k, _ in self.groups) and not self.images.is_dir():
            raise FileNotFoundError(
                f"image lines found but the images root {str(self.images)!r} does not exist; {HINT}"
            )

    def __len__(self) -> int:
        return len(self.groups)

    def describe(self, index: int) -> str:
        return str(self.groups[index][0][0])

    def asr_caption(self, clip: str, start: float | None, end: float | None) -> str:
        """Caption from the clip's ASR file (spec §4.1, optional): ``<asr_root>/<basename>`` (the official name: the
        video's basename without extension) or ``<asr_root>/<basename>.json``, a JSON object with parallel lists
        ``start``, ``end``, ``text``; the texts of the segments overlapping ``[start, end]`` (all segments when the
        line has no time span) joined by spaces. "" when neither file exists."""
        stem = Path(clip).stem
        path = next((p for p in (self.asr_root / stem, self.asr_root / f"{stem}.json") if p.is_file()), None)
        if path is None:
            return ""
        asr = read_json(path, "ASR file")
        lo = -float("inf") if start is None else start
        hi = float("inf") if end is None else end
        return " ".join(
            str(t)
            for s0, e0, t in zip(asr["start"], asr["end"], asr["text"])
            if e0 >= lo and s0 <= hi and str(t).strip()
        )

    def _visual(self, key: tuple, rng: random.Random) -> torch.Tensor | None:
        clip, start, end, kind = key
        if kind == "image":
            from torchvision.io import ImageReadMode, read_image

            path = self.images / clip
            try:
                img = read_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W)
            except (RuntimeError, OSError) as err:
                if self.on_corrupt == "raise":
                    raise VideoDecodeError(path, f"cannot read image: {err}") from err
                return self._unreadable(str(path), f"cannot read image: {err}")
            return self.transform(img[None].expand(self.num_frames, -1, -1, -1), self.train, rng)
        return self._frames(clip, rng, start, end)

    def _item(self, index: int) -> dict | None:
        rng = self._rng(index)
        key = self.groups[index][0]
        frames = self._visual(key, rng)
        if frames is None:
            return None
        line = rng.choice(self.group_lines[index])
        caption = self.rows[line]["caption"]
        if not caption.strip() and self.asr_root is not None:
            caption = self.asr_caption(key[0], key[1], key[2])
        item = self.processor(caption, self.train, rng, mask=True)
        neg = "this is a dummy text"
        for _ in range(3):
            j = rng.randrange(len(self.groups))
            if self.groups[j][0][0] != key[0]:
                neg = rng.choice(self.groups[j][1])["caption"]
                break
        neg_ids = self.processor(neg, self.train, rng)
        item.update(
            frames=frames,
            neg_input_ids=neg_ids["input_ids"],
            neg_attention_mask=neg_ids["attention_mask"],
            video_index=torch.tensor(index),
            text_index=torch.tensor(line),
        )
        return item


class RetrievalDataset(_VideoTextBase):
    """Text-video retrieval (spec §4.2). train lines ``{caption, clip_name, sen_id}``; val/test ``{caption,
    clip_name, retrieval_key}``.

    One item per video, decoded once. Training: the video with one random caption; input_ids, attention_mask (L,).
    Evaluation: the video with every caption line that names it; input_ids, attention_mask (n, L) and per line
    ``text_index`` (line), ``caption_index`` (unique caption string), ``text_video_index`` (n,), which ``collate``
    concatenates over the batch. Ground truth is built by exact caption string and ``clip_name``. Item keys
    ``video_index`` (unique clip) and frames (T, 3, H, W).
    """

    def __init__(
        self,
        data_root: str,
        split: str,
        dataset: str,
        processor: CaptionProcessor,
        transform: FrameTransform,
        num_frames: int,
        train: bool,
        files: Sequence[str] | None = None,
        video_store: str | None = None,
        on_corrupt: OnCorrupt = "raise",
    ):
        super().__init__(
            data_root,
            split,
            dataset,
            files,
            video_store,
            processor,
            transform,
            num_frames,
            train,
            on_corrupt,
            required=("caption", "clip_name"),
        )
        self.videos = sorted({r["clip_name"] for r in self.rows})
        self.video_id = {v: i for i, v in enumerate(self.videos)}
        self.captions = sorted({r["caption"] for r in self.rows})
        self.caption_id = {c: i for i, c in enumerate(self.captions)}
        self.by_video: dict[str, list[str]] = {}
        self.lines_by_video: dict[str, list[int]] = {}
        for n, r in enumerate(self.rows):
            self.by_video.setdefault(r["clip_name"], []).append(r["caption"])
            self.lines_by_video.setdefault(r["clip_name"], []).append(n)
        #: the most caption lines any one video has (the width of predict's per-video caption arrays)
        self.max_lines = max(map(len, self.lines_by_video.values()), default=0)

    def __len__(self) -> int:
        return len(self.videos)

    def describe(self, index: int) -> str:
        return self.videos[index]

    def gt_matrix(self) -> torch.Tensor:
        """(N_captions, N_videos) bool: caption string c matches video v when some line pairs them."""
        gt = torch.zeros(len(self.captions), len(self.videos), dtype=torch.bool)
        for r in self.rows:
            gt[self.caption_id[r["caption"]], self.video_id[r["clip_name"]]] = True
        return gt

    def _item(self, index: int) -> dict | None:
        rng = self._rng(index)
        clip = self.videos[index]
        frames = self._frames(clip, rng)
        if frames is None:
            return None
        video = torch.tensor(self.video_id[clip])
        if self.train:
            caption = rng.choice(self.by_video[clip])
            item = self.processor(caption, False, rng)
            item.update(
                frames=frames,
                video_index=video,
                text_index=torch.tensor(-1),
                caption_index=torch.tensor(self.caption_id[caption]),
            )
            return item
        lines = self.lines_by_video[clip]
        texts = [self.processor(self.rows[n]["caption"], False, rng) for n in lines]
        return {
            "frames": frames,
            "video_index": video,
            "input_ids": torch.stack([t["input_ids"] for t in texts]),  # (n, L)
            "attention_mask": torch.stack([t["attention_mask"] for t in texts]),  # (n, L)
            "text_index": torch.tensor(lines),
            "caption_index": torch.tensor([self.caption_id[self.rows[n]["caption"]] for n in lines]),
            "text_video_index": video.repeat(len(lines)),
            "num_captions": torch.tensor(len(lines)),
        }


_WARNED_ANSWER_FILES: set[tuple[str, int]] = set()
"""(file, data.num_answers) pairs already warned about by :func:`_warn_answers_past_limit` in this process."""


def _warn_answers_past_limit(path: Path, count: int, what: str, num_answers: int) -> None:
    """Warn, once per file and answer-vocabulary size, that ``count`` answers of ``path`` have an index
    ``>= num_answers`` and are therefore out of vocabulary (nothing when ``count <= 0``)."""
    key = (str(path), num_answers)
    if count <= 0 or key in _WARNED_ANSWER_FILES:
        return
    _WARNED_ANSWER_FILES.add(key)
    log.warning(
        "%s: %d %s have an index >= data.num_answers=%d (the answer vocabulary, the size of the QA head) and are "
        "dropped as out of vocabulary: a question left without an answer in the vocabulary counts wrong in "
        "evaluation and is skipped in training. Raise data.num_answers and model.config.num_answers if these "
        "answers belong to the vocabulary.",
        path,
        count,
        what,
        num_answers,
    )


class QADataset(_VideoTextBase):
    """Open-ended QA (spec §4.3): lines ``{caption: question, clip_name, label}``; ``label`` is an answer index, an
    answer string (resolved through ``answer_list``), or a list of them (multi-label: multi-hot target).

    Item: frames, input_ids, attention_mask, and ``label`` () long (−1 = answer outside the vocabulary, counted
    wrong) or ``labels`` (A,) multi-hot when the file has list labels. The vocabulary is the first ``num_answers``
    answers: an answer list with more entries, and labels whose index is past it (an int label, or a string at such
    a position in the list), are reported with a warning once per file (how many, and the limit).
    """

    def __init__(
        self,
        data_root: str,
        split: str,
        dataset: str,
        processor: CaptionProcessor,
        transform: FrameTransform,
        num_frames: int,
        train: bool,
        num_answers: int,
        answer_list: str | None = None,
        files: Sequence[str] | None = None,
        video_store: str | None = None,
        on_corrupt: OnCorrupt = "raise",
    ):
        super().__init__(
            data_root,
            split,
            dataset,
            files,
            video_store,
            processor,
            transform,
            num_frames,
            train,
            on_corrupt,
            required=("caption", "clip_name", "label"),
        )
        self.num_answers = num_answers
        self.answers: dict[str, int] = {}
        if answer_list is not None:
            path = self.root / answer_list
            if not path.is_file():
                raise FileNotFoundError(f"data.answer_list={answer_list!r}: {str(path)!r} does not exist; {HINT}")
            names = read_json(path, "data.answer_list")
            self.answers = {a: i for i, a in enumerate(names)}
            _warn_answers_past_limit(path, len(names) - num_answers, "answers of the list", num_answers)
        if (
            any(
                isinstance(r["label"], str)
                or (isinstance(r["label"], list) and any(isinstance(x, str) for x in r["label"]))
                for r in self.rows
            )
            and not self.answers
        ):
            raise ValueError(f"{dataset} {split}: string labels need data.answer_list (a JSON list of answers); {HINT}")
        self.multi_label = any(isinstance(r["label"], list) for r in self.rows)
        past_limit: dict[Path, int] = {}  # per annotation file: labels whose answer index is >= num_answers
        for row, path in zip(self.rows, self.row_files):
            labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
            past_limit[path] = past_limit.get(path, 0) + sum(self._list_index(x) >= num_answers for x in labels)
        for path, count in past_limit.items():
            _warn_answers_past_limit(path, count, "answer labels", num_answers)

    def __len__(self) -> int:
        return len(self.rows)

    def _list_index(self, label) -> int:
        """The label's index in the answer list (an int label is one); −1 for a string the list lacks."""
        return self.answers.get(label, -1) if isinstance(label, str) else int(label)

    def _index(self, label) -> int:
        i = self._list_index(label)
        return i if 0 <= i < self.num_answers else -1

    def _item(self, index: int) -> dict | None:
        rng = self._rng(index)
        row = self.rows[index]
        frames = self._frames(row["clip_name"], rng)
        if frames is None:
            return None
        item = self.processor(row["caption"], False, rng)
        item["frames"] = frames
        labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
        idx = [i for i in (self._index(x) for x in labels) if i >= 0]
        if self.multi_label:
            target = torch.zeros(self.num_answers)
            target[idx] = 1.0
            item["labels"] = target
        else:
            item["label"] = torch.tensor(idx[0] if idx else -1)
        return item


class MCDataset(_VideoTextBase):
    """Multiple choice (spec §4.4): lines ``{qid, clip_name, title, answer: "2", options: [5 strings]}``.

    Item: frames; option_ids, option_mask (5, L); answer () long.
    """

    def __init__(
        self,
        data_root: str,
        split: str,
        dataset: str,
        processor: CaptionProcessor,
        transform: FrameTransform,
        num_frames: int,
        files: Sequence[str] | None = None,
        video_store: str | None = None,
        on_corrupt: OnCorrupt = "raise",
    ):
        super().__init__(
            data_root,
            split,
            dataset,
            files,
            video_store,
            processor,
            transform,
            num_frames,
            False,
            on_corrupt,
            required=("clip_name", "answer", "options"),
        )
        counts = {len(r["options"]) for r in self.rows}
        if len(counts) != 1:
            raise ValueError(f"{dataset}: every line needs the same number of options, found {sorted(counts)}")
        for row, path in zip(self.rows, self.row_files):  # an answer no option has would count silently wrong
            answer, index = row["answer"], None
            if isinstance(answer, int | str) and not isinstance(answer, bool):
                try:
                    index = int(answer)
                except ValueError:
                    pass
            if index is None or not 0 <= index < len(row["options"]):
                raise ValueError(
                    f"{path}: question {row.get('qid')!r} (clip {row['clip_name']!r}): 'answer' = {answer!r} is not a "
                    f"0-based index of one of its {len(row['options'])} 'options' (spec §4.4: e.g. \"2\"); {HINT}"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def _item(self, index: int) -> dict | None:
        rng = self._rng(index)
        row = self.rows[index]
        frames = self._frames(row["clip_name"], rng)
        if frames is None:
            return None
        opts = [self.processor(o, False, rng) for o in row["options"]]
        return {
            "frames": frames,
            "option_ids": torch.stack([o["input_ids"] for o in opts]),
            "option_mask": torch.stack([o["attention_mask"] for o in opts]),
            "answer": torch.tensor(int(row["answer"])),
        }


PER_LINE_KEYS = ("input_ids", "attention_mask", "text_index", "caption_index", "text_video_index")
"""Retrieval evaluation items (one per video) hold these per caption line; ``collate`` concatenates them."""


def collate(items: list[dict | None]) -> dict[str, torch.Tensor] | None:
    """Stack items (dropping skipped ones; retrieval evaluation's per-line keys are concatenated); frames of different sizes are padded to the largest H x W and a
    ``pad_mask`` (B, H, W) (True = padding) is added. Returns None when every item was skipped."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    per_line = PER_LINE_KEYS if "num_captions" in items[0] else ()
    out = {k: (torch.cat if k in per_line else torch.stack)([it[k] for it in items]) for k in items[0] if k != "frames"}
    sizes = {tuple(it["frames"].shape[-2:]) for it in items}
    if len(sizes) == 1:
        out["frames"] = torch.stack([it["frames"] for it in items])  # (B, T, 3, H, W)
        return out
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    frames = items[0]["frames"].new_zeros(len(items), items[0]["frames"].shape[0], 3, h, w)
    pad_mask = torch.ones(len(items), h, w, dtype=torch.bool)
    for b, it in enumerate(items):
        fh, fw = it["frames"].shape[-2:]
        frames[b, :, :, :fh, :fw] = it["frames"]
        pad_mask[b, :fh, :fw] = False
    out["frames"], out["pad_mask"] = frames, pad_mask
    return out


def load_tokenizer(value: str, local: Path | None = None):
    """BertTokenizerFast from a ``vocab.txt`` file, a tokenizer folder, or a hub id (``data.tokenizer``)."""
    from transformers import BertTokenizerFast

    local = Path(value) if local is None else local
    if not local.exists() and (value.endswith(".txt") or Path(value).is_absolute() or value.startswith(".")):
        raise FileNotFoundError(
            f"data.tokenizer={value!r}: {str(local)!r} does not exist; supply "
            f"bert-base-uncased's vocab.txt or tokenizer folder; {HINT}"
        )
    try:
        if local.is_file():
            if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 4.x
                return BertTokenizerFast(vocab_file=str(local), do_lower_case=True)
            vocab = {w: i for i, w in enumerate(local.read_text(encoding="utf-8").splitlines())}
            return BertTokenizerFast(vocab=vocab, do_lower_case=True)  # transformers 5.x
        if local.is_dir():
            return BertTokenizerFast.from_pretrained(str(local))
        return BertTokenizerFast.from_pretrained(value)
    except OSError as err:
        raise FileNotFoundError(
            f"data.tokenizer={value!r}: no vocab.txt or tokenizer folder found (looked in "
            f"{str(local)!r}); supply bert-base-uncased's tokenizer; {HINT}"
        ) from err


class SNPS3DataModule(SplitLoaders, pl.LightningDataModule):
    """Data for every SNP-S3 stage: pre-training corpora, retrieval, QA and MC (spec §4)."""

    def __init__(
        self,
        data_root: str,
        dataset: DatasetName = "msrvtt_7k",
        tokenizer: str = "bert-base-uncased",
        annotation_files: dict[str, list[str]] | None = None,
        video_store: str | None = None,
        images_root: str | None = None,
        asr_root: str | None = None,
        num_frames: int = 16,
        max_text_len: int = 30,
        masking: Masking = "mssm",
        mask_prob: float = 0.15,
        significant_words: str | None = None,
        same_lemma: str | None = None,
        words_top_k: int = 3000,
        transform: TransformMode = "crop",
        crop_size: int = 224,
        train_scale: tuple[int, int] = (268, 336),
        eval_short_side: int = 268,
        long_side: int = 448,
        long_side_scale: LongSideScale = "at_most",
        hflip: float = 0.5,
        randaugment: bool = True,
        num_answers: int = 0,
        answer_list: str | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_corrupt: OnCorrupt = "raise",
        generate_synthetic: bool = False,
        synthetic_train: int = 24,
        synthetic_test: int = 8,
        synthetic_size: int = 32,
    ):
        """
        Args:
            data_root: folder holding the dataset's files (layout in the README, Data preparation).
            dataset: which official format/file set; decides the task (pretrain / retrieval / qa / mc).
            tokenizer: bert-base-uncased tokenizer: hub id, folder, or a ``vocab.txt``; relative paths are looked up
                under ``data_root`` first.
            annotation_files: override the official file names per split (``{"train": [...], "val": [...]}``).
            video_store: override the video folder or ``.lmdb`` (relative to data_root).
            images_root: override the images folder of image-text lines.
            asr_root: optional folder of HowTo100M-style ASR files (``<video basename>.json`` with lists ``start``,
                ``end``, ``text``) used for pre-training lines with an empty caption (spec §4.1); null = unused.
            num_frames: T frames per clip (spec §3.7: 1 images, 4 WebVid, 16 fine-tuning).
            max_text_len: L, text length including [CLS] and [SEP] (30; 28 WordPiece tokens).
            masking: data-side masking of pre-training captions: ``mssm`` (S3), ``mlm`` (plain BERT), ``none``.
            mask_prob: masking probability (0.15).
            significant_words: ``count_reprocess_<corpus>.json`` (relative to data_root or absolute).
            same_lemma: ``vocab_simi_list_new.json`` (MSSM random replacement); null = no same-lemma words.
            words_top_k: K_top: significant iff rank <= K_top (3000).
            transform: ``crop`` (VST) or ``long_side`` (R50/PVT, padded batches).
            crop_size, train_scale, eval_short_side: ``crop`` mode sizes (224, [268, 336], 268).
            long_side: ``long_side`` mode maximum long side (768 pre-training, 448 fine-tuning).
            long_side_scale: ``at_most`` (only down-scale; train factor in [0.75, 1]) or ``official`` (resize the
                long side to exactly ``long_side`` in evaluation, to a random one of {224, 256, ..., long_side}
                in training, up-scaling small frames); see ``FrameTransform``.
            hflip: horizontal flip probability in training.
            randaugment: RandAugment in training (VST runs).
            num_answers: QA answer-vocabulary size.
            answer_list: JSON list of answer strings (needed only for string labels).
            batch_size, eval_batch_size: per-device batch sizes.
            num_workers, pin_memory, persistent_workers: DataLoader settings.
            on_corrupt: ``raise`` or ``skip`` (log a warning naming the file) for undecodable videos.
            generate_synthetic: write the synthetic digits data (every official format) into data_root when absent,
                or when the copy there was made by another version of the generator.
            synthetic_train, synthetic_test, synthetic_size: size of that synthetic data.
        """
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset={dataset!r} is not one of {sorted(DATASETS)}")
        self.save_hyperparameters()
        # masking, transform, long_side_scale, on_corrupt: read only when the datasets are built (setup)
        check_literal_args(SNPS3DataModule.__init__, self.hparams, "data")
        check_range("data.num_frames", num_frames, ge=1, integer=True)
        _check_caption_settings(max_text_len, mask_prob)
        # K_top = 0 marks no word significant: MSSM would then have nothing to mask
        check_range("data.words_top_k", words_top_k, ge=1 if masking == "mssm" else 0, integer=True)
        _check_frame_sizes(crop_size, train_scale, eval_short_side, long_side, hflip)
        check_range("data.num_answers", num_answers, ge=0, integer=True)
        check_range("data.batch_size", batch_size, ge=1, integer=True)
        check_range("data.eval_batch_size", eval_batch_size, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        check_range("data.synthetic_train", synthetic_train, ge=1, integer=True)
        check_range("data.synthetic_test", synthetic_test, ge=1, integer=True)
        check_range("data.synthetic_size", synthetic_size, ge=16, integer=True)  # frames hold a 16-pixel digit
        self.task: str = TASK_OF[dataset]
        self.datasets: dict[str, Dataset] = {}
        self._processor: CaptionProcessor | None = None

    def _path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else Path(self.hparams.data_root) / p

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generate_synthetic:  # written unless a copy made by this generator version is there
            from snps3.synthetic import ensure_synthetic_dataset

            ensure_synthetic_dataset(hp.data_root, hp.synthetic_train, hp.synthetic_test, size=hp.synthetic_size)

    def build_tokenizer(self):
        """BertTokenizerFast from a hub id, a folder, or a vocab.txt (relative paths under data_root first)."""
        return load_tokenizer(self.hparams.tokenizer, self._path(self.hparams.tokenizer))

    def processor(self) -> CaptionProcessor:

        if self._processor is None:
            hp = self.hparams
            tok = self.build_tokenizer()
            mssm, significant = None, None
            if hp.masking == "mssm" and self.task == "pretrain" and hp.significant_words is None:
                raise ValueError(
                    "data.masking='mssm' needs data.significant_words (count_reprocess_*.json); "
                    "mine one with `snps3 mine-words`"
                )
            if hp.significant_words is not None and self.task == "pretrain":
                words = tok.convert_ids_to_tokens(list(range(len(tok))))  # strings by id, for the table's 'name'
                rank = load_rank(self._path(hp.significant_words), len(tok), words)
                significant = significant_mask(rank, hp.words_top_k)
            if hp.masking == "mssm" and self.task == "pretrain":
                vocab = tok.get_vocab()
                lemma_ids: list[list[int]] = [[] for _ in range(len(tok))]
                if hp.same_lemma is not None:
                    for i, words in enumerate(load_same_lemma(self._path(hp.same_lemma), len(tok))):
                        lemma_ids[i] = [vocab[w] for w in words if w in vocab]
                mssm = MSSMasker(significant, lemma_ids, tok.mask_token_id, hp.mask_prob)
            masking = hp.masking if self.task == "pretrain" else "none"
            self._processor = CaptionProcessor(tok, hp.max_text_len, masking, hp.mask_prob, mssm, significant)
        return self._processor

    def _transform(self) -> FrameTransform:
        hp = self.hparams
        return FrameTransform(
            hp.transform,
            hp.crop_size,
            hp.train_scale,
            hp.eval_short_side,
            hp.long_side,
            hp.hflip,
            hp.randaugment,
            long_side_scale=hp.long_side_scale,
        )

    def make_dataset(self, split: str) -> Dataset:
        hp = self.hparams
        if not Path(hp.data_root).is_dir():
            raise FileNotFoundError(f"data.data_root={hp.data_root!r} does not exist; {HINT}")
        train = split == "train"
        files = (hp.annotation_files or {}).get(split)
        common = dict(
            data_root=hp.data_root,
            split=split,
            dataset=hp.dataset,
            processor=self.processor(),
            transform=self._transform(),
            num_frames=hp.num_frames,
            files=files,
            video_store=hp.video_store,
            on_corrupt=hp.on_corrupt,
        )
        if self.task == "pretrain":
            return PretrainDataset(train=train, images_root=hp.images_root, asr_root=hp.asr_root, **common)
        if self.task == "retrieval":
            return RetrievalDataset(train=train, **common)
        if self.task == "qa":
            if hp.num_answers <= 0:
                raise ValueError(
                    f"data.num_answers={hp.num_answers}: QA needs the answer-vocabulary size (1500 MSRVTT-QA, "
                    "1000 MSVD-QA), equal to model.config.num_answers"
                )
            return QADataset(train=train, num_answers=hp.num_answers, answer_list=hp.answer_list, **common)
        return MCDataset(**common)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # cheap when the data exists; makes `setup` usable without a Trainer
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}.get(
            stage or "fit"
        )
        if self.task == "mc":
            splits = ["test"] if stage in ("test", "predict") else ["val"]
        for s in splits:
            if s not in self.datasets:
                self.datasets[s] = self.make_dataset(s)

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            shuffle=train,
            drop_last=train,
            collate_fn=collate,
            **worker_options(hp),
        )

    def train_dataloader(self) -> DataLoader:
        if self.task == "mc":
            raise ValueError("MSRVTT-MC is zero-shot (spec §3.6): run `snps3 test` with a retrieval checkpoint")
        return super().train_dataloader()
