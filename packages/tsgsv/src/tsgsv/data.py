"""Readers of the official TSGV layout (spec §4), streaming windows, and the LightningDataModule.

On-disk layout under ``data_root`` (one dataset folder, spec §4.2)::

    train.json  val.json  test.json              {video: {duration, duration_frame, timestamps, sentences, anno_ids}}
    feature/<video feature file>.hdf5             one [N, d_v] dataset per video (key = video name)
    feature/<lm>_language_tokens_features_<split>.hdf5   one [n_tokens, d_s] dataset per anno_id (+ 'Integrity')

Feature files are read only through :class:`mmzoo.features.H5Features`, lazily per window.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import torch
from mmzoo.config import check_choice, check_range
from mmzoo.data import reload_train_loader_every_epoch, worker_options
from mmzoo.features import H5Features
from torch.utils.data import DataLoader, Dataset

from .losses import gaussian_labels, hard_labels
from .synthetic import SyntheticStreamConfig, write_synthetic_dataset

__all__ = [
    "Annotation",
    "read_annotations",
    "window_rows",
    "eval_windows",
    "TSGVTrainDataset",
    "TSGVEvalDataset",
    "TSGVDataModule",
    "DEFAULT_FILES",
]

log = logging.getLogger(__name__)

_SEE = "see README, Data preparation"

DatasetName = Literal["activitynet", "tacos", "mad"]
"""Datasets of :class:`TSGVDataModule` (``data.dataset``); each names its default feature files."""

DEFAULT_FILES: dict[str, tuple[str, str]] = {
    "activitynet": ("activitynet_v1-3_c3d_{split}.hdf5", "bert-base-uncased"),
    "tacos": ("tall_c3d_features.hdf5", "bert-base-uncased"),
    "mad": ("CLIP_frames_features_5fps_{split}.hdf5", "CLIP"),
}
"""Per dataset: the video feature file name under ``feature/`` ({split} is substituted) and the language model."""


@dataclass
class Annotation:
    """One moment–query pair. Times in seconds; ``num_frames`` = N feature rows of the video."""

    video: str
    anno_id: str
    start: float
    end: float
    duration: float
    num_frames: int
    sentence: str

    @property
    def frame_span(self) -> tuple[float, float]:
        """(s*, e*) in frame units: τ/D·(N−1) (spec §3.8)."""
        scale = (self.num_frames - 1) / self.duration
        return self.start * scale, self.end * scale


def read_annotations(paths: list[Path], min_frames: int = 71) -> list[Annotation]:
    """Read annotation JSON files (spec §4.2). Videos with N < ``min_frames`` are dropped (official: N ≤ 70),
    timestamps are clipped to [0, D] and pairs with τ_s ≥ τ_e dropped (spec §3.10).

    Raises:
        FileNotFoundError: a missing file.
        KeyError / ValueError: a file that is not a JSON object, an entry that is not an object or lacks a key,
            malformed timestamps, or an anno_id used for two sentences; the message names the file and the video.
    """
    out: list[Annotation] = []
    seen: dict[str, tuple[str, str, str]] = {}  # anno_id -> (file, video, sentence): ids key the sentence features
    dropped_videos = dropped_pairs = 0
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"annotation file {str(path)!r} does not exist; {_SEE}")
        with open(path) as f:
            videos = json.load(f, object_pairs_hook=_unique_video_keys(path))
        if not isinstance(videos, dict):
            raise ValueError(f"{str(path)!r} holds a JSON {_json_type(videos)}, not an object mapping video names to "
                             f"annotation entries; {_SEE}")  # fmt: skip
        for video, item in videos.items():
            if not isinstance(item, dict):
                raise ValueError(f"{str(path)!r}: video {video!r} is a JSON {_json_type(item)} ({_short(item)}), not "
                                 f"an object with keys {', '.join(_ANNOTATION_KEYS)}; {_SEE}")  # fmt: skip
            for key in _ANNOTATION_KEYS:
                if key not in item:
                    raise KeyError(f"{str(path)!r}: video {video!r} lacks key {key!r}; {_SEE}")
            if not len(item["timestamps"]) == len(item["sentences"]) == len(item["anno_ids"]):
                raise ValueError(f"{str(path)!r}: video {video!r}: timestamps/sentences/anno_ids differ in length")
            n = _number(item["duration_frame"], path, video, "duration_frame", integer=True)
            d = _number(item["duration"], path, video, "duration")
            if n < max(min_frames, 1) or d <= 0:  # no feature row: nothing to stream, whatever data.min_frames
                dropped_videos += 1
                continue
            for stamp, sent, aid in zip(item["timestamps"], item["sentences"], item["anno_ids"], strict=True):
                if not isinstance(stamp, list | tuple) or len(stamp) != 2:
                    raise ValueError(f"{str(path)!r}: video {video!r}, anno_id {aid!r}: timestamps entry {stamp!r} is not "
                                     f"a [start, end] pair in seconds; {_SEE}")  # fmt: skip
                s, e = (min(max(_number(t, path, video, "timestamps", aid), 0.0), d) for t in stamp)
                if s >= e:
                    dropped_pairs += 1
                    continue
                aid = str(aid)
                if aid in seen and seen[aid][2] != sent:
                    raise ValueError(
                        f"anno_id {aid!r} is used twice with different sentences ({seen[aid][0]!r}, video "
                        f"{seen[aid][1]!r}: {seen[aid][2]!r}; {str(path)!r}, video {video!r}: {sent!r}). anno_ids key the "
                        f"sentence features, so one of them would silently get the other's features: make the ids unique "
                        f"and extract the sentence features again; {_SEE}"
                    )
                if aid in seen:
                    log.warning("anno_id %r appears twice (%s, video %r and %s, video %r) with the same sentence",
                                aid, seen[aid][0], seen[aid][1], path, video)  # fmt: skip
                seen[aid] = (str(path), video, sent)
                out.append(Annotation(video, aid, s, e, d, n, sent))
    if dropped_videos or dropped_pairs:  # the official filters, made visible
        log.info("%s: kept %d annotations; dropped %d videos with fewer than %d feature rows (or no duration) and %d "
                 "moments with start >= end after clipping", ", ".join(map(str, paths)), len(out), dropped_videos,
                 max(min_frames, 1), dropped_pairs)  # fmt: skip
    return out


_ANNOTATION_KEYS = ("duration", "duration_frame", "timestamps", "sentences", "anno_ids")


def _number(value: object, path: Path, video: str, key: str, anno_id: object = None, integer: bool = False) -> float:
    """``value`` of annotation key ``key`` as a finite float (an int when ``integer``); otherwise a ValueError naming
    the file, the video (and the anno_id) and the key: a null or NaN would fail later in a bare ``float()`` or give a
    NaN loss naming nothing."""
    number = value
    if isinstance(value, str):  # a number written as a string, which float() has always read
        try:
            number = float(value)
        except ValueError:
            pass
    ok = isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number)
    if ok and integer:
        ok = float(number).is_integer()
    if not ok:
        where = f"video {video!r}" + (f", anno_id {anno_id!r}" if anno_id is not None else "")
        need = "a whole number of feature rows" if integer else "a finite number of seconds"
        raise ValueError(f"{str(path)!r}: {where}: {key} = {_short(value)} is not {need}; {_SEE}")
    return int(number) if integer else float(number)


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type (array, string, number, ...)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unique_video_keys(path: Path):
    """``json.load`` hook that refuses a repeated key at the top level (a repeated video name would silently drop the
    first entry's annotations)."""

    def hook(pairs: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys) and all(isinstance(v, dict) and "anno_ids" in v for _, v in pairs):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"{str(path)!r}: video {dup!r} appears twice; merge its annotations into one entry")
        return dict(pairs)

    return hook


def window_rows(features: torch.Tensor, offset: int, start: int, length: int, num_frames: int):
    """Rows [start, start+length) of a video, from ``features`` holding rows [offset, offset+len(features)).

    Rows outside [0, N) are zero and flagged. Returns (length, D) float and (length,) bool (True = padding).
    """
    idx = torch.arange(start, start + length)
    invalid = (idx < 0) | (idx >= num_frames)
    rows = features.new_zeros(length, features.shape[-1])
    ok = ~invalid
    local = idx[ok] - offset
    if len(local) and (int(local.min()) < 0 or int(local.max()) >= len(features)):
        raise ValueError(
            f"window_rows: rows [{start}, {start + length}) of a {num_frames}-frame video are not all inside the "
            f"{len(features)} rows given from row {offset}"
        )  # a negative index would wrap around silently
    rows[ok] = features[local]
    return rows, invalid


def eval_windows(
    video: torch.Tensor, times: torch.Tensor, short_memory: int, long_memory: int
) -> dict[str, torch.Tensor]:
    """Test windows ending at each time step (spec §3.1): short memory [t−M_s+1, t+1), long memory
    [t−M_s+1−M_l, t−M_s+1). video (N, D), times (W,) -> short (W, M_s, D), long (W, M_l, D) and their masks."""
    N = video.shape[0]
    padded = torch.cat([video.new_zeros(short_memory + long_memory - 1, video.shape[1]), video])  # (P + N, D)
    first = times - short_memory - long_memory + 1  # first row of the window (may be < 0)
    idx = first[:, None] + torch.arange(short_memory + long_memory, device=times.device)[None]  # (W, M_l + M_s)
    rows = padded[idx + short_memory + long_memory - 1]  # (W, M_l + M_s, D)
    invalid = (idx < 0) | (idx >= N)
    return {
        "long": rows[:, :long_memory],
        "long_mask": invalid[:, :long_memory],
        "short": rows[:, long_memory:],
        "short_mask": invalid[:, long_memory:],
    }


_ITEM = {"video": "video", "text": "anno_id"}  # what keys the video / sentence feature file


class _TSGVFiles:
    """Opens and checks the annotation JSON, the video feature file and the sentence feature file of a split.

    Feature widths: every video's features must be as wide as every other's (checked for all videos when the files
    are opened, from the HDF5 shapes, which the row-count check reads anyway), and every sentence's as wide as every
    other's (checked as each sentence is read: a shape per anno_id would cost seconds at start-up on MAD). The first
    video and the first annotation's sentence set the widths until :meth:`expect_width` sets the model's.
    """

    def __init__(
        self,
        data_root: str | Path,
        split: str,
        video_feature_file: str,
        language_model: str,
        min_frames: int,
        max_text_len: int,
    ):
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data.data_root={str(root)!r} does not exist; {_SEE}")
        json_splits = split.split("&")  # 'train&val' (TACoS) reads train.json + val.json
        json_paths = [root / f"{s}.json" for s in json_splits]
        self.annotations = read_annotations(json_paths, min_frames)
        if not self.annotations:  # else an epoch of nothing, or metrics of 0 over no query, or a bare sampling error
            raise ValueError(
                f"{', '.join(repr(str(p)) for p in json_paths)}: no annotation left in split {split!r} after dropping "
                f"videos with fewer than data.min_frames={min_frames} feature rows (or none, or no duration) and "
                f"moments whose [start, end] is empty once clipped to the video; {_SEE}"
            )
        video_path = root / "feature" / video_feature_file.format(split=split)
        text_path = root / "feature" / f"{language_model}_language_tokens_features_{split}.hdf5"
        for p, what in ((video_path, "video features"), (text_path, "sentence token features")):
            if not p.is_file():
                hint = " (make them with `tsgsv extract-text-features`)" if p == text_path else ""
                raise FileNotFoundError(f"missing {what} {str(p)!r}{hint}; {_SEE}")
        self.video = H5Features(video_path)
        self.text = H5Features(text_path)
        self.max_text_len = max_text_len
        self.widths: dict[str, tuple[int, str]] = {}  # "video" / "text" -> (width, where it comes from: messages)
        video_keys, text_keys = set(self.video.keys()), set(self.text.keys())
        checked: set[str] = set()
        for a in self.annotations:
            if a.anno_id not in text_keys:
                raise KeyError(f"{str(text_path)!r}: no sentence features for anno_id {a.anno_id!r}; {_SEE}")
            if a.video in checked:
                continue
            if a.video not in video_keys:
                raise KeyError(f"{str(video_path)!r}: no features for video {a.video!r}; {_SEE}")
            shape = self.video.shape(a.video)
            rows = shape[0] if len(shape) == 2 else math.prod(shape[:-1])
            if rows != a.num_frames:
                raise ValueError(
                    f"{str(video_path)!r}: video {a.video!r} has {rows} feature rows but duration_frame="
                    f"{a.num_frames} in the annotation JSON"
                )
            self.check_width("video", a.video, shape[-1])
            checked.add(a.video)
        if self.annotations:
            first = self.annotations[0].anno_id
            self.check_width("text", first, self.text.shape(first)[-1])
        self._cache: dict[str, torch.Tensor] = {}

    def check_width(self, kind: str, key: str, width: int) -> None:
        """Raise unless ``width``, the feature width of video / anno_id ``key`` (``kind`` "video" / "text"), equals
        the width set before for that kind; the first call for a kind sets it."""
        if kind not in self.widths:
            self.widths[kind] = (width, f"{_ITEM[kind]} {key!r} has width {width}")
            return
        expected, reference = self.widths[kind]
        if width != expected:
            path = self.video.path if kind == "video" else self.text.path
            raise ValueError(f"{str(path)!r}: {_ITEM[kind]} {key!r} has features of width {width}, but {reference}; "
                             f"all {kind} features of a split must have one width; {_SEE}")  # fmt: skip

    def expect_width(self, kind: str, width: int, config_key: str) -> None:
        """Make the model's width (config key ``config_key``) the one every later :meth:`check_width` of ``kind``
        compares with, after checking the width seen so far against it."""
        if kind in self.widths and self.widths[kind][0] != width:
            _, reference = self.widths[kind]
            path = self.video.path if kind == "video" else self.text.path
            raise ValueError(f"{str(path)!r}: {reference}, but model.config.{config_key}={width}")
        self.widths[kind] = (width, f"model.config.{config_key}={width}")

    def video_rows(self, video: str, start: int, stop: int, preload: bool) -> tuple[torch.Tensor, int]:
        """Rows [max(start,0), stop) of a video's features (N, d_v) -> (rows, offset of the first row)."""
        lo = max(start, 0)
        if preload:
            if video not in self._cache:
                self._cache[video] = self.video.read(video).reshape(-1, self.video.shape(video)[-1])
            return self._cache[video][lo:stop], lo
        shape = self.video.shape(video)
        if len(shape) != 2:  # singleton axes (spec §4.2, e.g. (1, N, d)): the rows are not the first axis
            return self.video.read(video).reshape(-1, shape[-1])[lo:stop], lo
        return self.video.read(video, lo, max(stop, lo)), lo

    def sentence(self, anno_id: str) -> tuple[torch.Tensor, int]:
        """Token features padded/truncated to L tokens -> ((L, d_s), true length capped at L)."""
        tokens = self.text[anno_id]
        self.check_width("text", anno_id, tokens.shape[-1])
        tokens = tokens.reshape(-1, tokens.shape[-1])[: self.max_text_len]
        out = tokens.new_zeros(self.max_text_len, tokens.shape[-1])
        out[: len(tokens)] = tokens
        return out, len(tokens)


class TSGVTrainDataset(Dataset):
    """Training windows ("chunks", spec §3.10) of the official layout.

    Each item is one window with short memory [a, a+M_s), long memory [a−M_l, a) and future memory
    [a+M_s, a+M_s+M_f). Call :meth:`rechunk` with a new seed every epoch (the DataModule does).

    Item keys: ``short`` (M_s, d_v), ``short_mask`` (M_s,) bool True = padding, ``long`` (M_l, d_v), ``long_mask``,
    ``future`` (M_f, d_v), ``future_mask``, ``sentence`` (L, d_s), ``sentence_length`` (), ``labels`` (M_s, 3)
    (start, end, sem), ``anno_index`` (), ``window_start`` ().
    """

    def __init__(
        self,
        data_root: str | Path,
        split: str = "train",
        video_feature_file: str = DEFAULT_FILES["activitynet"][0],
        language_model: str = "bert-base-uncased",
        short_memory: int = 8,
        long_memory: int = 64,
        future_memory: int = 64,
        max_text_len: int = 20,
        min_frames: int = 71,
        gaussian_label: bool = True,
        label_widths: tuple[float, float, float] = (0.25, 0.25, 0.21),
        chunk_interval: int = 1,
        pos_expansion_ratio: float | None = None,
        neg_pos_ratio: float = 25.0,
        preload: bool = False,
        seed: int = 0,
    ):
        self.files = _TSGVFiles(data_root, split, video_feature_file, language_model, min_frames, max_text_len)
        self.annotations = self.files.annotations
        self.short_memory, self.long_memory, self.future_memory = short_memory, long_memory, future_memory
        self.gaussian_label = gaussian_label
        self.label_widths = tuple(label_widths)
        self.chunk_interval = chunk_interval
        self.pos_expansion_ratio = pos_expansion_ratio
        self.neg_pos_ratio = neg_pos_ratio
        self.preload = preload
        self.windows: list[tuple[int, int]] = []
        self.rechunk(seed)

    def rechunk(self, seed: int) -> None:
        """Draw a new offset o ~ U{0 … M_s+chunk_interval−2} per annotation and tile the video with windows starting
        at o+1−M_s, o+1, o+1+M_s, … while the window end ≤ N. With ``pos_expansion_ratio`` (MAD), windows
        overlapping [s*−2ℓ, e*+2ℓ] are kept and others with probability min(1, (neg_pos_ratio−ratio+1)·ℓ/(N−o−ratio·ℓ))."""
        g = torch.Generator().manual_seed(seed)
        M = self.short_memory
        windows = []
        for i, a in enumerate(self.annotations):
            o = int(torch.randint(0, M + self.chunk_interval - 1, (1,), generator=g))
            # Python's range semantics (as the official code): a video shorter than the first window's end has none
            starts = torch.tensor(list(range(o + 1 - M, a.num_frames - M + 1, M)), dtype=torch.long)
            if self.pos_expansion_ratio is not None:
                s, e = a.frame_span
                length = e - s
                half = (self.pos_expansion_ratio - 1) / 2 * length
                positive = (starts + M > s - half) & (starts <= e + half)
                denom = a.num_frames - o - self.pos_expansion_ratio * length
                rate = (
                    1.0
                    if denom <= 0
                    else min(1.0, (self.neg_pos_ratio - self.pos_expansion_ratio + 1) * length / denom)
                )
                keep = positive | (torch.rand(len(starts), generator=g) < rate)
                starts = starts[keep]
            windows += [(i, int(s)) for s in starts]
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, a0 = self.windows[index]
        ann = self.annotations[i]
        M_s, M_l, M_f, N = self.short_memory, self.long_memory, self.future_memory, ann.num_frames
        rows, offset = self.files.video_rows(ann.video, a0 - M_l, min(a0 + M_s + M_f, N), self.preload)
        short, short_mask = window_rows(rows, offset, a0, M_s, N)
        long, long_mask = window_rows(rows, offset, a0 - M_l, M_l, N)
        future, future_mask = window_rows(rows, offset, a0 + M_s, M_f, N)
        sentence, length = self.files.sentence(ann.anno_id)
        s, e = ann.frame_span
        frames = torch.arange(a0, a0 + M_s, dtype=torch.float32)
        if self.gaussian_label:
            labels = gaussian_labels(frames, torch.tensor(s), torch.tensor(e), self.label_widths)
        else:
            labels = hard_labels(frames, torch.tensor(s), torch.tensor(e))
        return {
            "short": short, "short_mask": short_mask, "long": long, "long_mask": long_mask,
            "future": future, "future_mask": future_mask, "sentence": sentence,
            "sentence_length": torch.tensor(length), "labels": labels,
            "anno_index": torch.tensor(i), "window_start": torch.tensor(a0),
        }  # fmt: skip


class TSGVEvalDataset(Dataset):
    """Evaluation items: one per annotation, in annotation order, holding the whole video's features; the
    module cuts the test windows (one per time step, spec §2) and batches many per forward.

    Item keys: ``video`` (N, d_v), ``sentence`` (L, d_s), ``sentence_length`` (), ``duration`` (s), ``target``
    (τ_s, τ_e) seconds, ``num_frames`` N, ``anno_index`` (unique within the split: the metrics deduplicate DDP
    padding by it), ``anno_id``, ``video_name``, ``query`` (the sentence text).

    Args:
        fraction / subset_seed: evaluate a fixed random subset of the annotations (official validation: 50 %
            ANet/TACoS, 10 % MAD, seed 1949), drawn as the official code does (Python ``random.sample`` of
            ``int(fraction·n)`` annotation indices), so it is the same subset.
    """

    def __init__(
        self,
        data_root: str | Path,
        split: str = "test",
        video_feature_file: str = DEFAULT_FILES["activitynet"][0],
        language_model: str = "bert-base-uncased",
        max_text_len: int = 20,
        min_frames: int = 71,
        fraction: float = 1.0,
        subset_seed: int = 1949,
    ):
        check_range("data.val_fraction", fraction, gt=0, le=1)  # the data module passes data.val_fraction here
        self.files = _TSGVFiles(data_root, split, video_feature_file, language_model, min_frames, max_text_len)
        self.annotations = self.files.annotations
        self.indices = list(range(len(self.annotations)))
        if fraction < 1:  # the official subset: random.seed(1949); random.sample(range(n), int(fraction * n))
            k = max(1, int(fraction * len(self.indices)))
            self.indices = sorted(random.Random(subset_seed).sample(self.indices, k))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        i = self.indices[index]
        ann = self.annotations[i]
        video, _ = self.files.video_rows(ann.video, 0, ann.num_frames, False)
        sentence, length = self.files.sentence(ann.anno_id)
        return {
            "video": video, "sentence": sentence, "sentence_length": torch.tensor(length),
            "duration": ann.duration, "target": (ann.start, ann.end), "num_frames": ann.num_frames,
            "anno_index": i, "anno_id": ann.anno_id, "video_name": ann.video, "query": ann.sentence,
        }  # fmt: skip


def collate_annotations(items: list[dict]) -> list[dict]:
    """Evaluation batches are lists of annotations (each holds a whole video)."""
    return items


class TSGVDataModule(pl.LightningDataModule):
    """Data of ActivityNet Captions, TACoS or MAD in the official layout (spec §4).

    Args:
        data_root: the dataset folder holding ``train.json`` … and ``feature/``.
        dataset: activitynet | tacos | mad — picks the default feature file names (DEFAULT_FILES).
        video_feature_file: override of the video feature file under ``feature/`` ({split} substituted).
        language_model: override of the sentence-feature file prefix (bert-base-uncased, CLIP).
        train_split: ``train`` (ANet, MAD) or ``train&val`` (TACoS).
        val_split / val_fraction: validation split and its fixed random subset (ANet val 0.5, TACoS test 0.5,
            MAD val 0.1; seed 1949).
        test_split: the test split.
        short_memory / long_memory / future_memory / max_text_len: must equal the model's M_s, M_l, M_f, L.
        min_frames: videos with fewer feature rows are dropped (official: N ≤ 70 dropped -> 71).
        gaussian_label / label_widths: soft labels (official True, (0.25, 0.25, 0.21)).
        pos_expansion_ratio / neg_pos_ratio: MAD window sub-sampling (5, 25); None disables it.
        batch_size: training windows per step (per device).
        preload: keep whole videos in RAM after the first read (small data); False reads windows lazily.
        generate_demo_data: write a synthetic dataset in the official format to ``data_root`` when it has no
            ``train.json`` (demo / tests only), with the generator settings ``demo``.
    """

    def __init__(
        self,
        data_root: str = "data/activitynet",
        dataset: DatasetName = "activitynet",
        video_feature_file: str | None = None,
        language_model: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        val_fraction: float = 0.5,
        test_split: str = "test",
        short_memory: int = 8,
        long_memory: int = 64,
        future_memory: int = 64,
        max_text_len: int = 20,
        min_frames: int = 71,
        gaussian_label: bool = True,
        label_widths: tuple[float, float, float] = (0.25, 0.25, 0.21),
        pos_expansion_ratio: float | None = None,
        neg_pos_ratio: float = 25.0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        preload: bool = False,
        generate_demo_data: bool = False,
        demo: SyntheticStreamConfig | None = None,
    ):
        super().__init__()
        # else a bare KeyError, or no error at all when both file names are given
        check_choice("data.dataset", dataset, get_args(DatasetName))
        check_range("data.val_fraction", val_fraction, gt=0, le=1)
        for key, value in (
            ("short_memory", short_memory),
            ("long_memory", long_memory),
            ("future_memory", future_memory),
            ("max_text_len", max_text_len),
            ("batch_size", batch_size),
        ):
            check_range(f"data.{key}", value, ge=1, integer=True)
        check_range("data.min_frames", min_frames, ge=0, integer=True)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        if gaussian_label:  # a width of 0 divides 0 by 0 at the moment's own frames
            if len(label_widths) != 3:
                raise ValueError(f"data.label_widths={list(label_widths)}: expected 3 widths (start, end, sem)")
            for w in label_widths:
                check_range("data.label_widths", w, gt=0)
        if pos_expansion_ratio is not None:  # the span kept around a moment, in moment lengths
            check_range("data.pos_expansion_ratio", pos_expansion_ratio, ge=0)
            check_range("data.neg_pos_ratio", neg_pos_ratio, ge=0)
        self.save_hyperparameters()
        self.video_feature_file = video_feature_file or DEFAULT_FILES[dataset][0]
        self.language_model = language_model or DEFAULT_FILES[dataset][1]
        self.train_set: TSGVTrainDataset | None = None
        self.val_set: TSGVEvalDataset | None = None
        self.test_set: TSGVEvalDataset | None = None
        self.demo = SyntheticStreamConfig(**demo) if isinstance(demo, dict) else demo
        self._window_seed: int | None = None

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.generate_demo_data and not (Path(hp.data_root) / "train.json").is_file():
            demo = self.demo or SyntheticStreamConfig()
            # a split such as TACoS's 'train&val' reads its own sentence-feature file: write it as well
            unions = [s for s in (hp.train_split, hp.val_split, hp.test_split) if "&" in s]
            cfg = replace(
                demo,
                video_feature_file=self.video_feature_file,
                language_model=self.language_model,
                combined_splits=tuple(dict.fromkeys([*demo.combined_splits, *unions])),
            )
            write_synthetic_dataset(hp.data_root, cfg)

    def _eval_set(self, split: str, fraction: float) -> TSGVEvalDataset:
        hp = self.hparams
        return TSGVEvalDataset(
            hp.data_root, split, self.video_feature_file, self.language_model, hp.max_text_len, hp.min_frames,
            fraction,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage == "fit":  # train_dataloader() draws new windows: it must run every epoch (official regenerate)
            reload_train_loader_every_epoch(self.trainer, "tsgsv draws new training windows every epoch")
            self._window_seed = self._shared_window_seed()
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = TSGVTrainDataset(
                hp.data_root, hp.train_split, self.video_feature_file, self.language_model, hp.short_memory,
                hp.long_memory, hp.future_memory, hp.max_text_len, hp.min_frames, hp.gaussian_label,
                tuple(hp.label_widths), 1, hp.pos_expansion_ratio, hp.neg_pos_ratio, hp.preload,
            )  # fmt: skip
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = self._eval_set(hp.val_split, hp.val_fraction)
        if stage in ("test", "predict", None) and self.test_set is None:
            self.test_set = self._eval_set(hp.test_split, 1.0)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            dataset,
            batch_size=hp.batch_size if train else 1,
            shuffle=train,
            drop_last=False,
            **worker_options(hp),
            collate_fn=None if train else collate_annotations,
        )

    def _shared_window_seed(self) -> int:
        """Base seed of the per-epoch window draws, taken from rank 0 under DDP: every rank must hold the same windows
        (the distributed sampler splits one list), even when the ranks' torch seeds differ (no ``seed_everything``, or
        ``seed_everything: true`` under torchrun / SLURM), else the ranks would hold different window lists of
        different lengths and step different numbers of batches."""
        seed = 1000 * (torch.initial_seed() % 100003)
        strategy = getattr(self.trainer, "strategy", None) if self.trainer is not None else None
        return int(strategy.broadcast(seed, src=0)) if strategy is not None else seed

    def state_dict(self) -> dict:
        """Saved in checkpoints: the base seed of the window draws, so that a resumed fit (``--ckpt_path``) draws
        epoch e's windows from the first launch's seed + e, whatever global seed the relaunch has."""
        return {"window_seed": self._window_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        # runs after setup("fit") (which derived a base seed from this launch's global seed) and before the first
        # train_dataloader() call; every rank reads the same checkpoint, so the ranks still agree
        if state_dict.get("window_seed") is not None:
            self._window_seed = int(state_dict["window_seed"])

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        base = self._window_seed if self._window_seed is not None else self._shared_window_seed()
        self.train_set.rechunk(seed=base + epoch)  # new windows every epoch, the same on every rank
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)
