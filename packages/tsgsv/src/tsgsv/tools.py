"""Dataset tools run as subcommands: ``tsgsv extract-text-features`` (BERT token features, spec §4.2) and
``tsgsv convert-mad`` (MAD release -> the official per-split layout, spec §4.2)."""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from mmzoo.data import read_json, written_whole
from mmzoo.features import open_h5
from tqdm import tqdm

__all__ = ["extract_text_features", "extract_text_features_command", "convert_mad", "convert_mad_command"]

log = logging.getLogger(__name__)


def _check_sentences(path: Path, video: str, item: object) -> None:
    """Refuse an annotation entry without list-valued ``anno_ids`` and ``sentences`` of equal length, naming the file
    and the video (a bare KeyError('anno_ids') would name neither)."""
    if not isinstance(item, dict):
        raise ValueError(f"{str(path)!r}: video {video!r} is {type(item).__name__}, not an object with keys "
                         f"'sentences' and 'anno_ids'; see README, Data preparation")  # fmt: skip
    missing = [k for k in ("anno_ids", "sentences") if k not in item]
    if missing:
        raise KeyError(f"{str(path)!r}: video {video!r} lacks key(s) {missing}; see README, Data preparation")
    ids, sentences = item["anno_ids"], item["sentences"]
    if not isinstance(ids, list) or not isinstance(sentences, list) or len(ids) != len(sentences):
        raise ValueError(f"{str(path)!r}: video {video!r}: 'anno_ids' and 'sentences' must be lists of equal length "
                         f"(got {ids!r} and {sentences!r}); see README, Data preparation")  # fmt: skip


def extract_text_features(
    data_root: str | Path, split: str, text_encoder: str, language_model: str = "bert-base-uncased",
    device: str = "cpu",
) -> Path:  # fmt: skip
    """Write ``feature/<language_model>_language_tokens_features_<split>.hdf5`` for every anno_id of the split:
    the second-to-last hidden layer (``hidden_states[-2]``) of BERT over the tokenized sentence with special
    tokens, (n_tokens, 768) per annotation (official generation, spec §4.2).

    ``text_encoder`` is a local folder or hub id of a BERT checkpoint (``bert-base-uncased`` in the paper).

    Raises:
        FileNotFoundError: a missing ``<split>.json``.
        KeyError / ValueError: an entry of it without ``anno_ids`` or ``sentences`` (or with lists of different
            lengths), or an anno_id used for two sentences; the message names the file and the video.
        OSError: ``text_encoder`` cannot be loaded.
    """
    import h5py
    import torch
    from transformers import AutoModel, AutoTokenizer

    root = Path(data_root)
    sentences: dict[str, str] = {}
    for s in split.split("&"):
        path = root / f"{s}.json"
        if not path.is_file():
            raise FileNotFoundError(f"annotation file {str(path)!r} does not exist; see README, Data preparation")
        for video, item in read_json(path, "annotation file").items():
            _check_sentences(path, video, item)
            for anno_id, sentence in zip(map(str, item["anno_ids"]), item["sentences"], strict=True):
                if sentences.get(anno_id, sentence) != sentence:  # one HDF5 dataset per id: the first would be lost
                    raise ValueError(
                        f"anno_id {anno_id!r} names two different sentences ({sentences[anno_id]!r}, {sentence!r}); "
                        "make the anno_ids of the split unique"
                    )
                sentences[anno_id] = sentence
    try:
        tokenizer = AutoTokenizer.from_pretrained(text_encoder)
        model = AutoModel.from_pretrained(text_encoder).to(device).eval()
    except (OSError, ValueError) as err:
        raise OSError(
            f"--text_encoder {text_encoder!r} could not be loaded (give a local folder or a reachable hub id of a BERT "
            f"checkpoint, e.g. bert-base-uncased); it is needed to write "
            f"feature/{language_model}_language_tokens_features_{split}.hdf5"
        ) from err
    out = root / "feature" / f"{language_model}_language_tokens_features_{split}.hdf5"
    with written_whole(out) as tmp, h5py.File(tmp, "w") as f, torch.no_grad():  # whole or absent
        for anno_id, sentence in tqdm(sentences.items(), desc="text features", total=len(sentences)):
            # a sentence longer than BERT's position table (a paragraph pasted as a query) would fail in the embedding
            # lookup; the loader keeps the first data.max_text_len tokens anyway
            enc = tokenizer(sentence, return_tensors="pt", add_special_tokens=True, truncation=True,
                            max_length=model.config.max_position_embeddings).to(device)  # fmt: skip
            hidden = model(**enc, output_hidden_states=True).hidden_states[-2][0]  # (n_tokens, 768)
            f.create_dataset(anno_id, data=hidden.float().cpu().numpy())
        f.create_dataset("Integrity", data=np.ones(1))
    return out


def extract_text_features_command(argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="tsgsv extract-text-features", description=extract_text_features.__doc__)
    p.add_argument("--data_root", required=True, help="dataset folder holding <split>.json and feature/")
    p.add_argument("--split", required=True, help="train, val, test or train&val")
    p.add_argument("--text_encoder", default="bert-base-uncased", help="local path or hub id of the BERT model")
    p.add_argument("--language_model", default="bert-base-uncased", help="file-name prefix of the output")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    return extract_text_features(a.data_root, a.split, a.text_encoder, a.language_model, a.device)


_MAD_KEYS = ("movie", "sentence", "ext_timestamps", "movie_duration")


def convert_mad(annotations: str | Path, features: str | Path, out: str | Path) -> Path:
    """Convert the MAD release into the official layout (spec §4.2).

    Reads ``<annotations>/MAD_{train,val,test}.json`` ({key: {movie, sentence, ext_timestamps, movie_duration}}),
    ``<features>/CLIP_frames_features_5fps.h5`` (movie -> [N, 512]) and
    ``<features>/CLIP_language_tokens_features.h5`` (key -> [n_tokens, 512]); writes ``<out>/{split}.json``,
    ``<out>/feature/CLIP_frames_features_5fps_{split}.hdf5`` and
    ``<out>/feature/CLIP_language_tokens_features_{split}.hdf5``.
    """
    import h5py

    annotations, features, out = Path(annotations), Path(features), Path(out)
    frames_path = features / "CLIP_frames_features_5fps.h5"
    tokens_path = features / "CLIP_language_tokens_features.h5"
    for p in (frames_path, tokens_path):
        if not p.is_file():
            raise FileNotFoundError(f"MAD file {str(p)!r} does not exist; see README, Data preparation (MAD)")
    (out / "feature").mkdir(parents=True, exist_ok=True)
    with open_h5(frames_path, "MAD file") as frames, open_h5(tokens_path, "MAD file") as tokens:
        for split in ("train", "val", "test"):
            ann_path = annotations / f"MAD_{split}.json"
            if not ann_path.is_file():
                raise FileNotFoundError(f"MAD file {str(ann_path)!r} does not exist; see README, Data preparation")
            by_movie: dict[str, list[tuple[str, dict]]] = defaultdict(list)
            for key, a in read_json(ann_path, "annotation file").items():
                missing = [k for k in _MAD_KEYS if not isinstance(a, dict) or k not in a]
                if missing:  # a bare KeyError('movie') would name neither the file nor the annotation
                    raise KeyError(f"{str(ann_path)!r}: annotation {key!r} lacks key(s) {missing}; a MAD annotation "
                                   f"holds {list(_MAD_KEYS)}")  # fmt: skip
                by_movie[a["movie"]].append((str(key), a))
            layout = {}
            with (  # each file whole or absent: a conversion stopped part-way leaves none of the split's
                written_whole(out / "feature" / f"CLIP_frames_features_5fps_{split}.hdf5") as v_tmp,
                written_whole(out / "feature" / f"CLIP_language_tokens_features_{split}.hdf5") as t_tmp,
                h5py.File(v_tmp, "w") as vf,
                h5py.File(t_tmp, "w") as tf,
            ):
                for movie, items in tqdm(by_movie.items(), desc=f"MAD {split}", total=len(by_movie)):
                    durations = {float(a["movie_duration"]) for _, a in items}
                    if len(durations) != 1:  # one duration per movie scales every timestamp of it
                        raise ValueError(f"{str(ann_path)!r}: movie {movie!r} has several movie_duration values "
                                         f"{sorted(durations)}")  # fmt: skip
                    if movie not in frames:
                        raise KeyError(f"{str(frames_path)!r}: no features for movie {movie!r}")
                    arr = np.asarray(frames[movie], dtype=np.float32)
                    vf.create_dataset(movie, data=arr)
                    for key, _ in items:
                        if key not in tokens:
                            raise KeyError(f"{str(tokens_path)!r}: no token features for annotation {key!r}")
                        tf.create_dataset(key, data=np.asarray(tokens[key], dtype=np.float32))
                    layout[movie] = {
                        "duration": float(items[0][1]["movie_duration"]),
                        "duration_frame": int(arr.shape[0]),
                        "timestamps": [list(map(float, a["ext_timestamps"])) for _, a in items],
                        "sentences": [a["sentence"] for _, a in items],
                        "anno_ids": [k for k, _ in items],
                    }
            with written_whole(out / f"{split}.json") as tmp:
                tmp.write_text(json.dumps(layout))
    return out


def convert_mad_command(argv: list[str]) -> Path:
    p = argparse.ArgumentParser(prog="tsgsv convert-mad", description=convert_mad.__doc__)
    p.add_argument("--annotations", required=True, help="folder holding MAD_{train,val,test}.json")
    p.add_argument("--features", required=True, help="folder holding the two MAD CLIP .h5 files")
    p.add_argument("--out", required=True, help="output dataset folder (data.data_root of the mad config)")
    a = p.parse_args(argv)
    return convert_mad(a.annotations, a.features, a.out)
