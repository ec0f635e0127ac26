"""Writers of data sets in exactly the spec §4.2 format: a small random one with every edge case (spec §8b,
tests and ``tiny.yaml``) and the digits-based one of the "does it work" experiment (spec §8c, demo and repro)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Literal

import numpy as np
from mmzoo.data import ensure_generated as ensure_generated_data

__all__ = [
    "write_kg_file",
    "write_features",
    "write_random_dataset",
    "write_digits_dataset",
    "ensure_generated",
    "DIGITS_VERSION",
]


def write_kg_file(path: str | Path, vectors: dict[str, np.ndarray], uri_lang: str | None = "en") -> Path:
    """Numberbatch word2vec text (``.gz`` → gzipped). Terms alternate between ``/c/<lang>/`` URIs and bare terms
    when ``uri_lang`` is set, so readers are exercised on both."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dim = len(next(iter(vectors.values())))
    lines = [f"{len(vectors)} {dim}"]
    for i, (term, vec) in enumerate(vectors.items()):
        name = f"/c/{uri_lang}/{term}" if uri_lang and i % 2 == 0 else term
        lines.append(name + " " + " ".join(f"{v:.5f}" for v in vec))
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_features(root: Path, split: str, items: dict[str, dict[str, np.ndarray]], fmt: str = "h5") -> None:
    """features/<split>.h5 (one group per video) or features/<video_id>.npz with keys f2d, f3d, text, regions,
    region_mask (and optional region_boxes)."""
    folder = root / "features"
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "h5":
        import h5py

        with h5py.File(folder / f"{split}.h5", "w") as f:
            for vid, arrays in items.items():
                g = f.create_group(vid)
                for key, arr in arrays.items():
                    g.create_dataset(key, data=arr)
    else:
        for vid, arrays in items.items():
            np.savez(folder / f"{vid}.npz", **arrays)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_random_dataset(
    root: str | Path,
    kg_path: str | Path | None,
    seed: int = 0,
    sizes: tuple[int, int, int] = (24, 8, 8),
    num_frames: int = 4,
    max_regions: int = 3,
    dims: tuple[int, int, int, int] = (16, 8, 12, 16),
    kg_dim: int = 8,
    feature_format: str = "h5",
) -> Path:
    """Spec §8b: hierarchy 2 level-1 × (2 + 3) level-2 labels (one with ``kg: null``, one missing from the KG),
    multi-path labels, a level-1-only path, a video without keywords, one with more keywords than N_k,
    variable valid regions, float16 and float32 features, a KG file with URIs and bare terms."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    level1 = [{"name": "food", "kg": "food"}, {"name": "leisure", "kg": "leisure"}]
    level2 = [
        {"name": "hot pot", "parent": "food"},  # no "kg" key: the loader tries "hot_pot"
        {"name": "noodles", "parent": "food", "kg": None},  # explicit null: learnable vector
        {"name": "cinema", "parent": "leisure", "kg": "cinema"},
        {"name": "karaoke", "parent": "leisure", "kg": "karaoke"},
        {"name": "spa", "parent": "leisure", "kg": "massage_spa"},  # not in the KG
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "hierarchy.json").write_text(json.dumps({"level1": level1, "level2": level2}, indent=1))
    words = ["food", "leisure", "hot_pot", "cinema", "karaoke", "spicy", "movie", "sing", "broth", "ticket"]
    if kg_path is not None:
        write_kg_file(kg_path, {w: rng.standard_normal(kg_dim).astype(np.float32) for w in words})
    paths = [
        [["food", "hot pot"]],
        [["food", "noodles"], ["leisure", "cinema"]],
        [["leisure", None]],
        [["leisure", "karaoke"]],
        [["leisure", "spa"]],
    ]
    d2, d3, dt, dr = dims
    for split, n in zip(("train", "val", "test"), sizes):
        rows, items = [], {}
        for i in range(n):
            vid = f"{split}_{i:03d}"
            row = {"video_id": vid, "text": "spicy hot pot broth with friends", "label_paths": paths[i % len(paths)]}
            if i % 4 == 1:
                row["keywords"] = ["movie", "ticket", "sing", "spicy", "broth"]  # more than N_k = 3
            elif i % 4 == 2:
                row["keywords"] = ["unknown_term", "cinema"]  # one not in the KG
            # i % 4 in (0, 3): no "keywords" key → extracted from the text
            rows.append(row)
            dtype = np.float16 if i % 2 else np.float32
            n_valid = rng.integers(0, max_regions + 1, size=num_frames)
            mask = (np.arange(max_regions)[None] < n_valid[:, None]).astype(np.uint8)  # (T, R)
            items[vid] = {
                "f2d": rng.standard_normal((num_frames, d2)).astype(dtype),
                "f3d": rng.standard_normal((num_frames, d3)).astype(dtype),
                "text": rng.standard_normal(dt).astype(dtype),
                "regions": rng.standard_normal((num_frames, max_regions, dr)).astype(dtype),
                "region_mask": mask,
                "region_boxes": rng.uniform(0, 64, (num_frames, max_regions, 4)).astype(np.float32),
            }
        _write_jsonl(root / "annotations" / f"{split}.jsonl", rows)
        write_features(root, split, items, feature_format)
    return root


DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SYNONYMS = {
    "zero": ["nought", "nil"],
    "one": ["single", "ace"],
    "two": ["pair", "couple"],
    "three": ["trio", "triple"],
    "four": ["quartet", "tetrad"],
    "five": ["quintet", "pentad"],
    "six": ["sextet", "hexad"],
    "seven": ["septet", "heptad"],
    "eight": ["octet", "octad"],
    "nine": ["nonet", "ennead"],
}
LEVEL1 = {"low": [0, 1, 2, 3], "mid": [4, 5, 6], "high": [7, 8, 9]}
# Version of write_digits_dataset's output: raised whenever the same arguments give different files, so that
# callers caching a generated copy (repro.py) regenerate it. 2: synonyms only in the descriptions, positive-frame
# share 60% in expectation (1: the digit word itself could be drawn; round(0.6 N_f) positive frames).
DIGITS_VERSION = 2
RANDOM_VERSION = 1  # the same for write_random_dataset


def write_digits_dataset(
    root: str | Path,
    kg_path: str | Path,
    seed: int = 0,
    sizes: tuple[int, int, int] = (800, 200, 300),
    num_frames: int = 6,
    kg_dim: int = 32,
    text_dim: int = 32,
    frame_noise: float = 0.3,
    temporal_noise: float = 0.0,
    never_positive_in_train: tuple[int, ...] = (),
    feature_format: str = "h5",
    positive_frame_share: float = 0.6,
) -> Path:
    """Spec §8c: synthetic "videos" of sklearn digits with a digit-word KG (see the spec for the recipe).

    Level 1 = low (0–3) / mid (4–6) / high (7–9); level 2 = the ten digit words. Each video has 1–2 positive
    digits; a share ``positive_frame_share`` (spec: 60%) of its N_f frames show a positive digit, the rest a
    distractor digit (one that is not positive for the video). f2d = noisy 64-d pixels, f3d = mean of
    neighbouring frames' pixels, regions = 4 quadrants + the whole frame (64-d, N_r = 5), text = random
    projection of the description's bag of words: for each positive digit, with p = 0.7, one of its two
    synonyms (never the digit word itself, which is the label's KG term), plus 4 words drawn from the 30
    distractor terms and the filler words "the a video shows". Keywords are left to the extraction routine.
    ``temporal_noise`` adds noise to the temporal inputs (f2d, f3d) only; ``never_positive_in_train`` removes
    videos with those digits from train.

    Number of positive frames per video: with s = ``positive_frame_share`` · N_f, it is floor(s), plus one
    more with probability frac(s), so the share is exactly ``positive_frame_share`` in expectation (N_f = 6:
    3 or 4 frames, mean 3.6) instead of being rounded to the same count for every video (round(3.6) = 4 of 6
    = 67%). A video keeps at least one positive frame, which raises the expected share above
    ``positive_frame_share`` only when s < 1 (small N_f or share). The KG, the text projection and the split
    of the digit images depend only on ``seed``, as before; the per-video draws include one extra uniform
    number for the rounding.
    """
    if not (isinstance(positive_frame_share, (int, float)) and 0.0 < positive_frame_share <= 1.0):
        raise ValueError(f"positive_frame_share must be a number in (0, 1], got {positive_frame_share!r}")
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    hierarchy = {
        "level1": [{"name": n, "kg": n} for n in LEVEL1],
        "level2": [
            {"name": w, "parent": next(k for k, v in LEVEL1.items() if d in v), "kg": w}
            for d, w in enumerate(DIGIT_WORDS)
        ],
    }
    (root / "hierarchy.json").write_text(json.dumps(hierarchy, indent=1))
    parents = {k: rng.standard_normal(kg_dim) for k in LEVEL1}
    vectors: dict[str, np.ndarray] = {k: v.astype(np.float32) for k, v in parents.items()}
    for d, w in enumerate(DIGIT_WORDS):
        parent = next(k for k, v in LEVEL1.items() if d in v)
        offset = rng.standard_normal(kg_dim) * 0.8
        for term in [w, *SYNONYMS[w]]:
            vectors[term] = (parents[parent] + offset + 0.1 * rng.standard_normal(kg_dim)).astype(np.float32)
    distractors = [f"thing{i}" for i in range(30)]
    for term in distractors:
        vectors[term] = rng.standard_normal(kg_dim).astype(np.float32)
    write_kg_file(kg_path, vectors)
    vocab = sorted(vectors) + ["the", "a", "video", "shows"]
    projection = rng.standard_normal((len(vocab), text_dim)).astype(np.float32) / np.sqrt(8)

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8)
    pools = {d: rng.permutation(np.flatnonzero(digits.target == d)) for d in range(10)}
    split_pool = {}
    for d, idx in pools.items():  # disjoint images per split: 60% / 15% / 25%
        a, b = int(0.6 * len(idx)), int(0.75 * len(idx))
        split_pool[("train", d)], split_pool[("val", d)], split_pool[("test", d)] = idx[:a], idx[a:b], idx[b:]

    def frame_regions(img: np.ndarray) -> np.ndarray:
        quads = [img[:4, :4], img[:4, 4:], img[4:, :4], img[4:, 4:]]
        out = np.zeros((5, 64), np.float32)
        for m, q in enumerate(quads):
            out[m, :16] = q.ravel()
        out[4] = img.ravel()
        return out  # (5, 64)

    for split, n in zip(("train", "val", "test"), sizes):
        rows, items = [], {}
        allowed = [d for d in range(10) if not (split == "train" and d in never_positive_in_train)]
        for i in range(n):
            vid = f"{split}_{i:04d}"
            k = int(rng.integers(1, 3))
            pos = [int(x) for x in rng.choice(allowed, size=k, replace=False)]
            neg = [d for d in range(10) if d not in pos]
            share = positive_frame_share * num_frames
            n_pos = int(np.floor(share)) + int(rng.random() < share - np.floor(share))
            n_pos = min(max(n_pos, 1), num_frames)
            frame_digits = [int(rng.choice(pos)) for _ in range(n_pos)]
            frame_digits += [int(rng.choice(neg)) for _ in range(num_frames - n_pos)]
            frame_digits = [frame_digits[j] for j in rng.permutation(num_frames)]
            frames = np.stack([images[int(rng.choice(split_pool[(split, d)]))] for d in frame_digits])  # (T, 8, 8)
            frames = frames + frame_noise * rng.standard_normal(frames.shape).astype(np.float32)
            pixels = frames.reshape(num_frames, 64)
            f3d = np.stack([pixels[max(j - 1, 0) : j + 2].mean(0) for j in range(num_frames)])
            f2d = pixels + temporal_noise * rng.standard_normal(pixels.shape)
            f3d = f3d + temporal_noise * rng.standard_normal(f3d.shape)
            words = [str(rng.choice(SYNONYMS[DIGIT_WORDS[d]])) for d in pos if rng.random() < 0.7]
            words += [str(w) for w in rng.choice(distractors + ["the", "a", "video", "shows"], size=4)]
            words = [words[j] for j in rng.permutation(len(words))]
            bag = np.zeros(len(vocab), np.float32)
            for w in words:
                bag[vocab.index(w)] += 1
            rows.append(
                {
                    "video_id": vid,
                    "text": " ".join(words),
                    "label_paths": [
                        [next(k for k, v in LEVEL1.items() if d in v), DIGIT_WORDS[d]] for d in sorted(pos)
                    ],
                }
            )
            items[vid] = {
                "f2d": f2d.astype(np.float32),
                "f3d": f3d.astype(np.float32),
                "text": bag @ projection,
                "regions": np.stack([frame_regions(f) for f in frames]),  # (T, 5, 64)
                "region_mask": np.ones((num_frames, 5), np.uint8),
            }
        _write_jsonl(root / "annotations" / f"{split}.jsonl", rows)
        write_features(root, split, items, feature_format)
    return root


STAMP_FILE = "generator.json"


def ensure_generated(
    root: str | Path,
    kg_path: str | Path | None,
    kind: Literal["digits", "random"],
    seed: int = 0,
    owned: bool = False,
    **kwargs,
) -> Path:
    """Write a synthetic data set (``digits``: spec §8c, ``random``: spec §8b) into ``root`` unless an up-to-date
    copy is there, and stamp it (``generator.json``: kind, generator version, seed, arguments).

    A stamped copy made by another generator version or with other arguments is written again (same file names,
    overwritten), so a cached copy never silently outlives a change of the generator. A folder that has
    ``hierarchy.json`` but no stamp is the user's own data (or a copy older than the stamps) and is left alone,
    unless ``owned`` says that ``root`` belongs to the caller (a script's cache), which then rewrites it.
    """
    root = Path(root)
    if kind not in ("digits", "random"):
        raise ValueError(f"data.generate={kind!r}: use digits or random")
    version = DIGITS_VERSION if kind == "digits" else RANDOM_VERSION
    writer = write_digits_dataset if kind == "digits" else write_random_dataset
    ensure_generated_data(
        root / "hierarchy.json",
        root / STAMP_FILE,
        {"kind": kind, "version": version, "seed": seed, **kwargs},
        lambda: writer(root, kg_path, seed=seed, **kwargs),
        f"synthetic {kind} generator",
        owned=owned,
    )
    return root
