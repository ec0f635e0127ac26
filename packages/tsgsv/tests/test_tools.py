import json

import h5py
import numpy as np
import pytest

from tsgsv.cli import main
from tsgsv.data import TSGVEvalDataset
from tsgsv.synthetic import SyntheticStreamConfig, write_synthetic_dataset, write_synthetic_mad_raw


def test_convert_mad_round_trip(tmp_path):
    raw = write_synthetic_mad_raw(tmp_path / "raw", num_movies=2, dim=8)
    out = main(args=["convert-mad", "--annotations", str(raw / "annotations"), "--features", str(raw / "features"),
                     "--out", str(tmp_path / "mad")])  # fmt: skip
    data = json.loads((out / "test.json").read_text())
    assert set(data) == {"test0", "test1"}
    with h5py.File(raw / "features" / "CLIP_frames_features_5fps.h5") as f:
        assert data["test0"]["duration_frame"] == f["test0"].shape[0]
    ds = TSGVEvalDataset(out, "test", "CLIP_frames_features_5fps_{split}.hdf5", "CLIP")
    assert len(ds) == 4 and ds[0]["video"].shape[1] == 8


def test_extract_text_features_with_tiny_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "event",
        "of",
        "class",
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
    ]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "bert" / "vocab.txt")).save_pretrained(tmp_path / "bert")
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16)  # fmt: skip
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    root = write_synthetic_dataset(tmp_path / "ds", SyntheticStreamConfig((2, 1, 1), 2, (80, 90), (2, 2), (10, 20)))
    out = main(args=["extract-text-features", "--data_root", str(root), "--split", "val", "--text_encoder",
                     str(tmp_path / "bert")])  # fmt: skip
    with h5py.File(out) as f:
        keys = [k for k in f if k != "Integrity"]
        assert len(keys) == 2
        arr = np.asarray(f[keys[0]])
        assert arr.shape == (6, 8)  # [CLS] event of class k [SEP]
    out.unlink()
    calls = []

    def stop_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    forward = transformers.BertModel.forward
    transformers.BertModel.forward = stop_at_the_second
    try:
        with pytest.raises(KeyboardInterrupt):
            main(args=["extract-text-features", "--data_root", str(root), "--split", "val", "--text_encoder",
                       str(tmp_path / "bert")])  # fmt: skip
    finally:
        transformers.BertModel.forward = forward
    assert len(calls) == 2 and not out.exists()  # no file with one sentence of two
    assert [p.name for p in out.parent.iterdir() if "partial" in p.name] == []  # and no temporary


def test_extract_text_features_missing_model(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", SyntheticStreamConfig((1, 1, 1), 1, (80, 90), (2, 2), (10, 20)))
    with pytest.raises(OSError, match="text_encoder"):
        main(args=["extract-text-features", "--data_root", str(root), "--split", "val", "--text_encoder",
                   str(tmp_path / "no_such_model")])  # fmt: skip


def test_convert_mad_refuses_two_durations_for_one_movie(tmp_path):
    raw = write_synthetic_mad_raw(tmp_path / "raw", num_movies=1, dim=8)
    path = raw / "annotations" / "MAD_train.json"
    anns = json.loads(path.read_text())
    first = next(iter(anns))
    anns[first]["movie_duration"] += 1.0
    path.write_text(json.dumps(anns))
    with pytest.raises(ValueError, match="several movie_duration"):
        main(args=["convert-mad", "--annotations", str(raw / "annotations"), "--features", str(raw / "features"),
                   "--out", str(tmp_path / "mad")])  # fmt: skip
    assert list((tmp_path / "mad" / "feature").iterdir()) == []  # no file holding the movies before the fault


def test_convert_mad_names_a_feature_file_cut_short(tmp_path):
    raw = write_synthetic_mad_raw(tmp_path / "raw", num_movies=1, dim=8)
    frames = raw / "features" / "CLIP_frames_features_5fps.h5"
    frames.write_bytes(frames.read_bytes()[:3000])
    with pytest.raises(OSError, match=r"MAD file '.*CLIP_frames_features_5fps\.h5' cannot be read as HDF5"):
        main(args=["convert-mad", "--annotations", str(raw / "annotations"), "--features", str(raw / "features"),
                   "--out", str(tmp_path / "mad")])  # fmt: skip


def test_extract_text_features_refuses_an_anno_id_with_two_sentences(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "val.json").write_text(json.dumps({
        "v0": {"duration": 10.0, "duration_frame": 80, "timestamps": [[1, 2]], "sentences": ["a"], "anno_ids": ["q"]},
        "v1": {"duration": 10.0, "duration_frame": 80, "timestamps": [[1, 2]], "sentences": ["b"], "anno_ids": ["q"]},
    }))  # fmt: skip
    with pytest.raises(ValueError, match="anno_id 'q' names two different sentences"):
        main(args=["extract-text-features", "--data_root", str(root), "--split", "val", "--text_encoder",
                   str(tmp_path / "no_such_model")])  # fmt: skip


def test_convert_mad_names_the_file_and_annotation_of_a_missing_key(tmp_path):
    raw = write_synthetic_mad_raw(tmp_path / "raw", num_movies=1, dim=8)
    path = raw / "annotations" / "MAD_val.json"
    anns = json.loads(path.read_text())
    first = next(iter(anns))
    del anns[first]["ext_timestamps"]
    path.write_text(json.dumps(anns))
    with pytest.raises(KeyError, match=rf"MAD_val\.json.*{first}.*ext_timestamps"):
        main(args=["convert-mad", "--annotations", str(raw / "annotations"), "--features", str(raw / "features"),
                   "--out", str(tmp_path / "mad")])  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "error", "message"),
    [
        ({"duration": 10.0, "sentences": ["a"]}, KeyError, r"lacks key\(s\) \['anno_ids'\]"),
        ({"duration": 10.0, "anno_ids": ["q"]}, KeyError, r"lacks key\(s\) \['sentences'\]"),
        ({"sentences": ["a", "b"], "anno_ids": ["q"]}, ValueError, "lists of equal length"),
        (["a", "q"], ValueError, "is list, not an object"),
    ],
    ids=["no_anno_ids", "no_sentences", "lengths_differ", "not_an_object"],
)
def test_extract_text_features_names_the_file_and_video_of_a_malformed_entry(tmp_path, entry, error, message):
    root = tmp_path / "ds"
    root.mkdir()
    good = {"duration": 10.0, "duration_frame": 80, "timestamps": [[1, 2]], "sentences": ["a"], "anno_ids": ["q0"]}
    (root / "val.json").write_text(json.dumps({"v0": good, "v1": entry}))
    with pytest.raises(error, match=rf"val\.json'?: video 'v1'.*{message}"):
        main(args=["extract-text-features", "--data_root", str(root), "--split", "val", "--text_encoder",
                   str(tmp_path / "no_such_model")])  # fmt: skip


def test_extract_text_features_of_empty_non_ascii_and_overlong_sentences(tmp_path):
    """An empty sentence gives [CLS] [SEP], a non-ASCII one unknown-word tokens, and one longer than BERT's position
    table (here 16) is cut to it instead of failing in the embedding lookup."""
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "event"]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(tmp_path / "bert" / "vocab.txt")).save_pretrained(tmp_path / "bert")
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16)  # fmt: skip
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    root = tmp_path / "ds"
    root.mkdir()
    sentences = {"empty": "", "unicode": "café 火锅 🎬", "long": " ".join(["event"] * 40)}
    ann = {"v0": {"duration": 10.0, "duration_frame": 80, "timestamps": [[1, 2]] * 3,
                  "sentences": list(sentences.values()), "anno_ids": list(sentences)}}  # fmt: skip
    (root / "val.json").write_text(json.dumps(ann))
    out = main(args=["extract-text-features", "--data_root", str(root), "--split", "val", "--text_encoder",
                     str(tmp_path / "bert")])  # fmt: skip
    with h5py.File(out) as f:
        assert f["empty"].shape == (2, 8) and f["long"].shape == (16, 8)
        assert 3 <= f["unicode"].shape[0] <= 16
        assert all(np.isfinite(f[k][()]).all() for k in sentences)
