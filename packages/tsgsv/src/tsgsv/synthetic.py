"""Synthetic streaming-grounding data written in the official layout (spec §8b, §8c).

The task (spec §8c): K event classes with unit "onset" prototypes o_k, one shared "ongoing activity" prototype a
and a background prototype b. A video holds several non-overlapping events of distinct classes; the first
``onset_frames`` frames of an event are o_k + noise, the rest a + noise, background b + noise. A query is a few
token vectors: the class word w_k at a random position, other tokens random filler words. Deep inside an event
the frames are class-agnostic, so deciding relevance needs the onset seen long before (beyond the short memory).

Also :func:`write_synthetic_mad_raw` writes the raw MAD release format (for ``tsgsv convert-mad`` tests).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mmzoo.config import check_range

__all__ = ["SyntheticStreamConfig", "synthetic_prototypes", "write_synthetic_dataset", "write_synthetic_mad_raw"]


@dataclass
class SyntheticStreamConfig:
    """Generator settings (defaults: the spec §8c task)."""

    videos_per_split: tuple[int, int, int] = (100, 25, 25)
    """Videos of train / val / test."""
    queries_per_video: int = 3
    """Queries per video (each about a different event of the video)."""
    frames: tuple[int, int] = (120, 200)
    """Range of N (feature rows) per video, inclusive."""
    events: tuple[int, int] = (3, 5)
    """Events per video, inclusive."""
    event_length: tuple[int, int] = (20, 50)
    """Event length in frames, inclusive."""
    onset_frames: int = 2
    """Frames of an event showing its class-specific onset prototype."""
    num_classes: int = 8
    """K event classes."""
    video_dim: int = 32
    text_dim: int = 32
    noise: float = 0.3
    """σ of the Gaussian frame noise."""
    tokens: tuple[int, int] = (6, 6)
    """Range of tokens per query, inclusive (vary below/above 20 to test padding and truncation)."""
    num_filler_words: int = 50
    seconds_per_frame: float = 0.5
    video_feature_file: str = "synthetic_features_{split}.hdf5"
    language_model: str = "bert-base-uncased"
    seed: int = 0
    world_seed: int = 1234
    """Seed of the prototypes and word vectors (shared by all splits and by different sample seeds)."""
    combined_splits: tuple[str, ...] = ()
    """Also write sentence features for these unions of splits, named as the official files: ``train&val``
    (TACoS trains on train + val) holds every anno_id of ``train.json`` and ``val.json``. Does not change the data
    drawn."""
    write_events: bool = False
    """Also write ``events_<split>.json`` ({video: [[first_frame, end_frame, class], ...]}, every event of the video;
    not part of the official layout) for oracle analyses (``repro.py --oracle``). Does not change the data drawn."""

    def __post_init__(self) -> None:
        if len(self.videos_per_split) != 3:
            raise ValueError(f"data.demo.videos_per_split={list(self.videos_per_split)}: expected train, val, test")
        for i, n in enumerate(self.videos_per_split):
            check_range(f"data.demo.videos_per_split[{i}]", n, ge=0, integer=True)
        for key in ("queries_per_video", "num_classes", "video_dim", "text_dim", "num_filler_words"):
            check_range(f"data.demo.{key}", getattr(self, key), ge=1, integer=True)
        check_range("data.demo.onset_frames", self.onset_frames, ge=0, integer=True)
        check_range("data.demo.noise", self.noise, ge=0)
        check_range("data.demo.seconds_per_frame", self.seconds_per_frame, gt=0)
        # inclusive [low, high] ranges; a video needs 2 frames (stamps divide by N − 1), and the events of a video
        # have distinct classes
        for key, least, most in (
            ("frames", 2, None),
            ("events", 1, self.num_classes),
            ("event_length", 1, None),
            ("tokens", 1, None),
        ):
            bounds = getattr(self, key)
            if len(bounds) != 2:
                raise ValueError(f"data.demo.{key}={list(bounds)}: expected [low, high]")
            for i, b in enumerate(bounds):
                check_range(f"data.demo.{key}[{i}]", b, ge=least, integer=True)
            if bounds[0] > bounds[1]:
                raise ValueError(f"data.demo.{key}={list(bounds)}: low must not exceed high")
            if most is not None and bounds[1] > most:
                raise ValueError(
                    f"data.demo.{key}={list(bounds)}: at most data.demo.num_classes={most} (one class per event)"
                )


def frame_stamp(frame: int, num_frames: int, duration: float) -> float:
    """Seconds of frame ``frame`` such that the official conversion ⌊τ/D·(N−1)⌋ (spec §5) gives ``frame`` back.

    ``frame/(N−1)·D`` alone can land one ulp below the frame (e.g. 3.9999999999999996 → 3); the stamp is moved up
    to the next float until the conversion is exact."""
    stamp = frame / (num_frames - 1) * duration
    while math.floor(stamp / duration * (num_frames - 1)) < frame:
        stamp = math.nextafter(stamp, math.inf)
    return stamp


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_prototypes(cfg: SyntheticStreamConfig) -> dict[str, np.ndarray]:
    """The world of ``cfg.world_seed``: onset prototypes o_k (K, d_v), ``activity`` a and ``background`` b (d_v,),
    class words w_k (K, d_s) and filler words (n_filler, d_s), all unit vectors."""
    world = np.random.default_rng(cfg.world_seed)
    onset = _unit(world, cfg.num_classes, cfg.video_dim)
    activity, background = _unit(world, 2, cfg.video_dim)
    class_words = _unit(world, cfg.num_classes, cfg.text_dim)
    filler = _unit(world, cfg.num_filler_words, cfg.text_dim)
    return {"onset": onset, "activity": activity, "background": background, "class_words": class_words,
            "filler": filler}  # fmt: skip


def write_synthetic_dataset(root: str | Path, cfg: SyntheticStreamConfig | None = None) -> Path:
    """Write ``train.json``/``val.json``/``test.json`` and the HDF5 feature files under ``root``."""
    import h5py

    cfg = cfg or SyntheticStreamConfig()
    root = Path(root)
    (root / "feature").mkdir(parents=True, exist_ok=True)
    world = synthetic_prototypes(cfg)
    onset, activity, background = world["onset"], world["activity"], world["background"]  # o_k, a, b
    class_words, filler = world["class_words"], world["filler"]  # w_k, filler words
    rng = np.random.default_rng(cfg.seed)
    # a video feature file name without {split} is one file for every split (TACoS: tall_c3d_features.hdf5)
    shared_video_file = "{split}" not in cfg.video_feature_file
    text_by_split: dict[str, dict[str, np.ndarray]] = {}
    for split, num_videos in zip(("train", "val", "test"), cfg.videos_per_split, strict=True):
        annotations, video_feats, text_feats, all_events = {}, {}, {}, {}
        for v in range(num_videos):
            n = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
            k = int(rng.integers(cfg.events[0], cfg.events[1] + 1))
            lengths = rng.integers(cfg.event_length[0], cfg.event_length[1] + 1, size=k)
            while lengths.sum() > n and k > 1:
                k -= 1
                lengths = lengths[:k]
            free = n - int(lengths.sum())
            cuts = np.sort(rng.integers(0, free + 1, size=k))
            gaps = np.diff(np.concatenate([[0], cuts]))
            classes = rng.choice(cfg.num_classes, size=k, replace=False)
            feats = background + cfg.noise * rng.standard_normal((n, cfg.video_dim))
            events, pos = [], 0
            for gap, length, c in zip(gaps, lengths, classes, strict=True):
                start = pos + int(gap)
                feats[start : start + length] = activity + cfg.noise * rng.standard_normal((length, cfg.video_dim))
                onset_len = min(cfg.onset_frames, int(length))
                feats[start : start + onset_len] = onset[c] + cfg.noise * rng.standard_normal(
                    (onset_len, cfg.video_dim)
                )
                events.append((start, start + int(length), int(c)))
                pos = start + int(length)
            name = f"{split}_video_{v:04d}"
            video_feats[name] = feats.astype(np.float32)
            all_events[name] = [list(e) for e in events]
            duration = n * cfg.seconds_per_frame
            chosen = rng.choice(len(events), size=min(cfg.queries_per_video, len(events)), replace=False)
            stamps, sentences, ids = [], [], []
            for q, e in enumerate(chosen):
                start, end, c = events[e]
                # frame index -> seconds such that ⌊τ/D·(N−1)⌋ recovers the frame index
                stamps.append([frame_stamp(start, n, duration), frame_stamp(end - 1, n, duration)])
                sentences.append(f"event of class {c}")
                aid = f"{name}_q{q}"
                ids.append(aid)
                n_tok = int(rng.integers(cfg.tokens[0], cfg.tokens[1] + 1))
                toks = filler[rng.integers(0, cfg.num_filler_words, size=n_tok)]
                toks[int(rng.integers(0, min(n_tok, 20)))] = class_words[c]
                text_feats[aid] = (toks + 0.05 * rng.standard_normal(toks.shape)).astype(np.float32)
            annotations[name] = {
                "duration": duration, "duration_frame": n, "timestamps": stamps, "sentences": sentences,
                "anno_ids": ids,
            }  # fmt: skip
        with open(root / f"{split}.json", "w") as f:
            json.dump(annotations, f)
        if cfg.write_events:
            with open(root / f"events_{split}.json", "w") as f:
                json.dump(all_events, f)
        mode = "a" if shared_video_file and split != "train" else "w"
        with h5py.File(root / "feature" / cfg.video_feature_file.format(split=split), mode) as f:
            for name, arr in video_feats.items():
                f.create_dataset(name, data=arr)
        _write_sentence_file(root, cfg.language_model, split, text_feats)
        text_by_split[split] = text_feats
    for combined in cfg.combined_splits:
        parts = combined.split("&")
        unknown = [p for p in parts if p not in text_by_split]
        if unknown:
            raise ValueError(f"data.demo.combined_splits: {combined!r} names unknown splits {unknown}")
        _write_sentence_file(
            root, cfg.language_model, combined, {k: v for p in parts for k, v in text_by_split[p].items()}
        )
    return root


def _write_sentence_file(root: Path, language_model: str, split: str, text_feats: dict[str, np.ndarray]) -> None:
    """``feature/<language_model>_language_tokens_features_<split>.hdf5``: one dataset per anno_id and the
    ``Integrity`` flag the official code writes."""
    import h5py

    with h5py.File(root / "feature" / f"{language_model}_language_tokens_features_{split}.hdf5", "w") as f:
        for aid, arr in text_feats.items():
            f.create_dataset(aid, data=arr)
        f.create_dataset("Integrity", data=np.ones(1))


def write_synthetic_mad_raw(root: str | Path, num_movies: int = 3, dim: int = 16, seed: int = 0) -> Path:
    """Write the raw MAD release format: ``annotations/MAD_{train,val,test}.json`` (key -> movie, sentence,
    ext_timestamps, movie_duration), ``features/CLIP_frames_features_5fps.h5`` (movie -> [N, dim]) and
    ``features/CLIP_language_tokens_features.h5`` (key -> [n_tokens, dim])."""
    import h5py

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "features").mkdir(parents=True, exist_ok=True)
    frames, tokens = {}, {}
    for split_index, split in enumerate(("train", "val", "test")):
        anns = {}
        for m in range(num_movies):
            movie = f"{split}{m}"
            n = int(rng.integers(100, 160))
            frames[movie] = rng.standard_normal((n, dim)).astype(np.float32)
            for q in range(2):
                key = f"{split_index}{m}{q}"
                s = float(rng.uniform(0, n / 5 - 5))
                anns[key] = {"movie": movie, "sentence": f"sentence {key}", "ext_timestamps": [s, s + 4.0],
                             "movie_duration": n / 5}  # fmt: skip
                tokens[key] = rng.standard_normal((int(rng.integers(3, 25)), dim)).astype(np.float32)
        with open(root / "annotations" / f"MAD_{split}.json", "w") as f:
            json.dump(anns, f)
    with h5py.File(root / "features" / "CLIP_frames_features_5fps.h5", "w") as f:
        for k, v in frames.items():
            f.create_dataset(k, data=v)
    with h5py.File(root / "features" / "CLIP_language_tokens_features.h5", "w") as f:
        for k, v in tokens.items():
            f.create_dataset(k, data=v)
    return root
