import json
import re

import h5py
import numpy as np
import pytest
import torch

from shagcl.data import (
    GQA200Dataset,
    SceneRecord,
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


def test_malformed_json_names_the_file(tmp_path):
    write_vg150(tmp_path, n_images=6)
    (tmp_path / "vg" / "image_data.json").write_text('[{"image_id": 1,}]')
    with pytest.raises(ValueError, match=r"VG image metadata .*image_data\.json' is not valid JSON"):
        VG150Dataset(tmp_path, "train", predicate_order="file")
    write_gqa200(tmp_path, n_train=2, n_test=2)
    (tmp_path / "gqa" / "GQA_200_Train.json").write_text("{")
    with pytest.raises(ValueError, match=r"GQA200 split .*GQA_200_Train\.json' is not valid JSON"):
        GQA200Dataset(tmp_path, "train")


def test_annotations_outside_their_image_or_vocabulary_are_refused_naming_file_and_image(tmp_path):
    """A relation pointing at another image's box (VG: absolute rows outside the image's range; GQA: a negative
    local index) or a predicate 0 would otherwise wrap silently to a wrong box or become background."""
    write_vg150(tmp_path, n_images=6, n_test=2)
    h5 = tmp_path / "vg" / "VG-SGG-with-attri.h5"
    with h5py.File(h5, "r") as f:
        image_ids = [d["image_id"] for d in json.loads((tmp_path / "vg" / "image_data.json").read_text())]
        i = int(np.nonzero((f["split"][:] == 0) & (f["img_to_first_rel"][:] >= 0))[0][0])
        r0, b1 = int(f["img_to_first_rel"][i]), int(f["img_to_last_box"][i])
    with h5py.File(h5, "a") as f:
        f["relationships"][r0, 1] = b1 + 1  # the first box of the next image
    with pytest.raises(ValueError, match=rf"VG-SGG-with-attri.h5: image {image_ids[i]}: relation box indices"):
        VG150Dataset(tmp_path, "train", predicate_order="file", num_val_images=0)
    with h5py.File(h5, "a") as f:
        f["relationships"][r0, 1] = int(f["img_to_first_box"][i])
        f["predicates"][r0, 0] = 0
    with pytest.raises(ValueError, match=rf"image {image_ids[i]}: predicates 0\.\."):
        VG150Dataset(tmp_path, "train", predicate_order="file", num_val_images=0)

    write_gqa200(tmp_path, n_train=3, n_test=2)
    path = tmp_path / "gqa" / "GQA_200_Train.json"
    data = json.loads(path.read_text())
    data["relationships_all"][1][0][1] = -1
    path.write_text(json.dumps(data))
    name = data["filenames_all"][1]
    with pytest.raises(ValueError, match=rf"GQA_200_Train.json: image {name}: relation box indices -1\.\."):
        GQA200Dataset(tmp_path, "train")


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


def test_sgdet_training_keeps_one_predicate_per_gt_pair(tmp_path):
    """Spec §3.7/§4.1 (official get_groundtruth + detect_relsample): the SGDet sampler reads the relation map,
    which holds one predicate per ordered GT pair (a random one of its duplicates), so a proposal pair is never
    a positive twice with two different predicates."""
    write_vg150(tmp_path, n_images=8, n_obj_classes=4, n_predicates=5)
    ds = VG150Dataset(
        tmp_path,
        "train",
        protocol="sgdet",
        predicate_order="file",
        num_val_images=0,
        sgdet_add_gt_boxes=False,
        synthetic=SyntheticFeaturesConfig(feature_dim=8, box_jitter=0.0, det_logit_scale=20.0),
    )
    rec = ds.records[0]
    s, o = int(rec.rels[0, 0]), int(rec.rels[0, 1])
    rec.rels = np.array([[s, o, 1], [s, o, 2]])  # the same ordered pair annotated with two predicates
    seen = set()
    for epoch in range(20):
        ds.epoch_seed = epoch
        item = ds[0]
        fg = [(tuple(p), lab) for p, lab in zip(item["pair_idx"].tolist(), item["pair_labels"].tolist()) if lab > 0]
        assert len(fg) == 1 and fg[0][0] == (s, o)  # unjittered detections: one matched proposal pair
        seen.add(fg[0][1])
    assert seen == {1, 2}  # either duplicate can be the one kept


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


def test_an_empty_split_names_the_counts_that_emptied_it(tmp_path):
    common = dict(feature_source="synthetic", predicate_order="file", generate_demo_data=True)
    dm = SGGDataModule(data_root=str(tmp_path / "vg"), num_val_images=100, demo_num_images=12, **common)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"train split of vg150 .* no usable image; .*data\.num_val_images=100 \(taken"
                                         r" from train\)"):  # fmt: skip
        dm.train_dataloader()
    dm = SGGDataModule(data_root=str(tmp_path / "gqa"), dataset="gqa200", demo_num_images=3, **common)
    dm.setup("test")
    with pytest.raises(ValueError, match=r"test split of gqa200 .* generated with data\.demo_num_images=3"):
        dm.test_dataloader()


def test_quota_predicates_are_exactly_zipf_and_frequency_ordered(tmp_path):
    ids = zipf_quota_predicates(np.random.default_rng(0), 1000, 20)
    counts = np.bincount(ids, minlength=21)[1:]
    assert counts.sum() == 1000 and (np.diff(counts) <= 0).all() and counts[-1] >= 5  # 1000·20^-1.5/Σ ≈ 5.5
    write_vg150(tmp_path, n_images=60, n_test=10, n_predicates=8, predicate_counts="quota", n_val=5)
    train = VG150Dataset(tmp_path, "train", predicate_order="file", num_val_images=5)
    train_counts = np.bincount(np.concatenate([r.rels[:, 2] for r in train.records]), minlength=9)[1:]
    assert (np.diff(train_counts) <= 0).all()  # the training split itself is in frequency order (spec §3.6.1)


def test_sgdet_background_pairs_only_among_matched_proposals():
    """Spec §3.7: SGDet background = other ordered pairs of non-background proposals (the official sampler zeroes
    the rows and columns of proposals without a matched label)."""
    ds = VG150Dataset.__new__(VG150Dataset)
    ds.samples_per_gt_rel, ds.max_fg_pairs, ds.max_pairs = 4, 256, 1024
    gt_boxes = torch.tensor([[0.0, 0, 50, 50], [40, 40, 100, 100], [0, 60, 30, 100]])
    gt_labels = torch.tensor([3, 5, 2])
    rels = np.array([[0, 1, 7]])
    boxes = torch.tensor(  # matched to GT 0, 1, 2, then two far from every GT object
        [[0.0, 0, 50, 50], [40, 40, 100, 100], [0, 60, 30, 100], [300, 300, 350, 350], [400, 10, 450, 60]]
    )
    targets, pairs, labels = ds._sgdet_targets(boxes, gt_boxes, gt_labels, rels, torch.Generator().manual_seed(0))
    assert targets.tolist() == [3, 5, 2, 0, 0]
    assert pairs[labels > 0].tolist() == [[0, 1]] and labels[labels > 0].tolist() == [7]
    bg = {tuple(p) for p in pairs[labels == 0].tolist()}
    assert bg == {(1, 0), (0, 2), (2, 0), (1, 2), (2, 1)}  # all ordered matched pairs except the labelled one
    targets, pairs, labels = ds._sgdet_targets(boxes[3:], gt_boxes, gt_labels, rels, torch.Generator())
    assert targets.tolist() == [0, 0] and len(pairs) == 1 and labels.tolist() == [0]  # nothing matched: one pair


def test_sgdet_matched_pairs_not_drawn_are_not_background():
    """Spec §3.7: every (head, tail) proposal pair matching a GT relation is foreground; beyond
    ``samples_per_gt_rel`` only some are drawn, and the others must not come back as background pairs."""
    ds = VG150Dataset.__new__(VG150Dataset)
    ds.samples_per_gt_rel, ds.max_fg_pairs, ds.max_pairs = 4, 256, 1024
    gt_boxes = torch.tensor([[0.0, 0, 50, 50], [100, 100, 150, 150]])
    gt_labels = torch.tensor([1, 2])
    rels = np.array([[0, 1, 3]])
    shift = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 2, 0]])
    boxes = torch.cat([gt_boxes[0] + shift, gt_boxes[1] + shift])  # proposals 0-2 match GT 0, 3-5 match GT 1
    _, pairs, labels = ds._sgdet_targets(boxes, gt_boxes, gt_labels, rels, torch.Generator().manual_seed(0))
    matched = {(h, t) for h in range(3) for t in range(3, 6)}  # 9 matched pairs, 4 drawn
    fg = {tuple(p) for p in pairs[labels > 0].tolist()}
    bg = {tuple(p) for p in pairs[labels == 0].tolist()}
    assert len(fg) == 4 and fg <= matched and (labels[labels > 0] == 3).all()
    assert not bg & matched
    assert len(bg) == 6 * 5 - 9  # every other ordered pair of the six matched proposals


def test_statistics_filtered_images_dropped_and_background_overlap_without_plus_one():
    """§3.5: with the non-overlap filter an image left without relations adds nothing to F; background pairs
    are the pairs with a positive intersection area without the '+1' (official box_filter, to_move=0)."""
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [10.5, 0, 20, 10]], np.float32)  # 0 and 2: 0.5 px apart
    lonely = SceneRecord("1", "", 100, 100, boxes, np.array([1, 2, 3]), np.array([[0, 1, 1]]))
    counts, fg, trip = compute_statistics([lonely], 4, 3, filter_non_overlap=True)
    assert fg[..., 0].sum() == 16 and fg[..., 1:].sum() == 0  # only the +1 prior: the image was dropped
    assert trip[1, 2, 1] == 1 and counts[1] == 1  # triplet and predicate counts still see the relation
    _, fg, _ = compute_statistics([lonely], 4, 3, filter_non_overlap=False)
    assert fg[1, 2, 1] == 1
    assert fg[1, 3, 0] == fg[3, 1, 0] == fg[1, 2, 0] == 2  # no pair overlaps: all six ordered pairs count
    touching = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [10.5, 0, 20, 10]], np.float32)  # 0/1 overlap
    rec = SceneRecord("2", "", 100, 100, touching, np.array([1, 2, 3]), np.array([[0, 1, 1]]))
    _, fg, _ = compute_statistics([rec], 4, 3, filter_non_overlap=True)
    assert fg[1, 2, 0] == fg[2, 1, 0] == fg[2, 3, 0] == fg[3, 2, 0] == 2
    assert fg[1, 3, 0] == fg[3, 1, 0] == 1  # 0.5 px apart: not overlapping


def test_fit_reseeds_training_pairs_every_epoch(tmp_path):
    """The training loader is rebuilt every epoch, so pair sampling (bg subset, fg cap, duplicate predicates)
    differs between epochs, as the official sampler that draws anew every iteration."""
    import lightning.pytorch as pl

    from shagcl.models import SHAGCLConfig
    from shagcl.module import SHAGCLModule

    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            ds = trainer.datamodule.datasets["train"]
            seen.append((ds.epoch_seed, ds[0]["pair_idx"].tolist()))

    dm = SGGDataModule(
        data_root=str(tmp_path),
        feature_source="synthetic",
        synthetic=SyntheticFeaturesConfig(feature_dim=8),
        predicate_order="file",
        num_val_images=2,
        max_pairs=3,
        max_fg_pairs=1,
        batch_size=2,
        generate_demo_data=True,
        demo_num_images=12,
    )
    cfg = dict(num_heads=1, key_dim=8, ffn_dim=8, obj_layers=1, edge_layers=1, word_dim=4, group_min_count=1)
    module = SHAGCLModule(
        SHAGCLConfig(
            num_obj_classes=9,
            num_predicates=11,
            feature_dim=8,
            hidden_dim=8,
            word_embeddings="random",
            trainable_box_head=False,
            union_features="simplified",
            use_rect_features=False,
            **cfg,
        ),
        warmup_steps=0,
    )
    trainer = pl.Trainer(
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Probe()],
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.reload_dataloaders_every_n_epochs == 1
    assert [s for s, _ in seen] == [0, 1, 2]
    assert len({str(p) for _, p in seen}) > 1  # different pairs drawn for the same image


def _write_cache(path, records, num_obj_classes: int, dim: int = 8) -> None:
    """A cache in the layout ``shagcl extract --object_stage fc7 --union_stage fc7`` writes, random features."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for rec in records:
            n = len(rec.boxes)
            g = f.create_group(rec.image_id)
            g["boxes"] = rec.boxes.astype(np.float32)
            g["det_logits"] = rng.standard_normal((n, num_obj_classes)).astype(np.float16)
            g["det_scores"] = rng.random(n).astype(np.float16)
            g["num_det"] = np.array([n], dtype=np.int64)
            g["obj_feats"] = rng.standard_normal((n, dim)).astype(np.float16)
            g["union_feats"] = rng.standard_normal((n * (n - 1), dim)).astype(np.float16)


def test_images_missing_from_the_feature_cache_are_refused_or_dropped_when_the_split_is_built(tmp_path):
    write_gqa200(tmp_path, n_train=4, n_test=6, n_obj_classes=4, n_predicates=5)
    kw = dict(num_val_images=0, skip_test_entry=None)
    train = GQA200Dataset(tmp_path, "train", **kw).records
    test = GQA200Dataset(tmp_path, "test", **kw).records
    kept = [rec for i, rec in enumerate(test) if i not in (1, 4)]
    cache = tmp_path / "feats.h5"
    _write_cache(cache, train + kept, num_obj_classes=5)

    def datamodule(**extra) -> SGGDataModule:
        return SGGDataModule(
            dataset="gqa200",
            data_root=str(tmp_path),
            feature_source="cached",
            feature_cache=str(cache),
            num_val_images=0,
            gqa_skip_test_entry=None,
            test_batch_size=2,
            **extra,
        )

    with pytest.raises(
        KeyError, match=rf"test: 2 of 6 images have no features in data.feature_cache='{re.escape(str(cache))}'"
    ) as err:
        datamodule().setup("test")
    assert f"['{test[1].image_id}', '{test[4].image_id}']" in str(err.value)
    assert "data.missing_features: drop" in str(err.value) and "shagcl extract" in str(err.value)
    dm = datamodule(missing_features="drop")
    with pytest.warns(UserWarning, match=r"test: 2 of 6 images .*dropping them"):
        dm.setup("test")
    assert [r.image_id for r in dm.datasets["train"].records] == [r.image_id for r in train]  # nothing missing
    assert [r.image_id for r in dm.datasets["test"].records] == [r.image_id for r in kept]
    batches = list(dm.test_dataloader())
    assert [i for b in batches for i in b["image_ids"]] == [r.image_id for r in kept]


def test_hdf5_files_cut_short_are_named(tmp_path):
    write_vg150(tmp_path, n_images=6)
    h5 = tmp_path / "vg" / "VG-SGG-with-attri.h5"
    h5.write_bytes(h5.read_bytes()[:2000])
    with pytest.raises(OSError, match=r"VG-SGG file '.*VG-SGG-with-attri\.h5' cannot be read as HDF5"):
        VG150Dataset(tmp_path, "train", predicate_order="file")
    write_gqa200(tmp_path, n_train=4, n_test=2, n_obj_classes=4, n_predicates=5)
    kw = dict(num_val_images=0, skip_test_entry=None)
    cache = tmp_path / "feats.h5"
    _write_cache(cache, GQA200Dataset(tmp_path, "train", **kw).records, num_obj_classes=5)
    cache.write_bytes(cache.read_bytes()[:2000])
    with pytest.raises(OSError, match=r"data\.feature_cache '.*feats\.h5' cannot be read as HDF5"):
        GQA200Dataset(tmp_path, "train", feature_source="cached", feature_cache=str(cache), **kw)


def test_boxes_without_width_or_height_are_refused_naming_file_image_and_box(tmp_path):
    """VG stores cxcywh: a width or height of 0 is refused (the official loader asserts every one is > 0). GQA stores
    xyxy: a box with x2 < x1 has IoU 0 (or NaN) even with itself, so its relations could never be recalled."""
    write_vg150(tmp_path, n_images=6, n_test=2)
    h5 = tmp_path / "vg" / "VG-SGG-with-attri.h5"
    image_ids = [d["image_id"] for d in json.loads((tmp_path / "vg" / "image_data.json").read_text())]
    with h5py.File(h5, "a") as f:
        i = int(np.nonzero((f["split"][:] == 0) & (f["img_to_first_rel"][:] >= 0))[0][0])
        b0 = int(f["img_to_first_box"][i])
        f["boxes_1024"][b0 + 1, 2] = 0
    with pytest.raises(
        ValueError, match=rf"image {image_ids[i]}: box 1 \(row {b0 + 1} of 'boxes_1024', data\.box_scale"
    ):
        VG150Dataset(tmp_path, "train", predicate_order="file", num_val_images=0)

    write_gqa200(tmp_path, n_train=3, n_test=2)
    path = tmp_path / "gqa" / "GQA_200_Train.json"
    data = json.loads(path.read_text())
    x1, y1, x2, y2 = data["gt_boxes_all"][1][0]
    data["gt_boxes_all"][1][0] = [x2, y1, x1, y2]
    path.write_text(json.dumps(data))
    name = data["filenames_all"][1]
    with pytest.raises(ValueError, match=rf"GQA_200_Train.json: image {name}: box 0 of gt_boxes_all .* x2 < x1"):
        GQA200Dataset(tmp_path, "train")


def test_boxes_are_clamped_to_their_image_as_the_official_loaders(tmp_path):
    """``BoxList.clip_to_image`` of the official VG and GQA loaders: x to [0, W − 1], y to [0, H − 1]; boxes inside
    the image are unchanged, and ``clip_boxes: false`` keeps the stored boxes as they are."""
    from shagcl.data import clip_to_image

    boxes = np.array([[-3.0, 2.0, 120.0, 50.0], [10.0, -1.0, 20.0, 80.0], [5.0, 6.0, 7.0, 8.0]], dtype=np.float32)
    np.testing.assert_array_equal(
        clip_to_image(boxes, 100, 60), [[0.0, 2.0, 99.0, 50.0], [10.0, 0.0, 20.0, 59.0], [5.0, 6.0, 7.0, 8.0]]
    )
    write_vg150(tmp_path, n_images=6, n_test=2)
    infos = json.loads((tmp_path / "vg" / "image_data.json").read_text())
    with h5py.File(tmp_path / "vg" / "VG-SGG-with-attri.h5", "a") as f:
        i = int(np.nonzero((f["split"][:] == 2) & (f["img_to_first_rel"][:] >= 0))[0][0])
        b0 = int(f["img_to_first_box"][i])
        f["boxes_1024"][b0] = [1020, 4, 40, 6]  # x2 = 1040 and y1 = 1 at the 1024 scale: beyond the right edge
    kw = dict(predicate_order="file", num_val_images=0)
    scale = max(infos[i]["width"], infos[i]["height"]) / 1024
    raw = np.array([1000, 1, 1040, 7]) * scale
    clipped = VG150Dataset(tmp_path, "test", **kw).records[0].boxes[0]
    assert clipped[2] == infos[i]["width"] - 1 and clipped[0] == pytest.approx(raw[0])
    np.testing.assert_allclose(VG150Dataset(tmp_path, "test", clip_boxes=False, **kw).records[0].boxes[0], raw)

    write_gqa200(tmp_path, n_train=3, n_test=2)
    path = tmp_path / "gqa" / "GQA_200_Train.json"
    data = json.loads(path.read_text())
    w, h = data["img_info_all"][0]["width"], data["img_info_all"][0]["height"]
    data["gt_boxes_all"][0][0] = [-5, 3, w + 10, h]
    path.write_text(json.dumps(data))
    assert GQA200Dataset(tmp_path, "train").records[0].boxes[0].tolist() == [0, 3, w - 1, h - 1]
    assert GQA200Dataset(tmp_path, "train", clip_boxes=False).records[0].boxes[0].tolist() == [-5, 3, w + 10, h]
    dm = SGGDataModule("gqa200", str(tmp_path), feature_source="synthetic", clip_boxes=False, num_val_images=1)
    assert dm.make_dataset("train").records[0].boxes[0].tolist() == [-5, 3, w + 10, h]


def test_frequency_order_needs_vg150s_own_predicates(tmp_path):
    """``predicate_order: frequency`` re-indexes by id: a dictionary whose 50 predicates are not VG150's (alphabetical,
    as released) would be relabelled as VG150's, so it is refused naming the file and the first differing name;
    ``file`` keeps such a file's own ids."""
    write_vg150(tmp_path, n_images=6, n_test=2, n_predicates=50)
    assert VG150Dataset(tmp_path, "train", num_val_images=0).predicate_classes[1] == "on"
    path = tmp_path / "vg" / "VG-SGG-dicts-with-attri.json"
    dicts = json.loads(path.read_text())
    dicts["predicate_to_idx"]["wearing a"] = dicts["predicate_to_idx"].pop("wearing")
    path.write_text(json.dumps(dicts))
    with pytest.raises(
        ValueError, match=r"dicts-with-attri.json: predicate 48 is 'wearing a' where VG150 has 'wearing'"
    ):
        VG150Dataset(tmp_path, "train", num_val_images=0)
    assert (
        VG150Dataset(tmp_path, "train", num_val_images=0, predicate_order="file").predicate_classes[48] == "wearing a"
    )
