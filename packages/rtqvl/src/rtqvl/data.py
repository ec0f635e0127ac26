"""Readers of RTQ's official data formats (spec §4), the video pipeline (§3.1 frame sampling and augmentation)
and the LightningDataModule.

Videos: ClipBERT-style LMDB stores (key = video id, value = the raw video file bytes), decoded with
:mod:`mmzoo.video` (PyAV) from memory. Annotations:

* ClipBERT retrieval jsonl (MSR-VTT, DiDeMo, ActivityNet): ``{"clip_name"|"video": id, "caption": str | [str]}``;
* captioning: grouped jsonl ``{"clip_name": id, "caption": [refs]}`` or LAVIS ``cap_*.json``
  (``[{"image_id": "video0.mp4", "caption": str}]``);
* MSRVTT-QA: LAVIS ``qa_*.json`` (``[{"video", "question", "answer", "question_id"}]``);
* NExT-QA: converted JSON (``[{"video", "qid", "type", "question", "answer": int, "a0".."a4"}]``), made from the
  official CSVs by :func:`convert_nextqa_csv` (``rtqvl convert-nextqa``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, read_json, read_jsonl, worker_options, written_whole
from mmzoo.video import VideoDecodeError, VideoReader, normalize
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "normalize_text",
    "LMDBVideoStore",
    "write_lmdb",
    "head_tail_indices",
    "uniform_eval_indices",
    "VideoTransform",
    "RetrievalDataset",
    "CaptionDataset",
    "VideoQADataset",
    "NExTQADataset",
    "convert_nextqa_csv",
    "video_key",
    "VIDEO_EXTENSIONS",
    "collate",
    "RTQDataModule",
]

log = logging.getLogger(__name__)

OnCorrupt = Literal["raise", "skip"]
DatasetName = Literal[
    "msrvtt_retrieval", "didemo", "activitynet", "msrvtt_caption", "msvd_caption", "msrvtt_qa", "nextqa"
]
_SEE = "see README, Data preparation"

# dataset → (annotation folder, video LMDB, train files, val files, test files), all relative to data_root
LAYOUT: dict[str, tuple[str, str, list[str], list[str], list[str]]] = {
    "msrvtt_retrieval": (
        "txt_db/msrvtt_retrieval",
        "vis_db/msrvtt",
        ["train.jsonl", "val.jsonl"],
        ["test.jsonl"],
        ["test.jsonl"],
    ),
    "didemo": ("txt_db/didemo_retrieval", "vis_db/didemo", ["train.jsonl"], ["test.jsonl"], ["test.jsonl"]),
    "activitynet": ("txt_db/anet_retrieval", "vis_db/anet", ["train.jsonl"], ["dev.jsonl"], ["val1.jsonl"]),
    "msrvtt_caption": ("txt_db/msrvtt_caption", "vis_db/msrvtt", ["train.jsonl"], ["test.jsonl"], ["test.jsonl"]),
    "msvd_caption": ("txt_db/msvd_caption", "vis_db/msvd", ["train.jsonl"], ["val.jsonl"], ["test.jsonl"]),
    "msrvtt_qa": ("annotations/msrvtt_qa", "vis_db/msrvtt", ["qa_train.json"], ["qa_val.json"], ["qa_test.json"]),
    "nextqa": ("annotations/nextqa", "vis_db/nextqa", ["train.json"], ["test.json"], ["test.json"]),
}

_TEXT_PUNCT = re.compile(r"[.!\"()*#:;~]")


def normalize_text(text: str, max_words: int = 50) -> str:
    """Caption / question normaliser (spec §3.1): lower-case, ``.!"()*#:;~`` → space, collapse spaces, ≤ 50 words."""
    words = _TEXT_PUNCT.sub(" ", text.lower()).split()
    return " ".join(words[:max_words])


# ------------------------------------------------------------------------------------------------ video store


_LMDB_ENVS: dict[tuple[int, str], object] = {}


class LMDBVideoStore:
    """Read-only ClipBERT LMDB of raw video bytes (key = UTF-8 video id). Opened lazily (fork-safe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            raise FileNotFoundError(f"video store {str(self.path)!r}: no LMDB (data.mdb) found; {_SEE}")
        self._env = None

    def _open(self):
        if self._env is None:
            # lmdb allows one environment per path and process: share it between the splits' stores
            key = (os.getpid(), str(self.path.resolve()))
            if key not in _LMDB_ENVS:
                import lmdb

                _LMDB_ENVS[key] = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, meminit=False)
            self._env = _LMDB_ENVS[key]
        return self._env

    def get(self, video_id: str) -> bytes:
        with self._open().begin(buffers=False) as txn:
            value = txn.get(video_id.encode("utf-8"))
        if value is None:
            raise KeyError(f"video {video_id!r} is not in the LMDB {str(self.path)!r}; {_SEE}")
        return bytes(value)

    def keys(self) -> list[str]:
        with self._open().begin() as txn:
            return [k.decode("utf-8") for k, _ in txn.cursor()]

    def __getstate__(self):
        return {"path": self.path, "_env": None}


def write_lmdb(path: str | Path, videos: Mapping[str, bytes | Path]) -> Path:
    """Write ``{video_id: raw bytes or a video file's path}`` as a ClipBERT LMDB (tests, demo data and
    ``rtqvl build-lmdb``). Files are read one at a time, with a progress bar."""
    import lmdb
    from tqdm import tqdm

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    total = sum(v.stat().st_size if isinstance(v, Path) else len(v) for v in videos.values())
    env = lmdb.open(str(path), map_size=max(1 << 24, 2 * total))
    with env.begin(write=True) as txn:
        for k, v in tqdm(videos.items(), desc=f"write {path.name}", total=len(videos), disable=len(videos) < 50):
            txn.put(k.encode("utf-8"), v.read_bytes() if isinstance(v, Path) else v)
    env.close()
    return path


# ------------------------------------------------------------------------------------------ frames and augment


def head_tail_indices(num_frames: int, k: int, generator: torch.Generator | None = None) -> list[int]:
    """Training sampler (spec §3.1): k/2 distinct random indices from each half of the video, sorted."""
    half = num_frames // 2
    out = []
    for lo, hi, m in ((0, max(half, 1), k // 2), (half, num_frames, k - k // 2)):
        n = hi - lo
        if n >= m:
            pick = torch.randperm(n, generator=generator)[:m] + lo
        else:  # short video: sample with replacement
            pick = torch.randint(lo, max(hi, lo + 1), (m,), generator=generator)
        out += sorted(pick.clamp(max=num_frames - 1).tolist())
    return out


def uniform_eval_indices(num_frames: int, k: int) -> list[int]:
    """Eval sampler (spec §3.1): ``floor(arange(0, n, n/k))``."""
    return [min(num_frames - 1, int(math.floor(i * num_frames / k))) for i in range(k)]


class VideoTransform:
    """Clip transform (spec §3.1): resize to S×S; train: RandomResizedCrop(scale 0.5–1, bicubic), horizontal flip,
    RandAugment(N=2, M=5) with ops drawn per clip and geometric signs per frame; then CLIP normalisation.

    uint8 (T, 3, H, W) → float32 (T, 3, S, S).
    """

    OPS = (
        "Identity",
        "AutoContrast",
        "Brightness",
        "Sharpness",
        "Equalize",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
    )

    def __init__(
        self,
        image_size: int,
        train: bool,
        randaugment: bool = True,
        magnitude: int = 5,
        num_ops: int = 2,
        augment: bool = True,
    ):
        self.size = image_size
        self.train = train and augment
        self.randaugment = randaugment
        self.magnitude = magnitude
        self.num_ops = num_ops

    def _augment_frame(self, img: torch.Tensor, op: str, sign: float) -> torch.Tensor:
        m = self.magnitude / 10.0
        fill = [128.0, 128.0, 128.0]
        if op == "AutoContrast":
            return TF.autocontrast(img)  # torchvision works in float internally: no uint8 overflow
        if op == "Equalize":
            return TF.equalize(img)
        if op in ("Brightness", "Sharpness"):
            factor = m * 1.8 + 0.1  # enhance factor (1.0 at level 5)
            return TF.adjust_brightness(img, factor) if op == "Brightness" else TF.adjust_sharpness(img, factor)
        if op == "ShearX":
            return TF.affine(
                img,
                angle=0.0,
                translate=[0, 0],
                scale=1.0,
                shear=[math.degrees(math.atan(sign * 0.3 * m)), 0.0],
                fill=fill,
            )
        if op == "ShearY":
            return TF.affine(
                img,
                angle=0.0,
                translate=[0, 0],
                scale=1.0,
                shear=[0.0, math.degrees(math.atan(sign * 0.3 * m))],
                fill=fill,
            )
        if op == "TranslateX":
            return TF.affine(img, angle=0.0, translate=[int(sign * 10 * m), 0], scale=1.0, shear=[0.0, 0.0], fill=fill)
        if op == "TranslateY":
            return TF.affine(img, angle=0.0, translate=[0, int(sign * 10 * m)], scale=1.0, shear=[0.0, 0.0], fill=fill)
        if op == "Rotate":
            return TF.rotate(img, sign * 30 * m, fill=fill)
        return img

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        s = self.size
        x = F.interpolate(frames.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)  # (T, 3, S, S) resized directly (aspect not kept)
        if self.train:
            area = s * s
            for _ in range(10):  # RandomResizedCrop parameters, drawn once per clip
                target = area * random.uniform(0.5, 1.0)
                ratio = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
                w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
                if 0 < w <= s and 0 < h <= s:
                    top, left = random.randint(0, s - h), random.randint(0, s - w)
                    break
            else:
                top, left, h, w = 0, 0, s, s
            x = TF.resized_crop(x, top, left, h, w, [s, s], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            if random.random() < 0.5:
                x = TF.horizontal_flip(x)
            if self.randaugment:
                ops = random.sample(self.OPS, self.num_ops)  # two distinct ops per clip
                frames_out = []
                for img in x:
                    for op in ops:
                        img = self._augment_frame(img, op, random.choice((-1.0, 1.0)))  # sign per frame
                    frames_out.append(img)
                x = torch.stack(frames_out)
        return normalize(x, "clip")  # (T, 3, S, S) float32


# --------------------------------------------------------------------------------------------------- datasets


def _read_json_list(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} not found; {_SEE}")
    if path.suffix == ".jsonl":
        data = [row for _, row in read_jsonl(path, "annotation file")]
    else:
        data = read_json(path, "annotation file")
        if not isinstance(data, list):
            raise ValueError(f"{str(path)!r}: expected a JSON list of objects; {_SEE}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"{str(path)!r} item {i}: expected a JSON object, got {type(row).__name__}; {_SEE}")
    return data


def _require(row: dict, keys: Sequence[str], path: Path, line: int) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"{str(path)!r} item {line}: missing key(s) {missing}; {_SEE}")


def _captions(row: dict, path: Path, line: int) -> list[str]:
    """``row["caption"]`` as a list of strings (a string or a list of strings in the file)."""
    caps = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
    if not all(isinstance(c, str) for c in caps):
        raise ValueError(f"{str(path)!r} item {line}: 'caption' must be a string or a list of strings; {_SEE}")
    return caps


VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".3gp", ".wmv", ".flv")
"""File suffixes of video files (``rtqvl build-lmdb`` packs these; an annotation may name a video with one)."""


def video_key(name: str) -> str:
    """Video id without extension (``video7010.mp4`` → ``video7010``): the file name up to its first '.', as the
    official readers strip it, and the LMDB key ``rtqvl build-lmdb`` writes."""
    return str(name).split("/")[-1].split(".")[0]


def _video_name(name: str) -> str:
    """The name an annotation gives a video, without folders and without a video file suffix (``clip7.trim.mp4`` →
    ``clip7.trim``): two names that differ here are two videos, even when :func:`video_key` maps them to one id."""
    base = str(name).split("/")[-1]
    return base[: -len(Path(base).suffix)] if Path(base).suffix.lower() in VIDEO_EXTENSIONS else base


class _VideoDataset(Dataset):
    """Common video loading: LMDB bytes → sampled frames → transform; ``on_corrupt`` raise | skip."""

    MAX_SUBSTITUTES = 20
    """Training with ``on_corrupt: skip``: how many random substitutes to try for an unreadable clip."""

    def __init__(
        self,
        data_root: str | Path,
        split: str,
        files: Sequence[str],
        ann_dir: str,
        video_db: str,
        num_frames: int,
        image_size: int,
        train: bool,
        on_corrupt: OnCorrupt = "raise",
        randaugment: bool = True,
        augment: bool = True,
    ):
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))  # anything else would skip unreadable clips
        check_range("data.num_frames", num_frames, ge=1, integer=True)
        check_range("data.image_size", image_size, ge=1, integer=True)
        self.root = Path(data_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.data_root={str(self.root)!r} does not exist; {_SEE}")
        self.split = split
        self.paths = [self.root / ann_dir / f for f in files]
        self.store = LMDBVideoStore(self.root / video_db)
        self.num_frames = num_frames
        self.train = train
        self.on_corrupt = on_corrupt
        self.transform = VideoTransform(image_size, train, randaugment, augment=augment)
        self.items: list[dict] = []
        self._named: dict[str, tuple[str, Path, int]] = {}  # video id → (name, file, item) of its first mention

    def _video_id(self, name: str | int, path: Path, line: int) -> str:
        """:func:`video_key` of an annotation's video name. Two names of different videos that reach the same id
        (``a.1.mp4`` and ``a.2.mp4`` both end at their first '.' as ``a``) would be read as one video, merging their
        captions and retrieval targets; that is an error naming both places. ``video7010`` and ``video7010.mp4`` name
        the same video."""
        key, full = video_key(name), _video_name(name)
        first = self._named.setdefault(key, (full, path, line))
        if first[0] != full:
            raise ValueError(
                f"{str(path)!r} item {line}: video {str(name)!r} and video {first[0]!r} ({str(first[1])!r} item "
                f"{first[2]}) share the video id {key!r} (ids end at the first '.', as in the official readers and "
                f"the LMDB keys of `rtqvl build-lmdb`), so two videos would be read as one; rename one; {_SEE}"
            )
        return key

    def load_video(self, video_id: str) -> torch.Tensor | None:
        try:
            with VideoReader(self.store.get(video_id), name=f"{self.store.path}:{video_id}") as reader:
                n = reader.num_frames
                idx = head_tail_indices(n, self.num_frames) if self.train else uniform_eval_indices(n, self.num_frames)
                frames = reader.get_frames(idx)  # (T, 3, H, W) uint8
        except (VideoDecodeError, KeyError) as err:
            if self.on_corrupt == "raise":
                raise
            log.warning("skipping video %s: %s", video_id, err)
            return None
        return self.transform(frames)

    def __len__(self) -> int:
        return len(self.items)

    def _load_item(self, i: int) -> dict | None:
        item = dict(self.items[i])
        video = self.load_video(item["video_id"])
        if video is None:
            return None
        item["video"] = video
        item["index"] = i
        return item

    def __getitem__(self, i: int) -> dict | None:
        """Item ``i``; with ``on_corrupt: skip`` an unreadable clip gives ``None`` in evaluation (dropped from the
        batch) and, in training, another randomly drawn item (as ClipBERT does), so that every training batch keeps
        its size: DDP gathers need equal shapes on every rank."""
        item = self._load_item(i)
        if item is not None or not self.train:
            return item
        for _ in range(self.MAX_SUBSTITUTES):
            item = self._load_item(random.randrange(len(self.items)))
            if item is not None:
                return item
        raise VideoDecodeError(
            f"{self.store.path}", f"{self.MAX_SUBSTITUTES} randomly drawn substitutes for item {i} were unreadable too"
        )


class RetrievalDataset(_VideoDataset):
    """ClipBERT retrieval jsonl (MSR-VTT, DiDeMo, ActivityNet; spec §4).

    Each line ``{"clip_name" | "video": id, "caption": str | [str]}``. ``video_index`` = order of first appearance
    of the video (the contrastive targets); ``text_index`` = position of a caption among all captions of the split,
    in file order (lists expanded), i.e. the row of the text in the evaluation's score matrix.

    Training (one item per caption, the contrastive sampling): ``video`` (T, 3, S, S) float32, ``caption`` str,
    ``video_id`` str, ``video_index`` int, ``index`` int.

    Evaluation (one item per video, so that each video is decoded and encoded once however many captions it has,
    e.g. MSR-VTT's 20 per video): ``video``, ``captions`` list[str] (all captions of the video, from every line
    naming it), ``text_index`` list[int] (theirs), ``video_id``, ``video_index``, ``index`` (the item's position).
    A video without captions is left out. :func:`collate` flattens the captions of a batch.
    """

    def __init__(
        self,
        data_root,
        split,
        files,
        ann_dir,
        video_db,
        num_frames,
        image_size,
        train,
        on_corrupt="raise",
        randaugment=True,
        augment=True,
    ):
        super().__init__(
            data_root, split, files, ann_dir, video_db, num_frames, image_size, train, on_corrupt, randaugment, augment
        )
        video_index: dict[str, int] = {}
        texts: list[tuple[str, str, int]] = []  # (video id, normalised caption, video index) in file order
        for path in self.paths:
            for ln, row in enumerate(_read_json_list(path)):
                vid_key = "clip_name" if "clip_name" in row else "video"
                _require(row, [vid_key, "caption"], path, ln)
                vid = self._video_id(row[vid_key], path, ln)
                captions = _captions(row, path, ln)
                vi = video_index.setdefault(vid, len(video_index))
                texts += [(vid, normalize_text(c), vi) for c in captions]
        self.num_videos = len(video_index)
        self.num_texts = len(texts)
        if train:
            self.items = [{"video_id": vid, "caption": c, "video_index": vi} for vid, c, vi in texts]
            return
        groups: dict[int, dict] = {}  # by video index, i.e. in order of first appearance
        for t, (vid, c, vi) in enumerate(texts):
            group = groups.setdefault(vi, {"video_id": vid, "video_index": vi, "captions": [], "text_index": []})
            group["captions"].append(c)
            group["text_index"].append(t)
        self.items = list(groups.values())


class CaptionDataset(_VideoDataset):
    """Captioning annotations (spec §4): grouped jsonl ``{"clip_name", "caption": [refs]}`` or LAVIS ``cap_*.json``
    (``[{"image_id", "caption"}]``, grouped here). Train: one item per caption; eval: one item per video.

    Item: ``video``, ``caption`` (train) / ``references`` list[str] (eval), ``video_id``, ``index``.
    """

    def __init__(
        self,
        data_root,
        split,
        files,
        ann_dir,
        video_db,
        num_frames,
        image_size,
        train,
        on_corrupt="raise",
        randaugment=True,
        augment=True,
    ):
        super().__init__(
            data_root, split, files, ann_dir, video_db, num_frames, image_size, train, on_corrupt, randaugment, augment
        )
        groups: dict[str, list[str]] = {}
        for path in self.paths:
            for ln, row in enumerate(_read_json_list(path)):
                vid_key = next((k for k in ("clip_name", "video", "image_id") if k in row), "clip_name")
                _require(row, [vid_key, "caption"], path, ln)
                caps = _captions(row, path, ln)
                groups.setdefault(self._video_id(row[vid_key], path, ln), []).extend(caps)
        for vid, caps in groups.items():
            if train:
                self.items += [{"video_id": vid, "caption": normalize_text(c)} for c in caps]
            else:
                self.items.append({"video_id": vid, "references": caps})


class VideoQADataset(_VideoDataset):
    """LAVIS MSRVTT-QA JSON (spec §4): ``[{"video": "video7010.mp4", "question", "answer", "question_id"}]``.

    Item: ``video``, ``question`` (normalised), ``answer`` str, ``weight`` 1.0, ``question_id``, ``video_id``,
    ``instance_id`` (position), ``index``.
    """

    def __init__(
        self,
        data_root,
        split,
        files,
        ann_dir,
        video_db,
        num_frames,
        image_size,
        train,
        on_corrupt="raise",
        randaugment=True,
        augment=True,
    ):
        super().__init__(
            data_root, split, files, ann_dir, video_db, num_frames, image_size, train, on_corrupt, randaugment, augment
        )
        for path in self.paths:
            for ln, row in enumerate(_read_json_list(path)):
                _require(row, ["video", "question", "answer", "question_id"], path, ln)
                answer = row["answer"]
                # one answer string per question (spec §4); str() would turn a list of answers into the never
                # matching "['a', 'b']" and null into "None"
                if (
                    not isinstance(row["question"], str)
                    or isinstance(answer, bool)
                    or not isinstance(answer, str | int | float)
                ):
                    raise ValueError(
                        f"{str(path)!r} item {ln}: 'question' must be a string and 'answer' one answer string, got "
                        f"{row['question']!r} and {answer!r}; {_SEE}"
                    )
                self.items.append(
                    {
                        "video_id": self._video_id(row["video"], path, ln),
                        "question": normalize_text(row["question"]),
                        "answer": str(answer),
                        "weight": 1.0,
                        "question_id": row["question_id"],
                        "instance_id": len(self.items),
                    }
                )


def _nextqa_option(row: dict, key: str, path: Path, line: int) -> str:
    """Candidate answer ``row[key]`` (``a0``..``a4``) as text. Every question has 5 written candidates (spec §4):
    a null, NaN, blank or non-scalar option is an error naming the file, item and key, since ``str()`` would make
    null the candidate "answer: none" (and NaN "answer: nan") that the model would then score."""
    value = row[key]
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)  # a converter that parsed a numeric answer such as "2" as a number
    raise ValueError(f"{str(path)!r} item {line}: option {key!r} must be a non-empty answer string, got {value!r} "
                     f"(every NExT-QA question has 5 candidate answers a0..a4); {_SEE}")  # fmt: skip


NEXTQA_TYPE_FAMILIES = ("C", "T", "D")
"""First letters of the NExT-QA question types (spec §4): causal (CW, CH), temporal (TN, TC, TP), descriptive (DC,
DL, DO); the per-type accuracies acc_C, acc_T, acc_D group questions by them (spec §5)."""


def _nextqa_type_error(value) -> str | None:
    """Why ``value`` is not a NExT-QA question type, or None. A null, blank or other type would be counted in the
    overall accuracy but in none of acc_C / acc_T / acc_D (official NExT-QA evaluation has no such bucket)."""
    if isinstance(value, str) and value.strip()[:1].upper() in NEXTQA_TYPE_FAMILIES:
        return None
    return (f"'type' must be a NExT-QA question type whose first letter is C (causal), T (temporal) or D "
            f"(descriptive), e.g. 'CW', 'TN', 'DC', got {value!r} (the per-type accuracies group questions by it)")  # fmt: skip


class NExTQADataset(_VideoDataset):
    """NExT-QA converted JSON (spec §4): ``[{"video", "qid", "type", "question", "answer": int, "a0".."a4"}]``.

    Item: ``video``, ``candidates`` list of 5 normalised ``"question: {q}? answer: {a}"`` strings, ``options`` the 5
    answers as the annotation writes them, ``answer`` int, ``type`` str (stripped), ``qid``, ``video_id``, ``index``.
    A missing (null, NaN or blank) option, a question that is not a string, or a ``type`` that is not a question type
    of the causal / temporal / descriptive families is an error naming the file and item.
    """

    def __init__(
        self,
        data_root,
        split,
        files,
        ann_dir,
        video_db,
        num_frames,
        image_size,
        train,
        on_corrupt="raise",
        randaugment=True,
        augment=True,
        num_choices: int = 5,
    ):
        super().__init__(
            data_root, split, files, ann_dir, video_db, num_frames, image_size, train, on_corrupt, randaugment, augment
        )
        keys = ["video", "qid", "type", "question", "answer"] + [f"a{k}" for k in range(num_choices)]
        for path in self.paths:
            for ln, row in enumerate(_read_json_list(path)):
                _require(row, keys, path, ln)
                answer = row["answer"]
                if isinstance(answer, bool) or not str(answer).strip().isdigit() or int(answer) >= num_choices:
                    raise ValueError(
                        f"{str(path)!r} item {ln}: 'answer' must be the index (0..{num_choices - 1}) of the right "
                        f"candidate, got {answer!r}; {_SEE}"
                    )
                q = row["question"]
                if not isinstance(q, str):  # null would become the text "question: none?"
                    raise ValueError(f"{str(path)!r} item {ln}: 'question' must be a string, got {q!r}; {_SEE}")
                type_error = _nextqa_type_error(row["type"])
                if type_error:
                    raise ValueError(f"{str(path)!r} item {ln}: {type_error}; {_SEE}")
                options = [_nextqa_option(row, f"a{k}", path, ln) for k in range(num_choices)]
                cands = [normalize_text(f"question: {q}? answer: {a}") for a in options]
                self.items.append(
                    {
                        "video_id": self._video_id(row["video"], path, ln),
                        "candidates": cands,
                        "options": options,
                        "answer": int(answer),
                        "type": row["type"].strip(),
                        "qid": row["qid"],
                    }
                )


NEXTQA_CSV_HEADER = [
    "video",
    "frame_count",
    "width",
    "height",
    "question",
    "answer",
    "qid",
    "type",
    "a0",
    "a1",
    "a2",
    "a3",
    "a4",
]


def convert_nextqa_csv(csv_paths: Sequence[str | Path], out_path: str | Path) -> int:
    """Official NExT-QA CSVs (13-column header) → one converted JSON list (spec §4). Returns the item count."""
    rows = []
    for p in csv_paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"NExT-QA CSV {str(p)!r} not found; {_SEE}")
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [h for h in NEXTQA_CSV_HEADER if h not in (reader.fieldnames or [])]
            if missing:
                raise KeyError(f"{str(p)!r}: missing column(s) {missing}; {_SEE}")
            for r in reader:
                try:
                    qid, answer = int(r["qid"]), int(r["answer"])
                except (TypeError, ValueError) as err:
                    raise ValueError(
                        f"{str(p)!r} line {reader.line_num}: 'qid' and 'answer' must be integers, got "
                        f"{r['qid']!r} and {r['answer']!r}; {_SEE}"
                    ) from err
                empty = [f"a{k}" for k in range(5) if r[f"a{k}"] is None or not r[f"a{k}"].strip()]
                if empty:  # a short row gives None, which would be written as null and read as "answer: none"
                    raise ValueError(
                        f"{str(p)!r} line {reader.line_num}: option(s) {empty} are empty or missing (every NExT-QA "
                        f"question has 5 candidate answers a0..a4); {_SEE}"
                    )
                type_error = _nextqa_type_error(r["type"])
                if type_error:
                    raise ValueError(f"{str(p)!r} line {reader.line_num}: {type_error}; {_SEE}")
                rows.append(
                    {
                        "video": r["video"],
                        "qid": qid,
                        "type": r["type"],
                        "question": r["question"],
                        "answer": answer,
                        **{f"a{k}": r[f"a{k}"] for k in range(5)},
                    }
                )
    with written_whole(out_path) as tmp:  # whole or absent
        tmp.write_text(json.dumps(rows), encoding="utf-8")
    return len(rows)


def collate(items: list[dict | None]) -> dict | None:
    """Stack videos (B, T, 3, S, S); other keys become lists (numbers → tensors). Skipped items (None) are dropped
    with their captions; an all-skipped batch gives None (the module skips that step).

    Evaluation retrieval items (one per video with its ``captions``): the batch's captions are flattened video by
    video into ``captions`` (N_c strings), with ``text_index`` (N_c,) their split-level indices and ``caption_video``
    (N_c,) the batch position of each caption's video."""
    items = [x for x in items if x is not None]
    if not items:
        return None
    out: dict = {"video": torch.stack([x["video"] for x in items])}
    for k in items[0]:
        if k in ("video", "captions", "text_index"):
            continue
        vals = [x[k] for x in items]
        out[k] = torch.tensor(vals) if isinstance(vals[0], int | float) and not isinstance(vals[0], bool) else vals
    if "captions" in items[0]:
        out["captions"] = [c for x in items for c in x["captions"]]
        out["text_index"] = torch.tensor([t for x in items for t in x["text_index"]], dtype=torch.long)
        out["caption_video"] = torch.tensor([b for b, x in enumerate(items) for _ in x["captions"]], dtype=torch.long)
    return out


# ------------------------------------------------------------------------------------------------ DataModule


class RTQDataModule(SplitLoaders, pl.LightningDataModule):
    """Data for one RTQ task/dataset (spec §4). ``dataset`` picks the reader and the default file layout
    (:data:`LAYOUT`); every file name can be overridden.

    Args:
        dataset: msrvtt_retrieval | didemo | activitynet | msrvtt_caption | msvd_caption | msrvtt_qa | nextqa.
        data_root: folder holding ``ann_dir`` and ``video_db``.
        ann_dir, video_db, train_files, val_files, test_files: override the layout (relative to data_root).
        num_frames: T frames per clip (must equal ``model.config.vision.num_frames``).
        image_size: frame size S (must equal ``model.config.vision.image_size``).
        batch_size, eval_batch_size: per device.
        randaugment: RandAugment in training (spec §3.1).
        augment: master switch of the training augmentation (crop, flip, RandAugment); off for tasks where
            left/right matters (the synthetic demo).
        on_corrupt: ``raise`` or ``skip`` (log a warning naming the video) for undecodable / missing videos;
            ``skip`` drops the clip (and, in retrieval, its captions) from evaluation and replaces it by a random
            other clip in training.
        generate_demo_data: write a synthetic dataset in the ClipBERT retrieval format to ``data_root`` when it has
            none (demo / tests; see :mod:`rtqvl.synthetic`).
    """

    def __init__(
        self,
        dataset: DatasetName = "msrvtt_retrieval",
        data_root: str = "data",
        ann_dir: str | None = None,
        video_db: str | None = None,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        num_frames: int = 12,
        image_size: int = 224,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        randaugment: bool = True,
        augment: bool = True,
        on_corrupt: OnCorrupt = "raise",
        generate_demo_data: bool = False,
        demo_num_train: int = 64,
        demo_num_test: int = 32,
    ):
        super().__init__()
        if dataset not in LAYOUT:
            raise ValueError(f"data.dataset={dataset!r}: expected one of {sorted(LAYOUT)}")
        check_choice("data.on_corrupt", on_corrupt, get_args(OnCorrupt))
        for key, value in (("num_frames", num_frames), ("image_size", image_size)):
            check_range(f"data.{key}", value, ge=1, integer=True)
        check_range("data.batch_size", batch_size, ge=1, integer=True)
        check_range("data.eval_batch_size", eval_batch_size, ge=1, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        check_range("data.demo_num_train", demo_num_train, ge=1, integer=True)
        check_range("data.demo_num_test", demo_num_test, ge=2, integer=True)  # num_test // 2 clip pairs
        self.save_hyperparameters()
        a, v, tr, va, te = LAYOUT[dataset]
        self.ann_dir = ann_dir or a
        self.video_db = video_db or v
        self.files = {"train": train_files or tr, "val": val_files or va, "test": test_files or te}
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generate_demo_data and not (Path(hp.data_root) / self.video_db / "data.mdb").is_file():
            from rtqvl.synthetic import write_order_dataset

            write_order_dataset(
                hp.data_root, hp.demo_num_train, hp.demo_num_test, seed=0, ann_dir=self.ann_dir, video_db=self.video_db
            )

    def _make(self, split: str, train: bool) -> Dataset:
        hp = self.hparams
        cls = {
            "msrvtt_retrieval": RetrievalDataset,
            "didemo": RetrievalDataset,
            "activitynet": RetrievalDataset,
            "msrvtt_caption": CaptionDataset,
            "msvd_caption": CaptionDataset,
            "msrvtt_qa": VideoQADataset,
            "nextqa": NExTQADataset,
        }[hp.dataset]
        return cls(
            hp.data_root,
            split,
            self.files[split],
            self.ann_dir,
            self.video_db,
            hp.num_frames,
            hp.image_size,
            train,
            hp.on_corrupt,
            hp.randaugment,
            hp.augment,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.prepare_data()  # idempotent; makes demo data available when prepare_data was not called
            self.datasets["train"] = self._make("train", True)
        if stage in ("fit", "validate", None):
            self.prepare_data()
            self.datasets["val"] = self._make("val", False)
        if stage in ("test", "predict", None):
            self.prepare_data()
            self.datasets["test"] = self._make("test", False)

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.datasets[split],
            batch_size=hp.batch_size if train else hp.eval_batch_size,
            shuffle=train,
            drop_last=train,
            **worker_options(hp),
            collate_fn=collate,
        )
