import json

import h5py
import numpy as np
import pytest
import torch

from shagcl.data import (
    GQA200Dataset,
    SGGDataModule,
    SyntheticFeaturesConfig,
    VG150Dataset,
    collate_scene_graphs,
    compute_statistics,
)
from shagcl.gcl import VG150_PREDICATE_REMAP
from shagcl.testing import write_gqa200, write_vg150, zipf_quota_predicates


@pytest.fixture(scope="module")
def vg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_vg150(root, n_images=20, n_obj_classes=6, n_predicates=50, n_test=5, seed=1)
    return root


def test_vg_boxes_splits_and_remap(vg_root):
    with h5py.File(vg_root / "vg" / "VG-SGG-with-attri.h5") as f:
        split, first_rel = f["split"][:], f["img_to_first_rel"][:]
        b0, b1 = f["img_to_first_box"][0], f["img_to_last_box"][0]
        cxcywh = f["boxes_1024"][b0 : b1 + 1].astype(float)
        r0, r1 = f["img_to_first_rel"][0], f["img_to_last_rel"][0]
        raw_pairs, raw_preds = f["relationships"][r0 : r1 + 1], f["predicates"][r0 : r1 + 1, 0]
    info = json.loads((vg_root / "vg" / "image_data.json").read_text())[0]
    assert (first_rel == -1).sum() == 1  # the generator's image without relations
    val = VG150Dataset(vg_root, "val", num_val_images=3)
    train = VG150Dataset(vg_root, "train", num_val_images=3)
    test = VG150Dataset(vg_root, "test", num_val_images=3)
    assert len(val) == 3 and len(train) == int(((split == 0) & (first_rel >= 0)).sum()) - 3 and len(test) == 5
    assert val.records[0].image_id == str(info["image_id"])  # the first train images are val
    scale = max(info["width"], info["height"]) / 1024
    expected = (
        np.stack(
            [
                cxcywh[:, 0] - cxcywh[:, 2] / 2,
                cxcywh[:, 1] - cxcywh[:, 3] / 2,
                cxcywh[:, 0] + cxcywh[:, 2] / 2,
                cxcywh[:, 1] + cxcywh[:, 3] / 2,
            ],
            1,
        )
        * scale
    )
    np.testing.assert_allclose(val.records[0].boxes, expected, rtol=1e-5)
    np.testing.assert_array_equal(val.records[0].rels[:, :2], raw_pairs - b0)  # absolute -> local
    np.testing.assert_array_equal(val.records[0].rels[:, 2], np.array(VG150_PREDICATE_REMAP)[raw_preds])
    assert val.object_classes[0] == "__background__" and val.predicate_classes[1] == "on"
    assert VG150_PREDICATE_REMAP[31] == 1


def test_vg_missing_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="VG-SGG-with-attri.h5.*README, Data preparation"):
        VG150Dataset(tmp_path, "train")
    write_vg150(tmp_path, n_images=6)
    with h5py.File(tmp_path / "vg" / "VG-SGG-with-attri.h5", "a") as f:
        del f["predicates"]
    with pytest.raises(KeyError, match="predicates"):
        VG150Dataset(tmp_path, "train", predicate_order="file")
    with pytest.raises(FileNotFoundError, match="shagcl extract"):
        write_vg150(tmp_path / "b", n_images=6)
        VG150Dataset(tmp_path / "b", "train", predicate_order="file", feature_source="cached", feature_cache=None)


def test_gqa_skip_and_val_cut(tmp_path):
    write_gqa200(tmp_path, n_train=6, n_test=8)
    test = GQA200Dataset(tmp_path, "test", skip_test_entry=3)
    val = GQA200Dataset(tmp_path, "val", skip_test_entry=3, num_val_images=4)
    train = GQA200Dataset(tmp_path, "train", skip_test_entry=3)
    assert len(test) == 7 and "test2" not in [r.image_id for r in test.records]
    assert [r.image_id for r in val.records] == [r.image_id for r in test.records[:4]]
    assert len(train) == 6
    assert test.object_classes[0] == "__background__"


def test_items_collate_and_statistics(vg_root):
    ds = VG150Dataset(
        vg_root,
        "train",
        num_val_images=3,
        max_pairs=12,
        max_fg_pairs=3,
        synthetic=SyntheticFeaturesConfig(feature_dim=8),
    )
    item = ds[0]
    assert item["pair_idx"].shape[0] <= 12 and (item["pair_labels"] > 0).sum() <= 3
    assert (item["pair_idx"][:, 0] != item["pair_idx"][:, 1]).all()
    batch = collate_scene_graphs([ds[0], ds[1]])
    n0 = batch["num_objs"][0]
    assert batch["obj_feats"].shape == (sum(batch["num_objs"]), 8)
    assert (batch["pair_idx"][batch["num_pairs"][0] :] >= n0).all()  # second image's pairs offset
    test = VG150Dataset(vg_root, "test", protocol="sgcls", synthetic=SyntheticFeaturesConfig(feature_dim=8))
    it = test[0]
    n = len(it["boxes"])
    assert it["pair_idx"].shape[0] == n * (n - 1) and it["det_logits"].shape == (n, 7)
    counts, fg, trip = compute_statistics(ds.records, 7, 51)
    assert counts[1:].sum() == sum(len(r.rels) for r in ds.records)
    assert (fg[..., 0] >= 1).all() and torch.equal(fg[..., 1:], trip[..., 1:])


def test_sgdet_training_targets(tmp_path):
    write_vg150(tmp_path, n_images=8, n_obj_classes=4, n_predicates=5)
    kw = dict(
        protocol="sgdet",
        predicate_order="file",
        num_val_images=0,
        synthetic=SyntheticFeaturesConfig(feature_dim=8, box_jitter=0.01, det_logit_scale=20.0),
    )
    item = VG150Dataset(tmp_path, "train", sgdet_add_gt_boxes=False, **kw)[0]
    n = len(item["gt_labels"])
    assert len(item["boxes"]) == n and (item["labels"] == item["gt_labels"]).all()  # tiny jitter: all match
    assert (item["pair_labels"] > 0).sum() >= 1


def test_sgdet_adds_gt_boxes_to_training_proposals(tmp_path):
    """Spec §3.7: in SGDet training the GT boxes join the detections (configurable); never at test."""
    write_vg150(tmp_path, n_images=8, n_obj_classes=4, n_predicates=5, n_test=2)
    kw = dict(
        protocol="sgdet",
        predicate_order="file",
        num_val_images=0,
        synthetic=SyntheticFeaturesConfig(feature_dim=8, box_jitter=0.3, det_logit_scale=20.0),
    )
    item = VG150Dataset(tmp_path, "train", **kw)[0]
    n = len(item["gt_labels"])
    assert (
        len(item["boxes"]) == 2 * n and item["obj_feats"].shape == (2 * n, 8) and item["det_logits"].shape[0] == 2 * n
    )
    torch.testing.assert_close(item["boxes"][n:], item["gt_boxes"])
    assert (item["labels"][n:] == item["gt_labels"]).all()  # a GT box is matched to itself
    gt_pairs = {(s + n, o + n) for s, o, _ in item["gt_rels"].tolist()}
    fg = {tuple(p) for p, lab in zip(item["pair_idx"].tolist(), item["pair_labels"].tolist()) if lab > 0}
    assert gt_pairs <= fg  # every GT relation has its GT-box pair as a positive
    test = VG150Dataset(tmp_path, "test", **kw)[0]
    assert len(test["boxes"]) == len(test["gt_labels"])


def test_datamodule_generates_demo_data(tmp_path):
    dm = SGGDataModule(
        data_root=str(tmp_path),
        feature_source="synthetic",
        predicate_order="file",
        num_val_images=2,
        generate_demo_data=True,
        demo_num_images=12,
    )
    dm.setup("fit")
    stats = dm.statistics()
    assert stats.predicate_counts.shape == (11,) and len(dm.datasets["val"]) == 2


def test_quota_predicates_are_exactly_zipf_and_frequency_ordered(tmp_path):
    ids = zipf_quota_predicates(np.random.default_rng(0), 1000, 20)
    counts = np.bincount(ids, minlength=21)[1:]
    assert counts.sum() == 1000 and (np.diff(counts) <= 0).all() and counts[-1] >= 5  # 1000·20^-1.5/Σ ≈ 5.5
    write_vg150(tmp_path, n_images=60, n_test=10, n_predicates=8, predicate_counts="quota", n_val=5)
    train = VG150Dataset(tmp_path, "train", predicate_order="file", num_val_images=5)
    train_counts = np.bincount(np.concatenate([r.rels[:, 2] for r in train.records]), minlength=9)[1:]
    assert (np.diff(train_counts) <= 0).all()  # the training split itself is in frequency order (spec §3.6.1)
