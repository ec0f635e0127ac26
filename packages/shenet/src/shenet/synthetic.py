"""The digits text-video task of spec §8c, where syntax matters, and a writer of it in the official MSR-VTT format.

Each video has T = 4 frames; a frame is a 2×2 grid of 8×8 scikit-learn digits (upscaled by ``scale``). One cell
holds the *target* digit with an attribute and an action rendered by construction — adjective ``bright``/``dim``
(intensity ×1.0 / ×0.4), action ``appears`` (present in frames 2-3), ``vanishes`` (frames 0-1) or ``stays`` (all
frames) — and the other cells hold distractor digits (other digit names) with random attributes and actions.
Caption: ``"a {adj} {digit} {verb}"`` plus, with probability ``p_near``, ``" near a {distractor}"``.
The evidence sits in one cell and a subset of frames, so text-guided frame and patch selection should beat mean
pooling. Train, val and test videos use disjoint digit images (see :func:`digit_images`).
"""

from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DIGIT_NAMES",
    "ADJECTIVES",
    "ACTIONS",
    "DigitsSpec",
    "digit_images",
    "render_video",
    "make_split",
    "caption_matches",
    "oracle_recall_at_1",
    "write_msrvtt_digits",
    "write_digits_official",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ADJECTIVES = {"bright": 1.0, "dim": 0.4}
ACTIONS = {"appears": (2, 3), "vanishes": (0, 1), "stays": (0, 1, 2, 3)}
NUM_FRAMES = 4


@dataclass(frozen=True)
class DigitsSpec:
    """One video: the target (digit, adjective, action), its cell, and distractors ``(cell, digit, adj, action)``."""

    digit: int
    adj: str
    action: str
    cell: int
    distractors: tuple[tuple[int, int, str, str], ...]
    near: int | None

    @property
    def caption(self) -> str:
        text = f"a {self.adj} {DIGIT_NAMES[self.digit]} {self.action}"
        return text + (f" near a {DIGIT_NAMES[self.near]}" if self.near is not None else "")


def digit_images(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits of one split: images (N, 8, 8) in [0, 1] and labels (N,); train = images [0, 1200),
    val = [1200, 1500), test = [1500, 1797)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # declared in pyproject; only this synthetic task needs it
        raise ImportError(
            "the digits task (data.dataset: digits, data.generate_demo_data, the demo/tiny configs, repro.py) needs "
            "scikit-learn's bundled digits images: pip install scikit-learn"
        ) from err

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.long)
    sl = {"train": slice(0, 1200), "val": slice(1200, 1500), "test": slice(1500, None)}[split]
    return images[sl], labels[sl]


def render_video(
    spec: DigitsSpec, images: torch.Tensor, labels: torch.Tensor, g: torch.Generator, scale: int = 2
) -> torch.Tensor:
    """uint8 (T, 3, 16·scale, 16·scale) frames of ``spec``; digit images drawn at random from ``images``."""
    frames = torch.zeros(NUM_FRAMES, 16, 16)
    for cell, digit, adj, action in ((spec.cell, spec.digit, spec.adj, spec.action), *spec.distractors):
        pool = (labels == digit).nonzero().flatten()
        img = images[pool[int(torch.randint(len(pool), (1,), generator=g))]] * ADJECTIVES[adj]  # (8, 8)
        r, c = divmod(cell, 2)
        for t in ACTIONS[action]:
            frames[t, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = img
    frames = frames.repeat_interleave(scale, 1).repeat_interleave(scale, 2)  # (T, 16s, 16s)
    return (frames[:, None].expand(-1, 3, -1, -1) * 255).round().to(torch.uint8)  # (T, 3, 16s, 16s)


def _random_spec(g: torch.Generator, digit: int, adj: str, action: str, p_near: float) -> DigitsSpec:
    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    cells = torch.randperm(4, generator=g).tolist()
    others = [d for d in range(10) if d != digit]
    distractors = tuple((c, pick(others), pick(list(ADJECTIVES)), pick(list(ACTIONS))) for c in cells[1:])
    near = distractors[0][1] if float(torch.rand(1, generator=g)) < p_near else None
    return DigitsSpec(digit, adj, action, cells[0], distractors, near)


def make_split(split: str, num_videos: int, seed: int, p_near: float = 0.5) -> list[DigitsSpec]:
    """Video specs of one split. ``train``: random targets. ``test``/``val``: groups of 4 — a random target and three
    hard negatives differing from it in exactly one of digit, adjective, action (spec §8c)."""
    g = torch.Generator().manual_seed(seed + {"train": 0, "val": 1, "test": 2}[split])
    specs: list[DigitsSpec] = []
    adjs, acts = list(ADJECTIVES), list(ACTIONS)
    while len(specs) < num_videos:
        digit = int(torch.randint(10, (1,), generator=g))
        adj = adjs[int(torch.randint(2, (1,), generator=g))]
        action = acts[int(torch.randint(3, (1,), generator=g))]
        if split == "train":
            specs.append(_random_spec(g, digit, adj, action, p_near))
            continue
        other_digit = (digit + 1 + int(torch.randint(9, (1,), generator=g))) % 10
        other_adj = adjs[1 - adjs.index(adj)]
        other_act = [a for a in acts if a != action][int(torch.randint(2, (1,), generator=g))]
        for d, a, v in (
            (digit, adj, action),
            (other_digit, adj, action),
            (digit, other_adj, action),
            (digit, adj, other_act),
        ):
            specs.append(_random_spec(g, d, a, v, p_near))
    return specs[:num_videos]


def caption_matches(query: DigitsSpec, video: DigitsSpec, order_blind: bool = False) -> bool:
    """Whether ``video`` satisfies ``query``'s caption: some cell shows the caption's (digit, adjective, action) and,
    with a "near a {digit}" clause, some other cell shows that digit. Any cell counts — a distractor of another
    video can fit a caption exactly. ``order_blind``: ``appears`` and ``vanishes`` are not told apart (they differ
    only in frame order, which frame-order-invariant pooling — meanP and the softmax pooling of spec §3.5 — cannot
    see)."""

    def act(a: str) -> str:
        return "moves" if order_blind and a in ("appears", "vanishes") else a

    cells = [(video.cell, video.digit, video.adj, video.action), *video.distractors]
    hit = any((d, a, act(v)) == (query.digit, query.adj, act(query.action)) for _, d, a, v in cells)
    if not hit or query.near is None:
        return hit
    return any(d == query.near for _, d, _, _ in cells)  # near ≠ the caption's digit: necessarily another cell


def oracle_recall_at_1(specs: list[DigitsSpec], order_blind: bool = False) -> float:
    """Expected text→video R@1 (percent) on the gallery ``specs`` (caption i ↔ video i) of a perfect caption matcher
    that scores every video satisfying the caption equally and breaks ties at random: mean over queries of
    1 / #(matching videos). The ceiling of the §8c task's R@1 (chance: 100 / len(specs))."""
    total = 0.0
    for q in specs:
        total += 1.0 / sum(caption_matches(q, v, order_blind) for v in specs)  # ≥ 1: a video matches its caption
    return 100.0 * total / len(specs)


def write_msrvtt_digits(
    root: str | Path, num_train: int = 160, num_test: int = 40, seed: int = 0, scale: int = 2
) -> Path:
    """Write the digits task in the official MSR-VTT layout (spec §4): ``MSRVTT_data.json``,
    ``MSRVTT_train.9k.csv``, ``MSRVTT_JSFUSION_test.csv`` and ``videos/video<k>.mp4`` (4 frames at 1 fps)."""
    from mmzoo.video import write_video

    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    videos, sentences, train_ids, test_rows = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    k = 0
    for split, n in (("train", num_train), ("test", num_test)):
        images, labels = digit_images(split)
        for spec in make_split(split, n, seed):
            vid = f"video{k}"
            write_video(root / "videos" / f"{vid}.mp4", render_video(spec, images, labels, g, scale), fps=1.0)
            videos.append(
                {
                    "video_id": vid,
                    "url": "",
                    "category": 0,
                    "start time": 0.0,
                    "end time": 4.0,
                    "split": "train" if split == "train" else "test",
                    "id": k,
                }
            )
            sentences.append({"caption": spec.caption, "video_id": vid, "sen_id": k})
            if split == "train":
                train_ids.append(vid)
            else:
                test_rows.append((f"ret{k}", f"msr{k}", vid, spec.caption))
            k += 1
    (root / "MSRVTT_data.json").write_text(
        json.dumps({"info": {"source": "shenet digits"}, "videos": videos, "sentences": sentences})
    )
    with open(root / "MSRVTT_train.9k.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id"])
        w.writerows([v] for v in train_ids)
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        w.writerows(test_rows)
    return root


def write_digits_official(
    dataset: str, root: str | Path, num_train: int = 8, num_test: int = 4, seed: int = 0, scale: int = 2
) -> Path:
    """Write the digits task in the official layout of ``dataset`` (spec §4): ``msrvtt`` (see
    :func:`write_msrvtt_digits`); ``msvd`` (``raw-captions.pkl`` with two token-list captions per video,
    ``{train,val,test}_list.txt``, ``videos/<id>.avi``); ``didemo`` (``{split}_data.json`` with two descriptions per
    video, ``{split}_list.txt`` of file names, ``videos/<name>.mp4``); ``activitynet`` (``train.json``/``val_1.json``
    keyed by ``v_<id>``, ``train_ids.json``/``val_ids.json``, ``videos/<id>.mp4``). The val split lists the test
    videos."""
    from mmzoo.video import write_video

    if dataset == "msrvtt":
        return write_msrvtt_digits(root, num_train, num_test, seed, scale)
    if dataset not in ("msvd", "didemo", "activitynet"):
        raise ValueError(f"dataset must be msrvtt|msvd|didemo|activitynet, got {dataset!r}")
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    split_specs: dict[str, list[tuple[str, DigitsSpec]]] = {}
    k = 0
    for split, n in (("train", num_train), ("test", num_test)):
        images, labels = digit_images(split)
        split_specs[split] = []
        for spec in make_split(split, n, seed):
            vid = f"vid{k}"
            name = {"msvd": f"{vid}.avi", "didemo": f"{vid}.mp4", "activitynet": f"{vid}.mp4"}[dataset]
            frames = render_video(spec, images, labels, g, scale)
            write_video(root / "videos" / name, frames, fps=1.0, codec="mpeg4" if dataset == "msvd" else None)
            split_specs[split].append((vid, spec))
            k += 1
    split_specs["val"] = split_specs["test"]

    def second(spec: DigitsSpec) -> str:
        return f"the {DIGIT_NAMES[spec.digit]} is {spec.adj}"

    if dataset == "msvd":
        raw = {
            vid: [spec.caption.split(), second(spec).split()] for items in split_specs.values() for vid, spec in items
        }
        with open(root / "raw-captions.pkl", "wb") as f:
            pickle.dump(raw, f)
        for split, items in split_specs.items():
            (root / f"{split}_list.txt").write_text("".join(f"{vid}\n" for vid, _ in items))
    elif dataset == "didemo":
        for split, items in split_specs.items():
            rows = [
                {"video": f"{vid}.mp4", "times": [[j, j]], "description": text, "annotation_id": 2 * i + j}
                for i, (vid, spec) in enumerate(items)
                for j, text in enumerate((spec.caption, second(spec)))
            ]
            (root / f"{split}_data.json").write_text(json.dumps(rows))
            (root / f"{split}_list.txt").write_text("".join(f"{vid}.mp4\n" for vid, _ in items))
    else:
        for split, ann, ids in (("train", "train.json", "train_ids.json"), ("val", "val_1.json", "val_ids.json")):
            data = {
                f"v_{vid}": {
                    "duration": float(NUM_FRAMES),
                    "timestamps": [[0.0, 2.0], [2.0, float(NUM_FRAMES)]],
                    "sentences": [spec.caption + ".", " " + second(spec) + "."],
                }
                for vid, spec in split_specs[split]
            }
            (root / ann).write_text(json.dumps(data))
            (root / ids).write_text(json.dumps(list(data)))
    return root
