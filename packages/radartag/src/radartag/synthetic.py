"""A synthetic vertical in the official Kwai file format with behaviour spread (spec §8b, §8c).

Users have favourite leaf tags; they follow others, mostly users sharing a favourite (homophily); a video carries
one of its uploader's favourites and, with probability ``imitation``, one or two tags copied from a random
followee's video (imitation spreads along the follow network). Video features are a random linear map of the mean
tag vector plus strong noise, so the video's own feature is only moderately informative while the followees'
videos carry tag signal. ``video_children`` links every video of a followee to every video of the follower.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from mmzoo.config import check_range
from mmzoo.data import ensure_generated

__all__ = [
    "SyntheticKwaiConfig",
    "ensure_synthetic_vertical",
    "pad_label_map",
    "random_graph",
    "stamp_path",
    "write_synthetic_vertical",
]


@dataclass
class SyntheticKwaiConfig:
    """Generator settings (defaults: the spec §8c task)."""

    num_users: int = 300
    favourites: int = 2
    """Favourite leaf tags per user."""
    num_parents: int = 8
    leaves_per_parent: int = 5
    follows: int = 6
    """Followees per user."""
    homophily: float = 0.7
    """Fraction of followees chosen among users sharing a favourite tag."""
    videos_per_user: int = 4
    imitation: float = 0.6
    """Probability that a video copies one or two tags of a random followee's video."""
    feature_dim: int = 32
    noise: float = 2.0
    """σ of the video feature noise. Fixed once (2.0, never changed afterwards) so that the spec §8c premise holds:
    the followee vote must beat a linear probe on the video's own feature. At σ = 2.0 it does (test sample mAP over
    seeds 0–2: vote 0.526, probe 0.326; ``repro.py`` checks and records it, README Reproduction). At σ = 1.0 the probe
    on the own feature is about as good as the vote, so the follow edges leave little to learn. ``demo.yaml`` uses
    2.0 too: the demo runs on the §8c task (seed 0)."""
    tag_noise: float = 0.3
    """Leaf-specific noise around its parent's prototype in the tag text features."""
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0

    def __post_init__(self) -> None:
        for key, least in (("num_users", 1), ("favourites", 1), ("num_parents", 2), ("leaves_per_parent", 1),
                           ("follows", 0), ("videos_per_user", 1), ("feature_dim", 1)):  # fmt: skip
            check_range(f"data.demo.{key}", getattr(self, key), ge=least, integer=True)
        for key in ("homophily", "imitation"):  # probabilities
            check_range(f"data.demo.{key}", getattr(self, key), ge=0, le=1)
        for key in ("noise", "tag_noise"):  # standard deviations
            check_range(f"data.demo.{key}", getattr(self, key), ge=0)
        if len(self.split) != 3:
            raise ValueError(f"data.demo.split={list(self.split)}: expected three fractions (train, val, test)")
        for i, fraction in enumerate(self.split):
            check_range(f"data.demo.split[{i}]", fraction, ge=0, le=1)
        if self.imitation > 0 and self.follows < 1:  # an imitated video is drawn from a followee
            raise ValueError(
                f"data.demo.imitation={self.imitation} needs data.demo.follows >= 1 (got {self.follows}): "
                "imitated tags come from followees"
            )
        leaves = self.num_parents * self.leaves_per_parent
        if self.favourites > leaves:  # drawn without replacement among the leaf tags
            raise ValueError(
                f"data.demo.favourites={self.favourites} exceeds the leaf tags, data.demo.num_parents={self.num_parents}"
                f" × data.demo.leaves_per_parent={self.leaves_per_parent} = {leaves}"
            )


def write_synthetic_vertical(root: str | Path, vertical: str, cfg: SyntheticKwaiConfig | None = None) -> Path:
    """Write ``label_map_kwai_<v>.txt``, the three split lists, ``tag_parents_<v>.json``,
    ``video_children_<v>.json``, ``video_feat/<pid>.npy`` and ``tag_feat_bert/<tag>.npy`` under ``root``.

    Format corner cases covered: list lines with and without the ``.mp4`` suffix, one parent absent from the label
    map (an extra tag node), one leaf with two parents, a non-ASCII tag name, follow children outside every split.
    """
    cfg = cfg or SyntheticKwaiConfig()
    rng = np.random.default_rng(cfg.seed)
    root = Path(root)
    (root / "video_feat").mkdir(parents=True, exist_ok=True)
    (root / "tag_feat_bert").mkdir(parents=True, exist_ok=True)
    d = cfg.feature_dim
    parents = [f"parent_{j}" for j in range(cfg.num_parents)]
    parents[0] = "美妆_0"  # non-ASCII tag name
    leaves = [f"leaf_{j}_{i}" for j in range(cfg.num_parents) for i in range(cfg.leaves_per_parent)]
    leaf_parent = [j for j in range(cfg.num_parents) for _ in range(cfg.leaves_per_parent)]
    label_map = leaves + parents[:-1]  # the last parent is only in the ontology -> an extra tag node
    proto = rng.standard_normal((cfg.num_parents, d))
    leaf_vec = proto[leaf_parent] + cfg.tag_noise * rng.standard_normal((len(leaves), d))
    tag_vec = {**{n: leaf_vec[i] for i, n in enumerate(leaves)}, **{n: proto[j] for j, n in enumerate(parents)}}
    tag_parents = {leaf: [parents[leaf_parent[i]]] for i, leaf in enumerate(leaves)}
    tag_parents[leaves[0]].append(parents[1])  # one tag with two parents
    num_leaves = len(leaves)
    fav = np.stack([rng.choice(num_leaves, cfg.favourites, replace=False) for _ in range(cfg.num_users)])
    if cfg.follows > cfg.num_users - 1:  # the draw below could never pick enough distinct followees
        raise ValueError(
            f"data.demo.follows={cfg.follows} needs data.demo.num_users > {cfg.follows} (got {cfg.num_users})"
        )
    followees = []
    for u in range(cfg.num_users):
        similar = [v for v in range(cfg.num_users) if v != u and set(fav[v]) & set(fav[u])]
        others = [v for v in range(cfg.num_users) if v != u]
        if cfg.homophily >= 1 and len(similar) < cfg.follows:  # every draw from `similar`: it could never end
            raise ValueError(
                f"data.demo.homophily={cfg.homophily}: user {u} shares a favourite tag with only {len(similar)} "
                f"users, fewer than data.demo.follows={cfg.follows}; lower homophily below 1 or follows"
            )
        chosen: set[int] = set()
        while len(chosen) < cfg.follows:
            pool = similar if similar and rng.random() < cfg.homophily else others
            chosen.add(int(rng.choice(pool)))
        followees.append(sorted(chosen))
    pid_of = {}
    base_tag = {}
    for u in range(cfg.num_users):
        for k in range(cfg.videos_per_user):
            pid = 10_000 + u * 100 + k
            pid_of[(u, k)] = pid
            base_tag[pid] = int(rng.choice(fav[u]))
    video_tags = {}
    for (u, _k), pid in pid_of.items():
        tags = {base_tag[pid]}
        if rng.random() < cfg.imitation:
            f = int(rng.choice(followees[u]))
            for _ in range(int(rng.integers(1, 3))):
                tags.add(base_tag[pid_of[(f, int(rng.integers(cfg.videos_per_user)))]])
        video_tags[pid] = sorted(tags)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    for pid, tags in video_tags.items():
        mean = leaf_vec[tags].mean(0)
        np.save(
            root / "video_feat" / f"{pid}.npy", (mix @ mean + cfg.noise * rng.standard_normal(d)).astype(np.float32)
        )
    for name, vec in tag_vec.items():
        np.save(root / "tag_feat_bert" / f"{name}.npy", (vec + 0.01 * rng.standard_normal(d)).astype(np.float32))
    children: dict[str, list[int]] = {}
    for u in range(cfg.num_users):
        for f in followees[u]:
            for kf in range(cfg.videos_per_user):
                kids = children.setdefault(str(pid_of[(f, kf)]), [])
                kids += [pid_of[(u, k)] for k in range(cfg.videos_per_user)]
    children.setdefault(str(pid_of[(0, 0)]), []).append(999_999)  # a child outside every split: dropped by the loader
    pids = rng.permutation(list(video_tags))
    n_train, n_val = int(cfg.split[0] * len(pids)), int(cfg.split[1] * len(pids))
    splits = {"train": pids[:n_train], "val": pids[n_train : n_train + n_val], "test": pids[n_train + n_val :]}
    (root / f"label_map_kwai_{vertical}.txt").write_text("\n".join(label_map) + "\n", encoding="utf-8")
    for split, ids in splits.items():
        lines = [
            (f"{p}.mp4" if i % 2 == 0 else f"{p}") + "".join(f"\t{t}" for t in video_tags[int(p)])
            for i, p in enumerate(ids)
        ]
        (root / f"kwai_{vertical}_video_{split}_list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / f"tag_parents_{vertical}.json").write_text(json.dumps(tag_parents, ensure_ascii=False), encoding="utf-8")
    (root / f"video_children_{vertical}.json").write_text(json.dumps(children))
    return root


def pad_label_map(root: str | Path, vertical: str, num_tags: int, seed: int = 0) -> int:
    """Append tags no video carries (``rare_<i>``, each with its ``tag_feat_bert/<tag>.npy``) to the label map of
    a vertical written by :func:`write_synthetic_vertical` until it has ``num_tags`` tag nodes (label map plus the
    ontology tags absent from it), as a real vertical's tag count; returns the number of tags added."""
    root = Path(root)
    label_map_path = root / f"label_map_kwai_{vertical}.txt"
    names = label_map_path.read_text(encoding="utf-8").splitlines()
    ontology = json.loads((root / f"tag_parents_{vertical}.json").read_text(encoding="utf-8"))
    extra = {p for parents in ontology.values() for p in parents} - set(names)
    missing = num_tags - len(names) - len(extra)
    if missing < 0:
        raise ValueError(f"the vertical already has {len(names) + len(extra)} tags, more than {num_tags}")
    dim = np.load(root / "tag_feat_bert" / f"{names[0]}.npy").shape[0]
    rng = np.random.default_rng(seed)
    added = [f"rare_{i}" for i in range(missing)]
    for name in added:
        np.save(root / "tag_feat_bert" / f"{name}.npy", rng.standard_normal(dim).astype(np.float32))
    label_map_path.write_text("\n".join(names + added) + "\n", encoding="utf-8")
    return missing


def stamp_path(root: str | Path, vertical: str) -> Path:
    """``<root>/synthetic_kwai_<v>.json``: the generator settings a synthetic vertical was written with."""
    return Path(root) / f"synthetic_kwai_{vertical}.json"


def ensure_synthetic_vertical(root: str | Path, vertical: str, cfg: SyntheticKwaiConfig | None = None) -> bool:
    """Write the synthetic vertical unless ``root`` already holds it with these settings; True when written
    (:func:`mmzoo.data.ensure_generated`, stamp :func:`stamp_path`).

    A copy stamped with other settings (e.g. the demo's ``data.demo`` changed) is written again: every list and
    JSON file is rewritten, so the cached split graphs see new inputs and are rebuilt. A vertical without the stamp
    is the user's own data (or a copy written before stamps existed) and is left alone, with a warning."""
    cfg = cfg or SyntheticKwaiConfig()
    root = Path(root)
    return ensure_generated(
        root / f"label_map_kwai_{vertical}.txt",
        stamp_path(root, vertical),
        asdict(cfg),
        lambda: write_synthetic_vertical(root, vertical, cfg),
        "synthetic generator",
    )


def random_graph(num_videos: int, num_tags: int, dim: int, follows_per_video: int, seed: int = 0):
    """An in-memory heterogeneous graph of random structure for scale checks (benchmark, sampler tests): videos
    with 4 random tags each, ``follows_per_video``·N random follow edges, and a tag ontology whose parents are the
    first tenth of the tags. Every video is a training video. Returns a ``HeteroData``."""
    import torch
    from torch_geometric.data import HeteroData

    from radartag.models import FOLLOWED_BY, HAS_TAG, SUBTOPIC

    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data["video"].x = torch.randn(num_videos, dim, generator=g)
    data["video"].num_train = num_videos
    data["tag"].x = torch.randn(num_tags, dim, generator=g)
    tags = torch.randint(0, num_tags, (num_videos, 4), generator=g)
    data["video"].label_ptr = torch.arange(0, 4 * num_videos + 1, 4)
    data["video"].label_col = tags.reshape(-1)
    data[HAS_TAG].edge_index = torch.stack([torch.arange(num_videos).repeat_interleave(4), tags.reshape(-1)])
    data[FOLLOWED_BY].edge_index = torch.randint(0, num_videos, (2, num_videos * follows_per_video), generator=g)
    parents = torch.randint(0, max(num_tags // 10, 1), (num_tags,), generator=g)
    data[SUBTOPIC].edge_index = torch.stack([torch.arange(num_tags), parents])
    return data
