"""`pckd predict` writes one JSON line per image of the predict split, identified and consistent with the student."""

import json

import pytest
import torch
from sklearn.datasets import load_digits

from pckd.cli import main
from pckd.data import ImageNetDataset
from pckd.testing import write_cifar100_python


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _check_against_student(cli, rows, ds):
    """Each row's prediction, top-5 and label equal what the student computes for the image at row['index']."""
    model = cli.model.eval()
    with torch.no_grad():
        prob = model(torch.stack([ds[r["index"]]["image"] for r in rows])).softmax(1)  # (N, K)
    for row, p in zip(rows, prob):
        assert row["pred"] == int(p.argmax())
        assert [t["class"] for t in row["top5"]] == p.topk(5).indices.tolist()
        assert [t["prob"] for t in row["top5"]] == pytest.approx(p.topk(5).values.tolist(), abs=1e-5)
        assert row["label"] == int(ds.labels[row["index"]])


def test_predict_cifar_rows(tmp_path):
    write_cifar100_python(tmp_path / "data", num_classes=10, n_train_per_class=1, n_test_per_class=2)
    out = tmp_path / "p.jsonl"
    cli = main(args=["predict", "--config", "tiny", "--data.data_root", str(tmp_path / "data"),
                     "--trainer.default_root_dir", str(tmp_path), "--predictions.path", str(out)])  # fmt: skip
    rows = _rows(out)
    ds = cli.datamodule.datasets["predict"]
    assert len(rows) == len(ds) == 20
    assert sorted(r["index"] for r in rows) == list(range(20))  # each test image once
    _check_against_student(cli, rows, ds)
    for row in rows:  # names from the pickle's meta
        assert row["pred_name"] == f"class_{row['pred']}" and row["label_name"] == f"class_{row['label']}"
        assert all(t["name"] == f"class_{t['class']}" for t in row["top5"])


def test_predict_digits_rows(tmp_path):
    out = tmp_path / "p.jsonl"
    cli = main(args=["predict", "--config", "tiny", "--data.dataset", "digits", "--data.generate_demo_data", "false",
                     "--data.eval_batch_size", "256", "--model.method", "ce", "--model.config.teacher_arch", "null",
                     "--model.config.student_arch", "digits_student", "--model.config.in_channels", "1",
                     "--trainer.default_root_dir", str(tmp_path), "--predictions.path", str(out)])  # fmt: skip
    rows = _rows(out)
    ds = cli.datamodule.datasets["predict"]
    assert len(rows) == len(ds) == 497 and sorted(r["index"] for r in rows) == list(range(497))
    digits = load_digits()
    rows_of_split = [r["digits_index"] for r in rows]
    assert len(set(rows_of_split)) == 497
    for row in rows:  # digits_index is the load_digits() row of that image
        pixels = torch.as_tensor(digits.images[row["digits_index"]], dtype=torch.float32) / 16.0
        assert torch.equal(ds[row["index"]]["image"][0], pixels)
        assert row["label"] == int(digits.target[row["digits_index"]])
        assert "pred_name" not in row and "label_name" not in row
    _check_against_student(cli, rows, ds)


def test_imagenet_items_carry_their_file(tmp_path):
    from PIL import Image

    for wnid in ("n01", "n02"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 30)).save(tmp_path / "val" / wnid / f"{wnid}_a.JPEG")
    ds = ImageNetDataset(str(tmp_path), "val", train=False)
    assert ds.class_names == ["n01", "n02"]
    assert [ds[i]["path"] for i in range(2)] == ["val/n01/n01_a.JPEG", "val/n02/n02_a.JPEG"]
    assert [int(ds[i]["index"]) for i in range(2)] == [0, 1]
