"""Readers of the spec §4.2 format on generated files (spec §8b) and the digits generator of spec §8c."""

import json
import math
from functools import partial

import numpy as np
import pytest
import torch

from kevsr.data import Hierarchy, KEVSRDataModule, KEVSRDataset
from kevsr.knowledge import KnowledgeEmbeddings, extract_keywords
from kevsr.synthetic import DIGIT_WORDS, SYNONYMS, write_digits_dataset, write_kg_file, write_random_dataset


def test_kg_reader_plain_gz_uris_bare_and_npy(tmp_path):
    vecs = {"hot_pot": np.arange(4, dtype=np.float32), "cinema": np.ones(4, np.float32), "spa": np.zeros(4, np.float32)}
    for name in ("kg.txt", "kg.txt.gz"):
        write_kg_file(tmp_path / name, vecs, uri_lang="en")  # hot_pot and spa as URIs, cinema bare
        kg = KnowledgeEmbeddings.load(str(tmp_path / name), vocabulary=["Hot Pot", "cinema"], lang="en")
        assert len(kg) == 2 and kg.dim == 4 and "spa" not in kg
        torch.testing.assert_close(kg.get("hot pot"), torch.arange(4.0))
    zh = KnowledgeEmbeddings.load(str(tmp_path / "kg.txt"), vocabulary=None, lang="zh")
    assert "hot_pot" not in zh and "cinema" in zh  # /c/en/ URIs dropped, bare terms kept
    np.save(tmp_path / "emb.npy", np.stack(list(vecs.values())))
    (tmp_path / "emb.vocab.txt").write_text("\n".join(vecs))
    assert "spa" in KnowledgeEmbeddings.load(str(tmp_path / "emb.npy"))
    with pytest.raises(FileNotFoundError, match="data.kg_path"):
        KnowledgeEmbeddings.load(str(tmp_path / "missing.txt.gz"))


def test_keyword_extraction_keeps_kg_terms_ranked():
    kg = KnowledgeEmbeddings(
        {"hot_pot": torch.tensor([1.0, 0.0]), "broth": torch.tensor([0.9, 0.1]), "ticket": torch.tensor([0.0, 1.0])}, 2
    )
    kws = extract_keywords("Spicy hot pot and broth, one ticket", kg, max_keywords=2)
    assert kws == ["broth", "hot_pot"] or kws == ["hot_pot", "broth"]
    assert extract_keywords("nothing here", kg, 3) == []


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_dataset_reads_the_format(tmp_path, fmt):
    root = write_random_dataset(tmp_path / "d", tmp_path / "kg.txt.gz", feature_format=fmt, sizes=(8, 2, 2))
    h = Hierarchy.from_json(root / "hierarchy.json")
    assert h.parent_index.tolist() == [0, 0, 1, 1, 1]
    assert h.kg2[0] == "hot pot" and h.kg2[1] is None
    words = ["food", "leisure", "hot_pot", "cinema", "karaoke", "spicy", "movie", "sing", "broth", "ticket"]
    kg = KnowledgeEmbeddings.load(str(tmp_path / "kg.txt.gz"), words)
    vectors, found = h.label_vectors(kg, 2, 8)
    assert found.tolist() == [True, False, True, True, False]  # null kg and a term missing from the KG
    ds = KEVSRDataset(str(root), "train", h, kg, 8, num_regions=3, num_keywords=3, feature_format=fmt)
    item = ds[1]  # 5 keywords in the annotation → cropped to N_k = 3
    assert item["f2d"].shape == (4, 16) and item["f2d"].dtype == torch.float32  # float16 files are upcast
    assert item["regions"].shape == (4, 3, 16) and item["region_mask"].dtype == torch.bool
    assert item["keywords"].shape == (3, 8) and item["keyword_mask"].all()
    assert ds[2]["keyword_mask"].sum() == 1  # "unknown_term" is not in the KG
    vocab = kg.vocabulary()  # keyword_ids index the loaded KG terms (the table tuned by freeze_keyword_kg: false)
    for k in range(3):
        torch.testing.assert_close(kg.get(vocab[int(item["keyword_ids"][k])]), item["keywords"][k])
    assert ds[0]["keyword_mask"].any()  # no keywords in the annotation: extracted from the text
    assert item["target1"].tolist() == [1.0, 1.0] and item["target2"].tolist() == [0, 1, 1, 0, 0]
    assert ds[2]["target1"].tolist() == [0.0, 1.0] and ds[2]["target2"].sum() == 0  # level-1-only path


def test_missing_files_name_them(tmp_path):
    root = write_random_dataset(tmp_path / "d", None, sizes=(2, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")
    (root / "features" / "val.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.h5.*README, Data preparation"):
        KEVSRDataset(str(root), "val", h, None, 8, 3, 3)
    with pytest.raises(FileNotFoundError, match=r"hierarchy\.json"):
        Hierarchy.from_json(tmp_path / "nowhere" / "hierarchy.json")


def test_extract_names_missing_weights(tmp_path):
    from kevsr.cli import main

    root = write_random_dataset(tmp_path / "d", None, sizes=(2, 1, 1))
    args = [
        "extract",
        "--data-root",
        str(root),
        "--split",
        "train",
        "--videos-dir",
        str(tmp_path),
        "--resnet-weights",
        str(tmp_path / "resnet50.pth"),
        "--video-model-weights",
        "x.pth",
        "--detector-weights",
        "y.pth",
        "--bert",
        "z",
    ]
    with pytest.raises(FileNotFoundError, match="--resnet-weights"):
        main(args=args)


@pytest.mark.parametrize("level", ["level1", "level2"])
def test_hierarchy_refuses_repeated_label_names(tmp_path, level):
    data = {
        "level1": [{"name": "food"}, {"name": "leisure"}],
        "level2": [{"name": "bar", "parent": "food"}, {"name": "cinema", "parent": "leisure"}],
    }
    data[level].append(dict(data[level][0]))  # the same name twice: paths would land on the last one
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{level} names must be unique.*'(food|bar)'"):
        Hierarchy.from_json(path)


def test_hierarchy_errors_name_the_file_and_entry(tmp_path):
    """A label without a name, or a file that is not JSON, used to raise a bare KeyError('name') or a
    JSONDecodeError that named neither the file nor the entry."""
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps({"level1": [{"name": "food"}], "level2": [{"parent": "food", "kg": "bar"}]}))
    with pytest.raises(KeyError, match=r"hierarchy\.json: level2\[0\] = .*needs a string 'name'"):
        Hierarchy.from_json(path)
    path.write_text('{"level1": [{"name": "food"}],')
    with pytest.raises(ValueError, match=r"label hierarchy .*hierarchy\.json' is not valid JSON"):
        Hierarchy.from_json(path)


def _digits_videos(root) -> list[tuple[set[int], list[int], list[str]]]:
    """(positive digits, digit shown by each frame, description words) per video of a digits data set written
    with ``frame_noise = 0``: every frame's f2d is then an sklearn digit image / 16, matched back to its class
    (the 1797 images are pairwise distinct)."""
    import h5py
    from sklearn.datasets import load_digits

    digits = load_digits()
    by_image = {img.astype(np.int64).tobytes(): int(t) for img, t in zip(digits.images, digits.target)}
    assert len(by_image) == len(digits.images)
    out = []
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (root / "annotations" / f"{split}.jsonl").read_text().splitlines()]
        with h5py.File(root / "features" / f"{split}.h5", "r") as f:
            for row in rows:
                pixels = np.rint(f[row["video_id"]]["f2d"][()] * 16).astype(np.int64)  # (N_f, 64)
                frames = [by_image[p.reshape(8, 8).tobytes()] for p in pixels]
                pos = {DIGIT_WORDS.index(path[1]) for path in row["label_paths"]}
                out.append((pos, frames, row["text"].split()))
    return out


@pytest.fixture(scope="module")
def digits_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_dataset(root, root / "kg.txt.gz", seed=3, sizes=(200, 50, 50), frame_noise=0.0)
    return _digits_videos(root)


def test_digits_positive_frames_are_60_percent_in_expectation(digits_videos):
    counts = [sum(d in pos for d in frames) for pos, frames, _ in digits_videos]
    assert len(digits_videos) == 300 and all(len(frames) == 6 for _, frames, _ in digits_videos)
    share = np.mean(counts) / 6
    # spec §8c: 60% of the frames; the standard error over 300 videos is ≈ 0.005, a 4-of-6 rounding gives 0.667
    assert abs(share - 0.6) < 0.025, share
    assert set(counts) == {3, 4}  # floor(0.6 · 6) = 3, plus one more with probability 0.6
    assert all(1 <= len(pos) <= 2 for pos, _, _ in digits_videos)


def test_digits_descriptions_use_synonyms_never_the_digit_word(digits_videos):
    fillers = {"the", "a", "video", "shows"} | {f"thing{i}" for i in range(30)}
    with_synonym = 0
    for pos, _, words in digits_videos:
        assert not set(words) & set(DIGIT_WORDS), words  # the label's own KG term never appears
        synonyms = [w for w in words if w not in fillers]
        allowed = {s for d in pos for s in SYNONYMS[DIGIT_WORDS[d]]}
        assert set(synonyms) <= allowed, (pos, words)  # only the positive digits' synonyms
        assert len(words) - len(synonyms) == 4  # 4 distractor / filler words
        with_synonym += sum(any(s in words for s in SYNONYMS[DIGIT_WORDS[d]]) for d in pos)
    n_pos = sum(len(pos) for pos, _, _ in digits_videos)
    assert abs(with_synonym / n_pos - 0.7) < 0.07  # a synonym of each positive digit with probability 0.7


def test_digits_positive_frame_share_argument(tmp_path):
    for share, expected in ((0.5, {3}), (1.0, {6}), (0.05, {1})):  # 0.05 · 6 = 0.3: at least one positive frame
        root = write_digits_dataset(
            tmp_path / str(share),
            tmp_path / f"{share}.gz",
            sizes=(12, 2, 2),
            frame_noise=0.0,
            positive_frame_share=share,
        )
        assert {sum(d in pos for d in frames) for pos, frames, _ in _digits_videos(root)} == expected
    for bad in (0.0, -0.1, 1.5, math.nan, "0.6"):
        with pytest.raises(ValueError, match="positive_frame_share"):
            write_digits_dataset(tmp_path / "bad", tmp_path / "bad.gz", positive_frame_share=bad)


def test_ensure_generated_rewrites_stale_copies_and_leaves_user_data(tmp_path, monkeypatch):
    import kevsr.synthetic as synthetic

    calls = []
    real = synthetic.write_random_dataset
    monkeypatch.setattr(synthetic, "write_random_dataset", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    root, kg = tmp_path / "gen", tmp_path / "gen" / "kg.txt"
    synthetic.ensure_generated(root, kg, "random", seed=3)
    stamp = json.loads((root / synthetic.STAMP_FILE).read_text())
    assert len(calls) == 1 and stamp == {"kind": "random", "version": synthetic.RANDOM_VERSION, "seed": 3}
    synthetic.ensure_generated(root, kg, "random", seed=3)
    assert len(calls) == 1  # up to date: not written again
    synthetic.ensure_generated(root, kg, "random", seed=4)
    assert len(calls) == 2  # other arguments: written again
    monkeypatch.setattr(synthetic, "RANDOM_VERSION", synthetic.RANDOM_VERSION + 1)
    synthetic.ensure_generated(root, kg, "random", seed=4)
    assert len(calls) == 3  # a newer generator: written again, and stamped with its version
    assert json.loads((root / synthetic.STAMP_FILE).read_text())["version"] == synthetic.RANDOM_VERSION
    (root / synthetic.STAMP_FILE).unlink()  # no stamp: the user's own data, unless the caller owns the folder
    synthetic.ensure_generated(root, kg, "random", seed=5)
    assert len(calls) == 3 and not (root / synthetic.STAMP_FILE).exists()
    synthetic.ensure_generated(root, kg, "random", seed=5, owned=True)
    assert len(calls) == 4
    with pytest.raises(ValueError, match=r"data\.generate='video'"):
        synthetic.ensure_generated(root, kg, "video")


def _rewrite_train(root, edit):
    """Apply ``edit(rows)`` to annotations/train.jsonl and write it back."""
    path = root / "annotations" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in edit(rows)) + "\n")


def test_annotations_refuse_wrong_parents_repeated_ids_and_bad_json(tmp_path):
    root = write_random_dataset(tmp_path / "d", None, sizes=(4, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")  # hot pot's parent is food
    _rewrite_train(root, lambda rows: [dict(rows[0], label_paths=[["leisure", "hot pot"]]), *rows[1:]])
    with pytest.raises(ValueError, match="'hot pot' under 'leisure'.*parent in hierarchy.json is 'food'"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)
    _rewrite_train(root, lambda rows: [dict(rows[0], label_paths=[["food", "hot pot"]]), *rows[1:], rows[1]])
    with pytest.raises(ValueError, match=r"train\.jsonl:5: video_id .* already on line 2"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)
    (root / "annotations" / "train.jsonl").write_text('{"video_id": "a", "text": "x", "label_paths": []}\n{oops\n')
    with pytest.raises(ValueError, match=r"annotation file '.*train\.jsonl' line 2 is not valid JSON"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)
    # keywords as one string used to be read character by character (silently no KG keyword)
    row = {"video_id": "a", "text": "x", "label_paths": [], "keywords": "hot pot"}
    (root / "annotations" / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:1: .*'keywords' \(optional\) a list of strings"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_videos_without_features_are_found_at_setup(tmp_path, fmt):
    root = write_random_dataset(tmp_path / "d", None, feature_format=fmt, sizes=(4, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")
    _rewrite_train(root, lambda rows: [*rows, dict(rows[0], video_id="never_extracted")])  # not the first row
    source = r"features/train\.h5' \(no group" if fmt == "h5" else r"features' \(no <video_id>\.npz\)"
    with pytest.raises(KeyError, match=r"split 'train': 1 of 5 videos have no features in '.*" + source
                       + r".*never_extracted.*annotations/train\.jsonl'.*data\.missing_features: drop"):  # fmt: skip
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3, feature_format=fmt)
    with pytest.warns(UserWarning, match="dropping 1 of 5"):
        ds = KEVSRDataset(str(root), "train", h, None, 8, 3, 3, feature_format=fmt, missing_features="drop")
    assert len(ds) == 4 and len(ds.targets1) == 4 and "never_extracted" not in [r["video_id"] for r in ds.rows]
    assert all(ds[i]["video_id"] == ds.rows[i]["video_id"] for i in range(4))


def test_repeated_keywords_count_once(tmp_path):
    root = write_random_dataset(tmp_path / "d", tmp_path / "kg.txt.gz", sizes=(4, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")
    kg = KnowledgeEmbeddings.load(str(tmp_path / "kg.txt.gz"), ["hot_pot", "cinema", "broth"])
    _rewrite_train(root, lambda rows: [dict(rows[0], keywords=["Hot Pot", "hot_pot", "/c/en/hot_pot", "cinema"])])
    item = KEVSRDataset(str(root), "train", h, kg, 8, 3, 3)[0]
    assert item["keyword_mask"].tolist() == [True, True, False]  # hot_pot once, cinema; the third slot is padding
    torch.testing.assert_close(item["keywords"][1], kg.get("cinema"))


def test_kg_uris_in_labels_and_chinese_phrases(tmp_path, monkeypatch):
    import sys
    import types

    from kevsr.knowledge import candidate_terms

    write_kg_file(tmp_path / "kg.txt", {"火锅店": np.ones(4, np.float32), "hot_pot": np.zeros(4, np.float32)}, "zh")
    kg = KnowledgeEmbeddings.load(str(tmp_path / "kg.txt"), None, lang="zh")
    assert "/c/zh/火锅店" in kg  # a label's kg written as a ConceptNet URI finds its row
    fake = types.SimpleNamespace(lcut=lambda text: ["火锅", "店"], lcut_for_search=lambda text: ["火锅", "店"])
    monkeypatch.setitem(sys.modules, "jieba", fake)
    assert "火锅店" in candidate_terms("火锅店", "jieba")  # Chinese phrases have no "_" in ConceptNet
    assert "hot_pot" in candidate_terms("hot pot", "whitespace")


def test_jieba_candidates_include_the_words_inside_a_compound():
    from kevsr.knowledge import candidate_terms

    terms = candidate_terms("和朋友一起吃麻辣火锅", "jieba")  # jieba's precise mode keeps 麻辣火锅 whole
    assert {"朋友", "麻辣火锅", "麻辣", "火锅"} <= set(terms)
    assert len(terms) == len(set(terms))


def test_a_kg_that_matches_nothing_is_reported(tmp_path):
    """A KG file in another language than data.kg_lang (or the wrong file) used to leave every label on a learnable
    vector and every video without keywords, silently."""
    from kevsr.data import KEVSRDataModule

    root = write_random_dataset(tmp_path / "d", None, sizes=(4, 1, 1))
    write_kg_file(tmp_path / "other.txt", {"volcano": np.ones(8, np.float32)}, uri_lang="en")
    dm = KEVSRDataModule(str(root), str(tmp_path / "other.txt"), kg_dim=8, num_regions=3, num_keywords=3)
    with pytest.warns(UserWarning) as record:
        dm.setup("fit")
    text = " ".join(str(w.message) for w in record)
    assert "level 1: none of the 2 label KG terms" in text and "level 2: none of the" in text
    assert "with data.kg_lang='en'; every label" in text
    assert "train: no video has a keyword found in the KG" in text


def _edit_train_features(root, fmt, vid, keys, fn):
    """Replace features ``keys`` of training video ``vid`` by ``fn`` of them, in either feature format."""
    if fmt == "h5":
        import h5py

        with h5py.File(root / "features" / "train.h5", "a") as f:
            for key in keys:
                arr = f[vid][key][()]
                del f[vid][key]
                f[vid].create_dataset(key, data=fn(arr))
    else:
        path = root / "features" / f"{vid}.npz"
        with np.load(path) as z:
            arrays = dict(z)
        for key in keys:
            arrays[key] = fn(arrays[key])
        np.savez(path, **arrays)


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_inconsistent_feature_shapes_name_the_video_and_file(tmp_path, fmt):
    """A video whose f3d has fewer keyframes than f2d, or whose region_mask does not match its regions, used to
    fail later with a bare shape error (collate / concatenation / mask copy) that named neither."""

    root = write_random_dataset(tmp_path / "d", None, feature_format=fmt, sizes=(3, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")

    edit = partial(_edit_train_features, root, fmt)
    edit("train_000", ["f3d"], lambda a: a[:-1])  # 3 keyframes against f2d's 4
    edit("train_001", ["region_mask"], lambda a: a[:, :-1])  # 2 mask columns against 3 regions
    edit("train_002", ["text"], lambda a: np.stack([a, a]))  # two rows: not one video-level vector
    ds = KEVSRDataset(str(root), "train", h, None, 8, 3, 3, feature_format=fmt)
    source = "train.h5" if fmt == "h5" else None
    for vid in ("train_000", "train_001", "train_002"):
        i = [r["video_id"] for r in ds.rows].index(vid)
        where = source or f"{vid}.npz"
        with pytest.raises(ValueError, match=rf"{where}: video '{vid}' has feature shapes"):
            ds[i]
    write_random_dataset(tmp_path / "ok", None, feature_format=fmt, sizes=(3, 1, 1))
    good = KEVSRDataset(str(tmp_path / "ok"), "train", h, None, 8, 3, 3, feature_format=fmt)
    assert good[0]["f3d"].shape == (4, 8)  # consistent files still read


def test_malformed_kg_terms_ids_and_texts_name_the_file(tmp_path):
    """A non-string label ``kg`` used to fail in the KG loader with AttributeError("'int' object has no attribute
    'strip'"), a numeric video_id to be reported as a video without features, a null text to raise a bare
    TypeError in the keyword extraction; none named the file."""
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps({"level1": [{"name": "food", "kg": 5}], "level2": [{"name": "bar", "parent": "food"}]}))
    with pytest.raises(ValueError, match=r"hierarchy\.json: level1\[0\] has 'kg' = 5; a KG term"):
        Hierarchy.from_json(path)
    root = write_random_dataset(tmp_path / "d", None, sizes=(3, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")
    for key, value in (("video_id", 7), ("text", None)):
        _rewrite_train(root, lambda rows, key=key, value=value: [*rows[:2], dict(rows[2], **{key: value})])
        with pytest.raises(ValueError, match=rf"train\.jsonl:3: '{key}' must be a string, got {value}"):
            KEVSRDataset(str(root), "train", h, None, 8, 3, 3)
        _rewrite_train(root, lambda rows: [*rows[:2], dict(rows[2], video_id="train_002", text="x")])
    (root / "annotations" / "train.jsonl").write_text('["video_id", "text", "label_paths"]\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:1: not a JSON object"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)


def test_kg_values_that_are_not_numbers_name_the_file_and_line(tmp_path):
    write_kg_file(tmp_path / "kg.txt", {"a": np.ones(3, np.float32), "b": np.zeros(3, np.float32)}, uri_lang=None)
    lines = (tmp_path / "kg.txt").read_text().splitlines()
    lines[2] = "b 0.0 oops 0.0"
    (tmp_path / "kg.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"kg\.txt:3: term 'b' has a value that is not a number"):
        KnowledgeEmbeddings.load(str(tmp_path / "kg.txt"))
    assert "a" in KnowledgeEmbeddings.load(str(tmp_path / "kg.txt"), ["a"])  # the bad row is not needed
    np.save(tmp_path / "flat.npy", np.zeros(6, np.float32))
    (tmp_path / "flat.vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"flat\.npy: expected a \(terms, dim\) matrix"):
        KnowledgeEmbeddings.load(str(tmp_path / "flat.npy"))
    np.save(tmp_path / "flat.npy", np.zeros((2, 300), np.float32))
    (tmp_path / "flat.npy").write_bytes((tmp_path / "flat.npy").read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ValueError, match=r"data\.kg_path='.*flat\.npy' cannot be read as \.npy"):
        KnowledgeEmbeddings.load(str(tmp_path / "flat.npy"))


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_videos_of_other_sizes_than_the_first_are_named(tmp_path, fmt):
    """A video with another f2d width or N_f than the others used to fail only in the batch collation
    ("stack expects each tensor to be equal size"), naming neither the video nor the file."""
    from torch.utils.data import DataLoader

    root = write_random_dataset(tmp_path / "d", None, feature_format=fmt, sizes=(4, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")

    edit = partial(_edit_train_features, root, fmt)
    edit("train_002", ["f2d"], lambda a: a[:, :-1])  # 15 columns against the others' 16
    edit("train_003", ["f2d", "f3d", "regions", "region_mask"], lambda a: a[:-1])  # 3 keyframes, consistent in itself
    ds = KEVSRDataset(str(root), "train", h, None, 8, 3, 3, feature_format=fmt)
    where = "train.h5" if fmt == "h5" else "train_002.npz"
    with pytest.raises(ValueError, match=rf"{where}: video 'train_002' has {{'f2d width': 15}} but .*'train_000'"):
        next(iter(DataLoader(ds, batch_size=4)))
    where = "train.h5" if fmt == "h5" else "train_003.npz"
    fresh = KEVSRDataset(str(root), "train", h, None, 8, 3, 3, feature_format=fmt)  # row 0 never read before
    with pytest.raises(ValueError, match=rf"{where}: video 'train_003' has {{'N_f': 3}} but"):
        fresh[3]
    assert fresh[1]["f2d"].shape == (4, 16)  # videos like the first still read


def test_setup_checks_every_split_against_the_model(tmp_path):
    """Only the first split's widths were checked against model.config: a val split of other widths failed in
    the first validation step with a bare matmul shape error."""
    import h5py

    from kevsr.data import KEVSRDataModule
    from kevsr.models import KEVSRConfig
    from kevsr.module import KEVSRModule

    root = write_random_dataset(tmp_path / "d", None, sizes=(2, 2, 1))
    with h5py.File(root / "features" / "val.h5", "a") as f:
        for vid in list(f):
            arr = f[vid]["f3d"][()]
            del f[vid]["f3d"]
            f[vid].create_dataset("f3d", data=arr[:, :-1])
    dm = KEVSRDataModule(str(root), None, kg_dim=8, num_regions=3, num_keywords=3, num_workers=0)
    dm.setup("fit")
    cfg = KEVSRConfig(dim=8, f2d_dim=16, f3d_dim=8, text_dim=12, region_dim=16, kg_dim=8, num_frames=4, num_regions=3,
                      num_keywords=3, num_level1=2, num_level2=5, temporal_heads=2, region_heads=2)  # fmt: skip
    module = KEVSRModule(cfg, streams="temporal")
    module._trainer = type("Trainer", (), {"datamodule": dm})()
    with pytest.raises(ValueError, match=r"model.config.f3d_dim=8 but the val feature files have 7"):
        module.setup("fit")
    assert module.model.parent_index.tolist() == [0, 0, 1, 1, 1]  # the train split passed; the hierarchy was set


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("feature_format", "hdf5"),
        ("tokenizer", "Spacy"),
        ("missing_features", "Drop"),
        ("kg_lang", "english"),
        ("generate", "digit"),
    ],
)
def test_misspelt_reader_options_are_refused(tmp_path, key, value):
    """The reader branches on these strings (anything but "h5" read the npz folder, anything but "raise" dropped
    videos without features); a misspelt one is refused where the data module or dataset is built."""
    with pytest.raises(ValueError, match=rf"data\.{key}={value!r}: expected one of"):
        KEVSRDataModule(data_root=str(tmp_path), **{key: value})
    if key in ("feature_format", "tokenizer", "missing_features"):
        root = write_random_dataset(tmp_path / "d", None, sizes=(2, 1, 1))
        h = Hierarchy.from_json(root / "hierarchy.json")
        with pytest.raises(ValueError, match=rf"data\.{key}={value!r}: expected one of"):
            KEVSRDataset(str(root), "val", h, None, 8, 3, 3, **{key: value})


@pytest.mark.parametrize("fmt", ["h5", "npz"])
def test_non_finite_features_name_the_video_file_and_key(tmp_path, fmt):
    """float16 features that overflowed (inf) or NaN rows used to go through to a NaN loss (training) or NaN scores
    (evaluation) naming no video."""
    root = write_random_dataset(tmp_path / "d", None, feature_format=fmt, sizes=(3, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")
    _edit_train_features(root, fmt, "train_001", ["f3d"], lambda a: np.where(np.arange(a.shape[1]) == 2, np.inf, a))
    _edit_train_features(root, fmt, "train_002", ["regions"], lambda a: np.full_like(a, np.nan))
    ds = KEVSRDataset(str(root), "train", h, None, 8, 3, 3, feature_format=fmt)
    ids = [r["video_id"] for r in ds.rows]
    for vid, key in (("train_001", "f3d"), ("train_002", "regions")):
        where = "train.h5" if fmt == "h5" else f"{vid}.npz"
        with pytest.raises(ValueError, match=rf"{where}: video '{vid}' has NaN or infinite values in \['{key}'\]"):
            ds[ids.index(vid)]
    assert torch.isfinite(ds[ids.index("train_000")]["f3d"]).all()


def test_degenerate_but_legal_videos_train_and_evaluate(tmp_path):
    """One keyframe per video (N_f = 1), a video without any label, one with an empty description (no keyword) and
    no detected region, non-ASCII text, a last training batch of one video and level-2 labels with no test video:
    the losses stay finite and the metrics are those of the plain definitions (spec §5)."""
    import lightning.pytorch as pl

    from kevsr.models import KEVSRConfig
    from kevsr.module import KEVSRModule

    root = write_random_dataset(tmp_path / "d", tmp_path / "kg.txt.gz", sizes=(3, 2, 2), num_frames=1)

    def edit(rows):
        rows[0].update(label_paths=[], text="", keywords=None)  # no label, no description
        rows[1].update(text="火锅 hot pot — très épicé", keywords=None)
        return rows

    _rewrite_train(root, edit)
    _edit_train_features(root, "h5", "train_000", ["region_mask"], np.zeros_like)  # no region detected
    dm = KEVSRDataModule(str(root), str(tmp_path / "kg.txt.gz"), kg_dim=8, num_regions=3, num_keywords=3,
                         batch_size=2, eval_batch_size=1, num_workers=0)  # fmt: skip
    cfg = KEVSRConfig(dim=8, f2d_dim=16, f3d_dim=8, text_dim=12, region_dim=16, kg_dim=8, num_frames=1, num_regions=3,
                      num_keywords=3, num_level1=2, num_level2=5, temporal_heads=2, region_heads=2)  # fmt: skip
    module = KEVSRModule(cfg, streams="both")
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, dm)
    item = dm.datasets["train"][0]
    assert item["target1"].sum() == 0 and item["target2"].sum() == 0 and not item["keyword_mask"].any()
    assert dm.datasets["train"][1]["keyword_mask"].sum() == 1  # "hot pot" found in the KG, the rest not
    for key in ("train/loss", "val/f1_l2", "val/rp90_l2", "val/s2_f1_l2"):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    (metrics,) = trainer.test(module, dm, verbose=False)
    assert dm.datasets["test"].targets2.sum(0).eq(0).any()  # some level-2 label has no test video
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_a_label_outside_the_hierarchy_names_the_split_video_and_path(tmp_path):
    root = write_random_dataset(tmp_path / "d", None, sizes=(3, 1, 1))
    h = Hierarchy.from_json(root / "hierarchy.json")
    _rewrite_train(root, lambda rows: [rows[0], dict(rows[1], label_paths=[["food", "sushi"]]), rows[2]])
    with pytest.raises(KeyError, match=r"train\.jsonl, video 'train_001': label path \['food', 'sushi'\] not in hier"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)
    _rewrite_train(root, lambda rows: [rows[0], dict(rows[1], label_paths=[["drinks", None]]), rows[2]])
    with pytest.raises(KeyError, match=r"video 'train_001': label path \['drinks', None\] not in hierarchy\.json"):
        KEVSRDataset(str(root), "train", h, None, 8, 3, 3)
