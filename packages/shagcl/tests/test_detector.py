import logging
import re

import h5py
import pytest
import torch

from shagcl.cli import main
from shagcl.data import INCOMPLETE_PREFIX, VG150Dataset
from shagcl.testing import write_vg150

SMALL = ["--random_weights", "--min_size", "64", "--max_size", "96", "--num_val_images", "0"]


def test_extract_writes_a_cache_the_dataset_reads(tmp_path):
    write_vg150(tmp_path, n_images=4, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    out, out_fc7 = tmp_path / "cache.h5", tmp_path / "cache_fc7.h5"
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out)])
    (tmp_path / "det.pth").write_bytes(b"PK\x03\x04 a download that stopped")
    with pytest.raises(ValueError, match=r"--checkpoint '.*det\.pth' cannot be read as a torch file"):
        main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out),
                   "--checkpoint", str(tmp_path / "det.pth")])  # fmt: skip
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
    out.write_bytes(out.read_bytes()[:2000])  # a cache cut short (a run killed mid-write, a full disk)
    with pytest.raises(OSError, match=r"--output '.*cache\.h5' cannot be opened as HDF5"):
        main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out), *SMALL])


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


def test_extract_keeps_boxes_in_the_annotation_frame(tmp_path):
    """An image file smaller than the size listed in image_data.json: features are pooled on the file, but the
    cached boxes stay in the annotation's frame (the frame of gt_boxes and image_size)."""
    from PIL import Image

    from shagcl.models import box_iou

    write_vg150(tmp_path, n_images=4, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    kw = dict(predicate_order="file", num_val_images=0)
    for split in ("test", "train"):
        rec = VG150Dataset(tmp_path, split, **kw).records[0]
        path = tmp_path / "vg" / rec.filename
        with Image.open(path) as im:
            small = im.resize((im.size[0] // 2, im.size[1] // 2))
        small.save(path)
    fc7 = ["--object_stage", "fc7", "--union_stage", "fc7"]
    out = tmp_path / "predcls.h5"
    main(args=["extract", "--data_root", str(tmp_path), "--split", "test", "--output", str(out), *SMALL, *fc7])
    ds = VG150Dataset(tmp_path, "test", protocol="predcls", feature_source="cached", feature_cache=str(out), **kw)
    item = ds[0]
    torch.testing.assert_close(item["boxes"], item["gt_boxes"])
    assert torch.allclose(box_iou(item["boxes"], item["gt_boxes"]).diag(), torch.ones(len(item["boxes"])))
    out = tmp_path / "sgdet.h5"
    main(
        args=["extract", "--data_root", str(tmp_path), "--split", "train", "--output", str(out), "--protocol", "sgdet"]
        + [*SMALL, *fc7, "--detections_per_img", "4"]
    )
    ds = VG150Dataset(tmp_path, "train", protocol="sgdet", feature_source="cached", feature_cache=str(out), **kw)
    rec = ds.records[0]
    with h5py.File(out) as f:
        boxes, num_det = torch.as_tensor(f[rec.image_id]["boxes"][:]), int(f[rec.image_id]["num_det"][0])
    torch.testing.assert_close(boxes[num_det:], torch.as_tensor(rec.boxes))  # the GT rows of a training image
    assert (boxes[:num_det, 2] <= rec.width).all() and (boxes[:num_det, 3] <= rec.height).all()


def test_filter_duplicate_detections_one_per_proposal():
    """NMS_FILTER_DUPLICATES: per-class NMS, then each proposal keeps its best class among those it survived."""
    from torchvision.ops import nms

    from shagcl.detector import filter_duplicate_detections

    box = [0.0, 0.0, 10.0, 10.0]
    boxes = torch.tensor([box, box, [50.0, 50.0, 60.0, 60.0], box])[:, None, :].repeat(1, 3, 1)  # (P=4, C=3, 4)
    scores = torch.tensor(
        [
            [0.10, 0.50, 0.40],  # wins class 1; loses class 2 to proposal 1
            [0.10, 0.45, 0.45],  # suppressed in class 1, wins class 2
            [0.965, 0.02, 0.015],  # alone at its place: survives both classes, keeps class 1
            [0.40, 0.30, 0.30],  # suppressed in both classes: dropped
        ]
    )
    props, labels, kept_scores, kept_boxes = filter_duplicate_detections(boxes, scores, 0.01, 0.3, 80)
    assert props.tolist() == [0, 1, 2] and labels.tolist() == [1, 2, 1]
    torch.testing.assert_close(kept_scores, torch.tensor([0.50, 0.45, 0.02]))
    assert torch.equal(kept_boxes, boxes[[0, 1, 2], 0])
    # without the filter every surviving (proposal, class) is a detection: proposal 2 would appear twice
    per_class = [(i, c) for c in (1, 2) for i in nms(boxes[:, c], scores[:, c], 0.3).tolist() if scores[i, c] > 0.01]
    assert sorted(per_class) == [(0, 1), (1, 2), (2, 1), (2, 2)]
    assert filter_duplicate_detections(boxes, scores, 0.03, 0.3, 80)[0].tolist() == [0, 1]  # score threshold
    assert filter_duplicate_detections(boxes, scores, 0.01, 0.3, 2)[0].tolist() == [0, 1]  # detections_per_img


def test_extract_corrupt_images_raise_or_are_skipped_and_the_dataset_checks_the_cache(tmp_path, caplog):
    """Test split of four images: the first is garbage bytes, the second a JPEG cut in half (PIL opens it; only the
    full decode fails). ``raise`` names the file; ``skip`` leaves both out of the cache, which the cached dataset
    then refuses (``missing_features=raise``) or drops (``drop``) when it is built."""
    write_vg150(tmp_path, n_images=5, n_test=4, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    kw = dict(protocol="predcls", predicate_order="file", num_val_images=0)
    records = VG150Dataset(tmp_path, "test", **kw).records
    assert len(records) == 4
    garbage, truncated = (tmp_path / "vg" / rec.filename for rec in records[:2])
    garbage.write_bytes(b"\x00not an image\xff" * 64)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    argv = ["extract", "--data_root", str(tmp_path), "--split", "test", *SMALL, "--union_stage", "fc7"]

    out = tmp_path / "raise.h5"
    with pytest.raises(ValueError, match=rf"{re.escape(str(garbage))}.*--on_corrupt skip"):
        main(args=[*argv, "--output", str(out)])
    with h5py.File(out, "a") as f:  # a cache already holding the garbage image's id resumes at the truncated one
        f.create_group(records[0].image_id)
    with pytest.raises(ValueError, match=rf"{re.escape(str(truncated))}.*truncated.*--on_corrupt skip"):
        main(args=[*argv, "--output", str(out), "--on_corrupt", "raise"])

    out = tmp_path / "skip.h5"
    with caplog.at_level(logging.WARNING, logger="shagcl.detector"):
        main(args=[*argv, "--output", str(out), "--on_corrupt", "skip"])
    with h5py.File(out) as f:
        assert set(f.keys()) == {rec.image_id for rec in records[2:]}
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(garbage) in warned and str(truncated) in warned and "skipped 2 corrupt images" in warned

    with pytest.raises(
        KeyError, match=rf"2 of 4 images have no features in data.feature_cache='{re.escape(str(out))}'"
    ):
        VG150Dataset(tmp_path, "test", feature_source="cached", feature_cache=str(out), **kw)
    with pytest.warns(UserWarning, match=r"2 of 4 images .*dropping them"):
        ds = VG150Dataset(
            tmp_path, "test", feature_source="cached", feature_cache=str(out), missing_features="drop", **kw
        )
    assert [rec.image_id for rec in ds.records] == [rec.image_id for rec in records[2:]]
    assert [ds[i]["image_id"] for i in range(len(ds))] == [rec.image_id for rec in records[2:]]


def test_extract_writes_each_image_under_a_temporary_name_and_resumes_past_a_half_written_one(tmp_path):
    """A run stopped while an image's datasets were being written left a group under the image id that a resumed
    run took as done (and the readers as complete); now the group carries its id only once it is complete."""
    write_vg150(tmp_path, n_images=3, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    kw = dict(protocol="predcls", predicate_order="file", num_val_images=0)
    ids = [rec.image_id for rec in VG150Dataset(tmp_path, "test", **kw).records]
    out = tmp_path / "cache.h5"
    argv = ["extract", "--data_root", str(tmp_path), "--split", "test", *SMALL, "--union_stage", "fc7"]
    main(args=[*argv, "--output", str(out)])
    with h5py.File(out, "a") as f:
        assert set(f.keys()) == set(ids)
        complete = {key: f[ids[1]][key][()] for key in f[ids[1]]}
        f.move(ids[1], INCOMPLETE_PREFIX + ids[1])  # as a stop mid-image leaves it
        del f[INCOMPLETE_PREFIX + ids[1]]["boxes"]
    with pytest.raises(KeyError, match=r"1 of 2 images have no features"):  # the readers do not take it as done
        VG150Dataset(tmp_path, "test", feature_source="cached", feature_cache=str(out), **kw)
    main(args=[*argv, "--output", str(out)])  # the resumed run removes it and extracts the image again
    with h5py.File(out) as f:
        assert set(f.keys()) == set(ids)
        assert set(f[ids[1]].keys()) == set(complete)
        torch.testing.assert_close(torch.as_tensor(f[ids[1]]["boxes"][()]), torch.as_tensor(complete["boxes"]))
    assert len(VG150Dataset(tmp_path, "test", feature_source="cached", feature_cache=str(out), **kw)) == 2


def test_extract_reads_boxes_as_the_datasets_do_with_clip_boxes(tmp_path):
    """``--clip_boxes`` (default true) clamps the annotated boxes to the image before pooling, as ``data.clip_boxes``
    does for the datasets: with the same value, the cached boxes are the dataset's boxes."""
    import numpy as np

    write_vg150(tmp_path, n_images=4, n_test=2, n_obj_classes=3, n_predicates=4, with_images=True, max_obj=3)
    with h5py.File(tmp_path / "vg" / "VG-SGG-with-attri.h5", "a") as f:
        i = int(np.nonzero(f["split"][:] == 2)[0][0])
        f["boxes_1024"][int(f["img_to_first_box"][i])] = [1020, 4, 40, 6]  # beyond the right edge
    fc7 = ["--object_stage", "fc7", "--union_stage", "fc7", "--split", "test"]
    kw = dict(predicate_order="file", num_val_images=0, protocol="predcls", feature_source="cached")
    for clip in ("true", "false"):
        out = tmp_path / f"clip_{clip}.h5"
        main(args=["extract", "--data_root", str(tmp_path), "--output", str(out), "--clip_boxes", clip, *SMALL, *fc7])
        ds = VG150Dataset(tmp_path, "test", feature_cache=str(out), clip_boxes=clip == "true", **kw)
        item, rec = ds[0], ds.records[0]
        torch.testing.assert_close(item["boxes"], item["gt_boxes"])
        assert (float(item["boxes"][0, 2]) == rec.width - 1) == (clip == "true")
