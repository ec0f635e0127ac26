"""Readers of the official formats on tiny generated files (spec §4, §8b)."""

import pickle

import numpy as np
import pytest
import torch

from pckd.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR100Dataset,
    DigitsDataset,
    PCKDDataModule,
    digits_splits,
    make_views,
)
from pckd.testing import write_cifar100_python


def test_cifar_planar_layout_round_trip(tmp_path):
    folder = write_cifar100_python(tmp_path, num_classes=3, n_train_per_class=2, n_test_per_class=1)
    with open(folder / "train", "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    # a known planar pattern: R plane = row index, G plane = column index, B plane = 7
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    entry["data"][0] = np.concatenate([rows.ravel(), cols.ravel(), np.full(1024, 7)]).astype(np.uint8)
    with open(folder / "train", "wb") as fh:
        pickle.dump(entry, fh)
    ds = CIFAR100Dataset(str(tmp_path), "train", train=False)
    assert len(ds) == 6 and ds.num_classes == 3
    img = ds[0]["image"] * torch.tensor(CIFAR100_STD)[:, None, None] + torch.tensor(CIFAR100_MEAN)[:, None, None]
    img = (img * 255).round()
    assert img[0, 5, 9] == 5 and img[1, 5, 9] == 9 and img[2, 5, 9] == 7  # channel, row, column
    assert ds[0]["label"].dtype == torch.long and int(ds.labels.max()) < 3


def test_cifar_train_items_have_four_views(tmp_path):
    write_cifar100_python(tmp_path, num_classes=2, n_train_per_class=2, n_test_per_class=1)
    item = CIFAR100Dataset(str(tmp_path), "train", train=True)[0]
    assert item["image"].shape == (4, 3, 32, 32)


def test_cifar_missing_file_names_it(tmp_path):
    write_cifar100_python(tmp_path, num_classes=2)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/meta.*README, Data preparation"):
        CIFAR100Dataset(str(tmp_path), "train", train=False)


def test_view_builder_is_rot90_and_view0_matches_plain():
    x = torch.rand(3, 6, 6)
    views = make_views(x, 4, flip=False, crop_padding=0, mean=None, std=None)
    for k in range(4):
        torch.testing.assert_close(views[k], torch.rot90(x, k, dims=(-2, -1)))
    torch.testing.assert_close(views[0], x)
    # numpy rot90 on HWC gives the same image as torch.rot90 on CHW
    np.testing.assert_allclose(np.rot90(x.permute(1, 2, 0).numpy(), 1).copy(), views[1].permute(1, 2, 0).numpy())


def test_digits_splits_and_label_noise():
    s = digits_splits(0)
    assert [len(s[k]) for k in ("teacher_train", "train", "val", "test")] == [1000, 300, 300, 497]
    assert set(s["train"]) <= set(s["teacher_train"]) and not set(s["test"]) & set(s["teacher_train"])
    assert not set(s["val"]) & (set(s["teacher_train"]) | set(s["test"]))
    clean = DigitsDataset("train", train=True)
    noisy = DigitsDataset("train", train=True, label_noise=0.3)
    assert int(noisy.noisy_mask.sum()) == 90
    assert (noisy.labels[noisy.noisy_mask] != clean.labels[noisy.noisy_mask]).all()
    assert (noisy.labels[~noisy.noisy_mask] == clean.labels[~noisy.noisy_mask]).all()
    assert clean[0]["image"].shape == (4, 1, 8, 8) and float(clean.images.max()) <= 1.0


def test_generate_demo_data_writes_cifar_folder_once(tmp_path):
    root = tmp_path / "tiny_cifar"
    dm = PCKDDataModule(dataset="cifar100", data_root=str(root), batch_size=4, num_workers=0, generate_demo_data=True)
    dm.prepare_data()
    train = root / "cifar-100-python" / "train"
    assert train.is_file()
    stamp = train.stat().st_mtime_ns
    dm.prepare_data()  # an existing folder is left as it is
    assert train.stat().st_mtime_ns == stamp
    dm.setup("fit")
    assert dm.num_classes == 10 and len(dm.datasets["train"]) == 40
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 4, 3, 32, 32)


@pytest.mark.parametrize(("drop_last", "sizes"), [(True, [16, 16]), (False, [16, 16, 8])])
def test_last_partial_training_batch_follows_drop_last(tmp_path, drop_last, sizes):
    """40 training images at batch 16: the release's loader ends each epoch with a batch of 8 (drop_last false);
    the default leaves it out. Evaluation keeps every image either way."""
    write_cifar100_python(tmp_path, num_classes=10, n_train_per_class=4, n_test_per_class=2)
    dm = PCKDDataModule(
        dataset="cifar100", data_root=str(tmp_path), batch_size=16, eval_batch_size=16, num_workers=0,
        drop_last=drop_last,
    )  # fmt: skip
    dm.setup("fit")
    assert [len(b["label"]) for b in dm.train_dataloader()] == sizes
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == 20
    assert PCKDDataModule(dataset="cifar100").hparams.drop_last is True  # default: full batches only


def test_generate_demo_data_refuses_other_readers(tmp_path):
    with pytest.raises(ValueError, match="generate_demo_data"):
        PCKDDataModule(dataset="digits", data_root=str(tmp_path), generate_demo_data=True)


@pytest.mark.parametrize("bad_label", [-1, 3])
def test_cifar_label_outside_the_class_range_raises(tmp_path, bad_label):
    folder = write_cifar100_python(tmp_path, num_classes=3, n_train_per_class=2, n_test_per_class=1)
    with open(folder / "train", "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")
    entry["fine_labels"][4] = bad_label  # meta names 3 classes: valid labels are 0, 1, 2
    with open(folder / "train", "wb") as fh:
        pickle.dump(entry, fh)
    with pytest.raises(ValueError, match=f"label {bad_label} of row 4 is outside 0..2"):
        CIFAR100Dataset(str(tmp_path), "train", train=False)


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_class_count_mismatch_is_refused_outside_fit(tmp_path, command):
    """A 20-class folder under a 10-class model (tiny.yaml): refused before any batch, naming the config key."""
    from pckd.cli import main

    write_cifar100_python(tmp_path / "data", num_classes=20, n_train_per_class=1, n_test_per_class=1)
    args = [command, "--config", "tiny", "--data.data_root", str(tmp_path / "data"),
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match=r"model.config.num_classes=10 but the dataset has 20 classes"):
        main(args=args)
    assert not (tmp_path / "predictions.jsonl").exists()


def test_cifar_meta_without_fine_label_names_names_file_and_key(tmp_path):
    folder = write_cifar100_python(tmp_path, num_classes=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"coarse_label_names": ["c"] * 20}, fh)
    with pytest.raises(KeyError, match=r"cifar-100-python/meta: missing key 'fine_label_names'"):
        CIFAR100Dataset(str(tmp_path), "test", train=False)


def _write_parquet(path, labels, names):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in labels]
    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "fine_label": labels}, features)
    ds.to_parquet(str(path))
    return pixels


def test_cifar_parquet_folder_reads_each_split_from_its_own_files(tmp_path):
    names = ["apple", "bee", "cat"]
    train = _write_parquet(tmp_path / "train-00000.parquet", [0, 2, 1, 2], names)
    test = _write_parquet(tmp_path / "test-00000.parquet", [1, 0], names)
    for split, pixels, labels in (("train", train, [0, 2, 1, 2]), ("test", test, [1, 0])):
        ds = CIFAR100Dataset(None, split, train=False, hf_dataset=str(tmp_path))
        assert ds.labels.tolist() == labels and ds.class_names == names and ds.num_classes == 3
        assert torch.equal(ds.images, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))


def test_single_parquet_file_is_not_read_for_the_other_split(tmp_path):
    """One file cannot give both splits: reading train-*.parquet as the test split would evaluate on training
    images without a word."""
    _write_parquet(tmp_path / "train-00000.parquet", [0, 1], ["a", "b"])
    assert len(CIFAR100Dataset(None, "train", train=False, hf_dataset=str(tmp_path / "train-00000.parquet"))) == 2
    with pytest.raises(ValueError, match=r"train-00000\.parquet.*serves only the split its name starts with.*'test'"):
        CIFAR100Dataset(None, "test", train=False, hf_dataset=str(tmp_path / "train-00000.parquet"))


def test_imagenet_train_and_val_with_different_class_folders_are_refused(tmp_path):
    from PIL import Image

    from pckd.data import ImageNetDataset

    for split, wnids in (("train", ("n01", "n02", "n03")), ("val", ("n01", "n03"))):
        for wnid in wnids:
            (tmp_path / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / wnid / "a.JPEG")
    for split in ("train", "val"):  # val's n03 would become index 1, which is n02 in training
        with pytest.raises(ValueError, match=r"'train/' and 'val/'|'val/' and 'train/'") as err:
            ImageNetDataset(str(tmp_path), split, train=False)
        assert "n02" in str(err.value)
    (tmp_path / "val" / "n02").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "n02" / "a.JPEG")
    assert ImageNetDataset(str(tmp_path), "val", train=False).class_names == ["n01", "n02", "n03"]


def _write_jpeg(path, mode, size=(12, 10)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": (), "RGB": (3,), "CMYK": (4,)}[mode]
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, "JPEG")


def test_imagenet_reads_grayscale_cmyk_and_one_pixel_jpegs_and_skips_other_files(tmp_path):
    from pckd.data import ImageNetDataset

    for split in ("train", "val"):
        _write_jpeg(tmp_path / split / "n01" / "gray.JPEG", "L")
        _write_jpeg(tmp_path / split / "n01" / "cmyk.JPEG", "CMYK")
        _write_jpeg(tmp_path / split / "n02" / "dot.JPEG", "RGB", size=(1, 1))
        (tmp_path / split / "n02" / "notes.txt").write_text("not an image")
    for train, shape in ((True, (4, 3, 224, 224)), (False, (3, 224, 224))):
        ds = ImageNetDataset(str(tmp_path), "train", train=train)
        assert len(ds) == 3  # the text file is not an item
        for i in range(len(ds)):
            assert ds[i]["image"].shape == shape and torch.isfinite(ds[i]["image"]).all()


def test_imagenet_empty_class_folder_names_the_folder_and_key(tmp_path):
    from pckd.data import ImageNetDataset

    for split in ("train", "val"):
        _write_jpeg(tmp_path / split / "n01" / "a.JPEG", "RGB")
        (tmp_path / split / "n02").mkdir(parents=True)
        (tmp_path / split / "n02" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"data\.data_root=.*\['val/n02'\] hold no image"):
        ImageNetDataset(str(tmp_path), "val", train=False)
