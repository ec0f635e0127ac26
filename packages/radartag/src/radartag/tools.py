"""Dataset tools run as subcommands: ``radartag build-ontology`` (semi-supervised tag ontology, spec §3.8) and
``radartag extract-features`` (tag text features with a transformers encoder; video features through mmzoo.video
and a torchvision image encoder, spec §9)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from mmzoo.config import check_choice
from mmzoo.data import read_json, read_torch, written_whole
from tqdm import tqdm

from .data import _find_cycle, _read_list, read_label_map, read_tag_parents

__all__ = ["pair_features", "build_ontology", "build_ontology_command", "extract_features", "extract_features_command"]

log = logging.getLogger(__name__)


def pair_features(tag_lists: list[list[int]], num_tags: int, text: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ordered pairs (a, b) that co-occur on some video, and their features (Reconstruction, spec §3.8):
    P(b|a), P(a|b), log document frequencies of a and b, log broadness (distinct co-occurring tags) of a and b, and
    the cosine of the tag text features. Returns pairs (P, 2) and features (P, 7)."""
    df = np.zeros(num_tags)
    co = np.zeros((num_tags, num_tags))
    for tags in tag_lists:
        t = np.unique(tags)
        df[t] += 1
        co[np.ix_(t, t)] += 1
    np.fill_diagonal(co, 0)
    a, b = np.nonzero(co)
    broad = (co > 0).sum(1)
    if text is not None:
        unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
        cos = (unit[a] * unit[b]).sum(1)
    else:
        cos = np.zeros(len(a))
    feats = np.stack([co[a, b] / df[a], co[a, b] / df[b], np.log1p(df[a]), np.log1p(df[b]), np.log1p(broad[a]),
                      np.log1p(broad[b]), cos], 1)  # fmt: skip
    return np.stack([a, b], 1), feats


def _break_cycles(edges: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """DAG prior: while a directed cycle exists, drop its lowest-confidence edge."""
    edges = dict(edges)
    while True:
        graph: dict[int, list[int]] = {}
        for a, b in edges:
            graph.setdefault(a, []).append(b)
        cycle = _find_cycle(graph)
        if cycle is None:
            return edges
        cyc_edges = list(zip(cycle[:-1], cycle[1:], strict=True))
        del edges[min(cyc_edges, key=lambda e: edges[e])]


def build_ontology(
    root: str | Path,
    vertical: str,
    labelled_pairs: str | Path,
    out: str | Path | None = None,
    threshold: float = 0.5,
    self_training_rounds: int = 3,
    confidence: float = 0.95,
) -> Path:
    """Build ``tag_parents_<v>.json`` semi-supervised (Reconstruction: the paper's exact features, classifier and
    thresholds are not public, spec §3.8).

    A logistic-regression classifier "a is a sub-topic of b" is trained on a few hand-labelled pairs
    (``labelled_pairs``: JSON list of ``[child, parent, 0|1]`` tag names) using :func:`pair_features` over the
    training list; it is self-trained on its confident predictions (p > ``confidence`` or < 1 − confidence) for a
    few rounds; pairs above ``threshold`` are accepted and cycles are broken by dropping their weakest edge.
    """
    from sklearn.linear_model import LogisticRegression

    root = Path(root)
    tags = read_label_map(root / f"label_map_kwai_{vertical}.txt")
    tag_id = {t: i for i, t in enumerate(tags)}
    # the loader's reader: a malformed line or a tag id outside the label map is an error naming the file and line
    lists = [ids for _, ids in _read_list(root / f"kwai_{vertical}_video_train_list.txt", len(tags)) if ids]
    text = None
    if (root / "tag_feat_bert").is_dir():
        try:
            text = np.stack([np.load(root / "tag_feat_bert" / f"{t}.npy").reshape(-1) for t in tags])
        except FileNotFoundError:
            log.warning("tag text features incomplete under %s: the cosine feature is set to 0", root / "tag_feat_bert")
    pairs, feats = pair_features(lists, len(tags), text)
    index = {(int(a), int(b)): i for i, (a, b) in enumerate(pairs)}
    labelled = read_json(labelled_pairs, "labelled pairs")
    x_l, y_l = [], []
    for entry in labelled:
        if not isinstance(entry, list) or len(entry) != 3 or entry[2] not in (0, 1):
            raise ValueError(f"{str(labelled_pairs)!r}: entry {entry!r} is not [child tag, parent tag, 0|1]")
        child, parent, label = entry
        if child not in tag_id or parent not in tag_id:
            raise KeyError(f"{str(labelled_pairs)!r}: tag {child!r} or {parent!r} is not in the label map")
        i = index.get((tag_id[child], tag_id[parent]))
        if i is not None:
            x_l.append(feats[i])
            y_l.append(int(label))
    if len(set(y_l)) < 2:
        raise ValueError(f"{str(labelled_pairs)!r}: need co-occurring labelled pairs of both classes (0 and 1)")
    x_train, y_train = np.array(x_l), np.array(y_l)
    clf = LogisticRegression(max_iter=1000)
    for _ in range(self_training_rounds):
        clf.fit(x_train, y_train)
        p = clf.predict_proba(feats)[:, 1]
        sure = (p > confidence) | (p < 1 - confidence)
        x_train = np.concatenate([np.array(x_l), feats[sure]])
        y_train = np.concatenate([np.array(y_l), (p[sure] > 0.5).astype(int)])
    clf.fit(x_train, y_train)
    p = clf.predict_proba(feats)[:, 1]
    accepted = {(int(a), int(b)): float(s) for (a, b), s in zip(pairs, p, strict=True) if s > threshold}
    accepted = _break_cycles(accepted)
    parents: dict[str, list[str]] = {}
    for a, b in sorted(accepted):
        parents.setdefault(tags[a], []).append(tags[b])
    out = Path(out) if out else root / f"tag_parents_{vertical}.json"
    with written_whole(out) as tmp:  # the graph reads this file: never half of it
        tmp.write_text(json.dumps(parents, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def build_ontology_command(argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="radartag build-ontology", description=build_ontology.__doc__)
    p.add_argument("--dataset_root", required=True)
    p.add_argument("--vertical", required=True)
    p.add_argument("--labelled_pairs", required=True, help="JSON list of [child, parent, 0|1] tag names")
    p.add_argument("--out", default=None, help="default: <dataset_root>/tag_parents_<vertical>.json")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--self_training_rounds", type=int, default=3)
    p.add_argument("--confidence", type=float, default=0.95,
                   help="self-training takes predictions with p > confidence or p < 1 - confidence as labels")  # fmt: skip
    a = p.parse_args(argv)
    return build_ontology(a.dataset_root, a.vertical, a.labelled_pairs, a.out, a.threshold, a.self_training_rounds,
                          a.confidence)  # fmt: skip


def extract_features(
    root: str | Path,
    vertical: str,
    text_encoder: str | None = None,
    pooling: Literal["mean", "cls"] = "mean",
    video_dir: str | Path | None = None,
    image_encoder: str = "resnet50",
    image_weights: str | Path | None = None,
    num_frames: int = 8,
    device: str = "cpu",
    on_corrupt: Literal["raise", "skip"] = "raise",
) -> Path:
    """Write missing feature files of a vertical (spec §9).

    * Tag text features ``tag_feat_bert/<tag>.npy`` for every tag of the label map and the ontology, from a
      transformers encoder (``text_encoder``: local folder or hub id, e.g. a Chinese BERT), ``pooling`` = mean
      (over non-padding tokens) or cls. Reconstruction: the official pooling is unknown.
    * Video features ``video_feat/<pid>.npy`` for every ``<pid>.mp4`` in ``video_dir``: ``num_frames`` frames read
      through mmzoo.video, resized/cropped to 224, ImageNet-normalised, encoded by a torchvision ``image_encoder``
      (weights from ``image_weights``, a state-dict file) with its classifier removed, mean-pooled over frames.
      Reconstruction: the official in-house extractor is not public. A video that cannot be decoded stops the run
      with an error naming it (``on_corrupt="raise"``) or is left without a feature file, with a warning
      (``"skip"``; the graphs then leave it out and count it in ``skipped_videos``).
    """
    check_choice("pooling", pooling, ("mean", "cls"))  # anything else would average the tokens
    check_choice("on_corrupt", on_corrupt, ("raise", "skip"))
    root = Path(root)
    if text_encoder:
        from transformers import AutoModel, AutoTokenizer

        names = read_label_map(root / f"label_map_kwai_{vertical}.txt")  # the data is checked before the model loads
        parents_file = root / f"tag_parents_{vertical}.json"
        if parents_file.is_file():  # names as the graph reader takes them (stripped), so the files match its tags
            for child, ps in read_tag_parents(parents_file).items():
                names += [n for n in [child, *ps] if n not in names]
        try:
            tokenizer = AutoTokenizer.from_pretrained(text_encoder)
            model = AutoModel.from_pretrained(text_encoder).to(device).eval()
        except (OSError, ValueError) as err:
            raise OSError(f"--text_encoder {text_encoder!r} could not be loaded (give a local folder or a reachable hub "
                          "id); it writes tag_feat_bert/<tag name>.npy") from err  # fmt: skip
        (root / "tag_feat_bert").mkdir(exist_ok=True)
        with torch.no_grad():
            for name in tqdm(names, desc="tag features", total=len(names)):
                enc = tokenizer(name, return_tensors="pt").to(device)
                hidden = model(**enc).last_hidden_state[0]  # (n_tokens, d)
                vec = hidden[0] if pooling == "cls" else hidden.mean(0)
                _save_npy(root / "tag_feat_bert" / f"{name}.npy", vec.float().cpu().numpy())
    if video_dir:
        import torchvision
        from mmzoo.video import VideoDecodeError, center_crop, normalize, read_video, resize_short_side

        if image_weights is None or not Path(image_weights).is_file():
            raise FileNotFoundError(f"--image_weights {image_weights!r}: a torchvision state-dict file for "
                                    f"{image_encoder!r} is needed to write video_feat/<pid>.npy")  # fmt: skip
        net = torchvision.models.get_model(image_encoder, weights=None)
        net.load_state_dict(read_torch(image_weights, "--image_weights"))
        if not hasattr(net, "fc"):
            raise ValueError(
                f"--image_encoder {image_encoder!r}: only encoders with an 'fc' head (ResNets) are supported"
            )
        net.fc = torch.nn.Identity()
        net = net.to(device).eval()
        (root / "video_feat").mkdir(exist_ok=True)
        paths = sorted(Path(video_dir).glob("*.mp4"))
        with torch.no_grad():
            for path in tqdm(paths, desc="video features", total=len(paths)):
                try:
                    frames = read_video(path, num_frames)  # (T, 3, H, W) uint8
                except VideoDecodeError as err:
                    if on_corrupt == "raise":
                        raise VideoDecodeError(
                            err.path, f"{err.reason}; pass --on_corrupt skip to leave it out"
                        ) from err
                    log.warning("skipping corrupt video %s: %s", err.path, err)
                    continue
                x = normalize(center_crop(resize_short_side(frames, 224), 224), "imagenet")
                feat = net(x.to(device)).mean(0)  # mean over frames
                _save_npy(root / "video_feat" / f"{path.stem.split('.')[0]}.npy", feat.float().cpu().numpy())
    if not text_encoder and not video_dir:
        raise ValueError("nothing to do: give --text_encoder and/or --video_dir")
    return root


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` whole or not at all: a run stopped mid-file leaves no truncated feature file."""
    with written_whole(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def extract_features_command(argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="radartag extract-features", description=extract_features.__doc__)
    p.add_argument("--dataset_root", required=True)
    p.add_argument("--vertical", required=True)
    p.add_argument("--text_encoder", default=None, help="local path or hub id of the tag-name encoder")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    p.add_argument("--video_dir", default=None, help="folder of <pid>.mp4 files")
    p.add_argument("--image_encoder", default="resnet50")
    p.add_argument("--image_weights", default=None, help="state-dict file of the torchvision encoder")
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--on_corrupt", choices=["raise", "skip"], default="raise",
                   help="a video that cannot be decoded: raise (naming it) or skip it with a warning")  # fmt: skip
    a = p.parse_args(argv)
    return extract_features(a.dataset_root, a.vertical, a.text_encoder, a.pooling, a.video_dir, a.image_encoder,
                            a.image_weights, a.num_frames, a.device, a.on_corrupt)  # fmt: skip
