"""Readers of the spec §4.2 format on generated files (spec §8b)."""

import numpy as np
import pytest
import torch

from kevsr.data import Hierarchy, KEVSRDataset
from kevsr.knowledge import KnowledgeEmbeddings, extract_keywords
from kevsr.synthetic import write_kg_file, write_random_dataset


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
    import json

    data = {
        "level1": [{"name": "food"}, {"name": "leisure"}],
        "level2": [{"name": "bar", "parent": "food"}, {"name": "cinema", "parent": "leisure"}],
    }
    data[level].append(dict(data[level][0]))  # the same name twice: paths would land on the last one
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{level} names must be unique.*'(food|bar)'"):
        Hierarchy.from_json(path)
