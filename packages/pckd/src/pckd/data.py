"""Data: CIFAR-100 (python pickles, or an HF datasets id / parquet export), ImageNet folders, sklearn digits.

Every training sample is an image with V views (spec §3.1): V = 4 gives the rotations by 0°, 90°, 180°, 270°
(``torch.rot90(x, k, dims=(-2, -1))``), each view cropped independently after one shared horizontal flip.
Batches are dicts ``{"image": (B, V, C, H, W) float, "label": (B,) long}`` for training and
``{"image": (B, C, H, W), "label": (B,)}`` for evaluation (un-rotated, no augmentation), plus what identifies each
image: ``"index"`` (B,) its position in the split, and ``"path"`` (ImageNet: list of file paths relative to
``data_root``) or ``"digits_index"`` (digits: (B,) rows of ``sklearn.datasets.load_digits``).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from mmzoo.config import check_choice, check_range
from mmzoo.data import SplitLoaders, evaluation_sampler, worker_options
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "make_views",
    "CIFAR100Dataset",
    "ImageNetDataset",
    "DigitsDataset",
    "digits_splits",
    "PCKDDataModule",
]

log = logging.getLogger(__name__)

CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)  # spec §3.1
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
README_HINT = "see README, Data preparation"
DatasetName = Literal["cifar100", "imagenet", "digits"]
"""Readers of :class:`PCKDDataModule` (``data.dataset``)."""


def _random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """RandomCrop(size=H, padding) on a (C, H, W) tensor with zero padding."""
    _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (C, H+2p, W+2p)
    top = int(torch.randint(0, 2 * padding + 1, (1,), generator=generator))
    left = int(torch.randint(0, 2 * padding + 1, (1,), generator=generator))
    return padded[:, top : top + h, left : left + w]  # (C, H, W)


def make_views(
    image: torch.Tensor,
    num_views: int,
    flip: bool,
    crop_padding: int,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Spec §3.1 view builder: (C, H, W) float in [0, 1] → (V, C, H, W).

    1. with probability 0.5 flip horizontally (one flip shared by all views), if ``flip``;
    2. view k = rot90(image, k) counter-clockwise, k = 0..V−1;
    3. per view: RandomCrop(H, padding=crop_padding) (skipped when 0), then Normalize(mean, std) (if given).
    """
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        image = image.flip(-1)
    views = []
    for k in range(num_views):
        view = torch.rot90(image, k, dims=(-2, -1))  # (C, H, W), requires H == W for k odd
        if crop_padding > 0:
            view = _random_crop(view, crop_padding, generator)
        if mean is not None and std is not None:
            view = (view - view.new_tensor(mean)[:, None, None]) / view.new_tensor(std)[:, None, None]
        views.append(view)
    return torch.stack(views)  # (V, C, H, W)


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


class CIFAR100Dataset(Dataset):
    """CIFAR-100 in the official python format (spec §4.1): ``<data_root>/cifar-100-python/{train,test,meta}``.

    Each pickle's ``data`` is uint8 (N, 3072), channel-planar (1024 R, 1024 G, 1024 B, each row-major 32×32);
    labels are ``fine_labels``. Alternatively ``hf_dataset`` names a Hugging Face datasets id (e.g.
    ``uoft-cs/cifar100``) or a local parquet file/folder, read through ``datasets`` (columns ``img`` and
    ``fine_label``).

    Item: ``{"image": (V, 3, 32, 32) float if train else (3, 32, 32), "label": long, "index": long}`` (``index``:
    the row of the split's pickle or parquet table). ``class_names``: the fine label names (meta, or the HF
    ``fine_label`` feature), None when unknown.
    """

    def __init__(
        self,
        data_root: str,
        split: Literal["train", "test"],
        train: bool,
        num_views: int = 4,
        hf_dataset: str | None = None,
    ) -> None:
        self.train, self.num_views = train, num_views
        self.num_classes = 100
        self.class_names: list[str] | None = None
        if hf_dataset:
            self.images, self.labels, self.class_names = _load_hf_cifar(hf_dataset, split)
            if self.class_names is not None:  # a ClassLabel column gives the class count, as meta does below
                self.num_classes = len(self.class_names)
        else:
            folder = Path(data_root) / "cifar-100-python"
            for name in ("train", "test", "meta"):
                if not (folder / name).is_file():
                    raise FileNotFoundError(
                        f"data.data_root={data_root!r}: missing 'cifar-100-python/{name}' (CIFAR-100 python "
                        f"version; cifar-100-python/{{train,test,meta}} are all needed); {README_HINT}"
                    )
            with open(folder / split, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            for key in ("data", "fine_labels"):
                if key not in entry:
                    raise KeyError(f"{folder / split}: missing key {key!r} (official CIFAR-100 pickle); {README_HINT}")
            data = np.asarray(entry["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{folder / split}: 'data' has shape {data.shape}, expected (N, 3072)")
            self.images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3, 32, 32) uint8, planar → CHW
            self.labels = torch.as_tensor(entry["fine_labels"], dtype=torch.long)  # (N,)
            with open(folder / "meta", "rb") as fh:
                meta = pickle.load(fh, encoding="latin1")
            if not isinstance(meta, dict) or "fine_label_names" not in meta:
                raise KeyError(f"{folder / 'meta'}: missing key 'fine_label_names' (official CIFAR-100 meta); "
                               f"{README_HINT}")  # fmt: skip
            self.class_names = list(meta["fine_label_names"])
            self.num_classes = len(self.class_names)
        if len(self.images) != len(self.labels):
            raise ValueError(f"CIFAR-100 {split}: {len(self.images)} images but {len(self.labels)} labels")
        bad = (self.labels < 0) | (self.labels >= self.num_classes)  # (N,)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"CIFAR-100 {split}: label {int(self.labels[i])} of row {i} is outside 0..{self.num_classes - 1} "
                f"({int(bad.sum())} such rows; the class count comes from meta's fine_label_names)"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        image = self.images[idx].float() / 255.0  # (3, 32, 32) in [0, 1]
        if self.train:
            image = make_views(image, self.num_views, True, 4, CIFAR100_MEAN, CIFAR100_STD)  # (V, 3, 32, 32)
        else:
            image = _normalize(image, CIFAR100_MEAN, CIFAR100_STD)
        return {"image": image, "label": self.labels[idx], "index": torch.tensor(idx)}


def _load_hf_cifar(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """Read CIFAR-100 through ``datasets``: a hub id (from the local cache unless online) or parquet files."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("data.hf_dataset needs the 'datasets' package: pip install 'pckd[hf]'") from err
    path = Path(name)
    if path.exists():
        if path.is_file() and not path.name.startswith(split):
            # one file cannot hold both splits: reading it for every split would evaluate on the training images
            raise ValueError(
                f"data.hf_dataset={name!r}: a single parquet file serves only the split its name starts with, not "
                f"{split!r}; name a folder holding '{split}*.parquet' and the other split's files; {README_HINT}"
            )
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob(f"**/{split}*.parquet"))
        if not files:
            raise FileNotFoundError(f"data.hf_dataset={name!r}: no '{split}*.parquet' file; {README_HINT}")
        ds = datasets.load_dataset("parquet", data_files={split: files}, split=split)
    else:
        ds = datasets.load_dataset(name, split=split)
    for key in ("img", "fine_label"):
        if key not in ds.column_names:
            raise KeyError(f"data.hf_dataset={name!r}: missing column {key!r} (have {ds.column_names})")
    images = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in ds["img"]])
    names = getattr(ds.features["fine_label"], "names", None)  # a ClassLabel feature knows its names
    return images, torch.as_tensor(ds["fine_label"], dtype=torch.long), names  # (N, 3, 32, 32) uint8, (N,)


class ImageNetDataset(Dataset):
    """ILSVRC-2012 in ImageFolder layout (spec §4.3): ``<data_root>/{train,val}/<wnid>/*.JPEG``.

    Reconstruction: training = RandomResizedCrop(224) + flip once per image, then the V rotations;
    evaluation = resize 256 → centre crop 224. Item as :class:`CIFAR100Dataset` with 224×224 images, plus
    ``"path"``: the image file relative to ``data_root`` (``val/<wnid>/<name>.JPEG``); ``index`` is the position in
    ImageFolder's sorted order. ``class_names``: the wnids (folder names), in class-index order.
    """

    def __init__(self, data_root: str, split: Literal["train", "val"], train: bool, num_views: int = 4) -> None:
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        folder = Path(data_root) / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"data.data_root={data_root!r}: missing folder '{split}/<wnid>/*.JPEG'; {README_HINT}"
            )
        if train:
            tf = transforms.Compose(
                [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
            )
        else:
            tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
        try:
            self.folder = ImageFolder(str(folder), transform=tf)
        except FileNotFoundError as err:  # torchvision names the class but not the folder, nor the setting
            empty = sorted(d.name for d in folder.iterdir() if d.is_dir() and not _holds_image(d))
            raise FileNotFoundError(
                f"data.data_root={data_root!r}: class folder(s) {[f'{split}/{d}' for d in empty[:5]]} hold no image "
                f"file ({err}); every class folder of '{split}/' needs at least one image (the class index comes "
                f"from the folder listing), so remove the empty folder from both splits or add its images; "
                f"{README_HINT}"
            ) from err
        other = Path(data_root) / ("val" if split == "train" else "train")
        if other.is_dir():  # class indices come from each folder's own listing: both must list the same wnids
            other_classes = sorted(d.name for d in other.iterdir() if d.is_dir())
            if other_classes != self.folder.classes:
                missing = sorted(set(other_classes) ^ set(self.folder.classes))
                raise ValueError(
                    f"data.data_root={data_root!r}: '{split}/' and '{other.name}/' hold different class folders "
                    f"({len(self.folder.classes)} vs {len(other_classes)}; in one only: {missing[:5]}), so the "
                    f"same class index would name different classes; {README_HINT}"
                )
        self.num_classes = len(self.folder.classes)
        self.class_names = list(self.folder.classes)
        self.labels = torch.as_tensor(self.folder.targets, dtype=torch.long)  # (N,) in item-index order
        self.data_root = Path(data_root)
        self.train, self.num_views = train, num_views

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        image, label = self.folder[idx]  # (3, 224, 224) in [0, 1]
        if self.train:
            image = make_views(image, self.num_views, False, 0, IMAGENET_MEAN, IMAGENET_STD)  # (V, 3, 224, 224)
        else:
            image = _normalize(image, IMAGENET_MEAN, IMAGENET_STD)
        path = Path(self.folder.samples[idx][0]).relative_to(self.data_root).as_posix()
        return {"image": image, "label": torch.tensor(label, dtype=torch.long), "index": torch.tensor(idx),
                "path": path}  # fmt: skip


def _holds_image(folder: Path) -> bool:
    """Whether ``folder`` (a class folder) holds a file that ImageFolder reads as an image, at any depth."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return any(p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS) for p in folder.rglob("*"))


def digits_splits(seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified index split of sklearn's 1,797 digits (spec §8c).

    ``teacher_train`` 1,000; ``train`` (student) 300 ⊂ teacher_train; ``test`` 497; ``val`` = the remaining 300
    images, in neither training set (model selection never uses ``test``).
    Deviation: the spec's counts (1,000 + 497) leave 300 images unassigned; they become ``val``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    idx = np.arange(len(y))
    teacher, rest = train_test_split(idx, train_size=1000, stratify=y, random_state=seed)
    val, test = train_test_split(rest, train_size=300, stratify=y[rest], random_state=seed)
    student, _ = train_test_split(teacher, train_size=300, stratify=y[teacher], random_state=seed)
    return {"teacher_train": np.sort(teacher), "train": np.sort(student), "val": np.sort(val), "test": np.sort(test)}


class DigitsDataset(Dataset):
    """scikit-learn's bundled 8×8 ``digits`` (no download), pixels scaled to [0, 1], one channel.

    ``label_noise`` > 0 flips that fraction of labels to a different random class (training split only;
    ``noisy_mask`` marks them). Item: ``{"image": (V, 1, 8, 8) if train else (1, 8, 8), "label", "index",
    "digits_index"}``: ``index`` is the position in the split, ``digits_index`` the row of ``load_digits()``.
    """

    class_names = None  # the class index is the digit

    def __init__(
        self,
        split: Literal["teacher_train", "train", "val", "test"],
        train: bool,
        num_views: int = 4,
        split_seed: int = 0,
        label_noise: float = 0.0,
        noise_seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        idx = digits_splits(split_seed)[split]
        self.images = torch.as_tensor(digits.images[idx], dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
        self.labels = torch.as_tensor(digits.target[idx], dtype=torch.long)  # (N,)
        self.rows = torch.as_tensor(idx, dtype=torch.long)  # (N,) rows of load_digits()
        self.noisy_mask = torch.zeros(len(idx), dtype=torch.bool)
        if label_noise > 0:
            g = torch.Generator().manual_seed(noise_seed)
            flip = torch.randperm(len(idx), generator=g)[: int(round(label_noise * len(idx)))]
            shift = torch.randint(1, 10, (len(flip),), generator=g)
            self.labels[flip] = (self.labels[flip] + shift) % 10  # a different class
            self.noisy_mask[flip] = True
        self.train, self.num_views = train, num_views

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        image = self.images[idx]  # (1, 8, 8)
        if self.train:
            image = make_views(image, self.num_views, False, 0, None, None)  # (V, 1, 8, 8)
        return {"image": image, "label": self.labels[idx], "index": torch.tensor(idx), "digits_index": self.rows[idx]}


class PCKDDataModule(SplitLoaders, pl.LightningDataModule):
    """Picks the reader by ``dataset`` and serves 4-view training batches and plain evaluation batches."""

    predict_split = "predict"

    def __init__(
        self,
        dataset: DatasetName = "cifar100",
        data_root: str = "data",
        hf_dataset: str | None = None,
        num_views: int = 4,
        batch_size: int = 64,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        digits_split_seed: int = 0,
        label_noise: float = 0.0,
        generate_demo_data: bool = False,
        drop_last: bool = True,
    ) -> None:
        """
        Args:
            dataset: which reader (spec §4): CIFAR-100 pickles, ImageNet folders, or sklearn digits.
            data_root: folder holding ``cifar-100-python/`` (CIFAR) or ``train/``, ``val/`` (ImageNet).
            hf_dataset: CIFAR-100 only: read from this HF datasets id or local parquet file/folder instead.
            num_views: views per training image; 4 = the rotations of spec §3.1, 1 = plain training (CE, KD).
            batch_size: images per training batch (each gives ``num_views`` network inputs); spec §3.9: 64.
            eval_batch_size: images per evaluation batch (spec §3.9: 32).
            num_workers: DataLoader workers.
            pin_memory: DataLoader pin_memory.
            persistent_workers: DataLoader persistent_workers (only with workers > 0).
            train_split: training split; default ``train``.
            val_split: validation split; default ``test`` for CIFAR-100 (RepDistiller evaluates every epoch on
                the test set), ``val`` for ImageNet and digits; ``none`` disables validation.
            test_split: test split; default ``test`` (ImageNet: ``val``).
            digits_split_seed: seed of the stratified digits split.
            label_noise: digits only: fraction of training labels flipped (spec §8c preview check).
            generate_demo_data: CIFAR-100 only: when ``<data_root>/cifar-100-python/`` is absent, write a tiny
                random folder in the official format there (10 classes, 4 train + 2 test images each; spec §8a).
            drop_last: leave out the last training batch of an epoch when it holds fewer than ``batch_size`` images
                (true: every step sees a full batch). The release's loader keeps it (CIFAR-100 at batch 64: a final
                batch of 16 images each epoch); false does the same. Evaluation never drops images.
        """
        super().__init__()
        check_choice("data.dataset", dataset, get_args(DatasetName))  # else a KeyError naming no key
        self.save_hyperparameters()
        check_range("data.num_views", num_views, ge=1, le=4, integer=True)  # a fifth view would repeat rotation 0
        check_range("data.batch_size", batch_size, ge=1, integer=True)
        check_range("data.eval_batch_size", eval_batch_size, ge=1, integer=True)
        check_range("data.label_noise", label_noise, ge=0, lt=1)
        check_range("data.num_workers", num_workers, ge=0, integer=True)
        if generate_demo_data and (dataset != "cifar100" or hf_dataset):
            raise ValueError("data.generate_demo_data writes CIFAR-100 pickles: it needs data.dataset=cifar100 "
                             "and no data.hf_dataset")  # fmt: skip
        defaults = {
            "cifar100": ("train", "test", "test"),
            "imagenet": ("train", "val", "val"),
            "digits": ("train", "val", "test"),
        }[dataset]
        self.train_split = train_split or defaults[0]
        self.val_split = val_split or defaults[1]
        self.test_split = test_split or defaults[2]
        self.num_classes = {"cifar100": 100, "imagenet": 1000, "digits": 10}[dataset]
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        h = self.hparams
        if h.generate_demo_data and not (Path(h.data_root) / "cifar-100-python").is_dir():
            from .testing import write_cifar100_python

            write_cifar100_python(h.data_root)

    def _build(self, split: str, train: bool) -> Dataset:
        h = self.hparams
        if h.dataset == "cifar100":
            return CIFAR100Dataset(h.data_root, split, train, h.num_views, h.hf_dataset)
        if h.dataset == "imagenet":
            return ImageNetDataset(h.data_root, split, train, h.num_views)
        noise = h.label_noise if train else 0.0
        return DigitsDataset(split, train, h.num_views, h.digits_split_seed, noise)

    def setup(self, stage: str | None = None) -> None:
        """Build the stage's splits; ``num_classes`` becomes the class count their files give (CIFAR-100: meta's
        fine_label_names; ImageNet: the class folders), for every stage, so the module can check it against
        ``model.config.num_classes`` before any batch runs."""
        if stage in ("fit", None):
            self.datasets["train"] = self._build(self.train_split, train=True)
        if stage in ("fit", "validate", None) and self.val_split != "none":
            self.datasets["val"] = self._build(self.val_split, train=False)
        if stage in ("test", None):
            self.datasets["test"] = self._build(self.test_split, train=False)
        if stage == "predict":
            self.datasets["predict"] = self._build(self.test_split, train=False)
        counts = {getattr(ds, "num_classes", self.num_classes) for ds in self.datasets.values()}
        self.num_classes = max(counts, default=self.num_classes)

    def train_labels(self) -> torch.Tensor:
        """Labels (N,) of the training split, position i = the item with ``index`` i (CRD's memory holds one row
        per training image and draws each anchor's negatives from the other classes)."""
        if "train" not in self.datasets:
            raise RuntimeError("PCKDDataModule.train_labels: the training split is built by setup('fit')")
        return self.datasets["train"].labels.clone()

    def class_names(self, split: str = "predict") -> list[str] | None:
        """Names of the class indices as the split's files give them (CIFAR-100 meta / HF feature, ImageNet wnids);
        None for digits, or when the split is not set up."""
        return getattr(self.datasets.get(split), "class_names", None)

    def _loader(self, key: str, train: bool) -> DataLoader:
        """Evaluation loaders (val/test/predict) under several processes give each image to exactly one process:
        Lightning's default DistributedSampler would pad the last round with repeated images, which the epoch's
        top-1 / top-5 accuracy would then count twice. The module accumulates in torchmetrics states (no per-step
        collective), so ranks may hold different numbers of images."""
        h = self.hparams
        data = self.datasets[key]
        return DataLoader(
            data,
            batch_size=h.batch_size if train else h.eval_batch_size,
            shuffle=train,
            sampler=None if train else evaluation_sampler(data, self.trainer, unit="images"),
            # with drop_last false under several processes, the distributed sampler pads every rank to the same
            # image count, so the ranks' last batches still agree in size (L_CC gathers them)
            drop_last=train and h.drop_last,
            **worker_options(h),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", False) if "val" in self.datasets else []
