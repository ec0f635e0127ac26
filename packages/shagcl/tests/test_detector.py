import h5py
import pytest
import torch

from shagcl.cli import main
from shagcl.data import VG150Dataset
from shagcl.testing import write_vg150

SMALL = ["--random_weights", "--min_size", "64", "--max_size", "96", "--num_val_images", "0"]


def test_extract_writes_a_cache_the_dataset_reads(tmp_path):
    write_vg150(tmp_path, n_images=4, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    out, out_fc7 = tmp_path / "cache.h5", tmp_path / "cache_fc7.h5"
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out)])
    main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out), *SMALL])
    main(
        args=[
            "extract",
            "--data_root",
            str(tmp_path),
            "--split",
            "test",
            "--output",
            str(out_fc7),
            *SMALL,
            "--object_stage",
            "fc7",
            "--union_stage",
            "fc7",
        ]
    )
    for path, pooled in ((out, True), (out_fc7, False)):
        ds = VG150Dataset(
            tmp_path,
            "test",
            protocol="sgcls",
            feature_source="cached",
            feature_cache=str(path),
            predicate_order="file",
            num_val_images=0,
        )
        item = ds[0]
        n = len(item["boxes"])
        assert item["det_logits"].shape == (n, 4)
        if pooled:  # default: the maps fc6 consumes and the all-level union maps (official path)
            assert item["obj_pooled"].shape == (n, 256, 7, 7) and item["obj_feats"] is None
            assert item["union_pooled"].shape == (n * (n - 1), 4 * 256, 7, 7) and item["union_feats"] is None
            assert torch.isfinite(item["union_pooled"]).all()
        else:
            assert item["obj_feats"].shape == (n, 1024) and item["obj_pooled"] is None
            assert item["union_feats"].shape == (n * (n - 1), 1024) and torch.isfinite(item["union_feats"]).all()


def test_extract_sgdet_caches_gt_boxes_for_training(tmp_path):
    write_vg150(tmp_path, n_images=4, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    out = tmp_path / "sgdet.h5"
    main(
        args=[
            "extract",
            "--data_root",
            str(tmp_path),
            "--output",
            str(out),
            "--protocol",
            "sgdet",
            *SMALL,
            "--detections_per_img",
            "4",
            "--object_stage",
            "fc7",
            "--union_stage",
            "fc7",
        ]
    )
    train = VG150Dataset(
        tmp_path,
        "train",
        protocol="sgdet",
        feature_source="cached",
        feature_cache=str(out),
        predicate_order="file",
        num_val_images=0,
    )
    rec = train.records[0]
    with h5py.File(out) as f:
        num_det, n_all = int(f[rec.image_id]["num_det"][0]), len(f[rec.image_id]["boxes"])
    assert n_all == num_det + len(rec.boxes)  # detections, then the GT boxes of the training image
    item = train[0]
    assert len(item["boxes"]) == n_all and (item["labels"][num_det:] == torch.as_tensor(rec.labels)).all()
    no_gt = VG150Dataset(
        tmp_path,
        "train",
        protocol="sgdet",
        feature_source="cached",
        feature_cache=str(out),
        predicate_order="file",
        num_val_images=0,
        sgdet_add_gt_boxes=False,
    )
    assert len(no_gt[0]["boxes"]) == num_det
    test = VG150Dataset(
        tmp_path,
        "test",
        protocol="sgdet",
        feature_source="cached",
        feature_cache=str(out),
        predicate_order="file",
        num_val_images=0,
    )
    with h5py.File(out) as f:
        rec_t = test.records[0]
        assert int(f[rec_t.image_id]["num_det"][0]) == len(f[rec_t.image_id]["boxes"])  # no GT boxes at test
