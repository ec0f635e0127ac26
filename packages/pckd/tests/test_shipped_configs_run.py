"""The shipped paper configs run end to end (fit, then test on ``last.ckpt``) on tiny data in the official layouts.

Each case keeps every key of its shipped config except the data root, the teacher weights (a random file in the
official format, written by :mod:`pckd.testing`), batch sizes / loader workers, and the trainer's length, device and
logger. Representatives (architectures are kept as shipped; only the teacher weights are random):

* ``cifar100_wrn402_wrn162`` (PCKD on CIFAR-100, RepDistiller teacher file): also stands for every other
  ``cifar100_<teacher>_<student>`` pair (same method, other architectures) and the ablations ``_pckd_wo_cc``,
  ``_pckd_wo_kd``, ``_pckd_wo_preview`` (loss weights / the preview switch only).
* ``cifar100_wrn402_wrn162_kd`` (vanilla KD baseline).
* ``cifar100_wrn402_wrn162_crd`` (CRD baseline): also stands for ``_crd_kd`` (``w_kd`` only).
* ``cifar100_wrn402_wrn162_ce`` (student trained with cross-entropy alone).
* ``teacher_cifar100_resnet56`` (teacher training): stands for every ``teacher_cifar100_<arch>`` (arch only).
* ``imagenet_resnet34_resnet18`` (PCKD on ILSVRC-2012 folders): ``model.teacher_checkpoint: IMAGENET1K_V1`` is kept
  as shipped; a random torchvision ResNet-34 file is written into a temporary torch hub cache.
"""

import math
from pathlib import Path

import pytest
import torch
from mmzoo.testing import IN_PROCESS_LOADERS, ONE_BATCH_EACH, QUIET_CPU_RUN

from pckd.cli import main
from pckd.testing import (
    write_cifar100_python,
    write_imagenet_folder,
    write_repdistiller_checkpoint,
    write_torchvision_weights,
)

# (config, teacher arch of its RepDistiller file or None, training loss terms the README names for its method)
CIFAR_CASES = [
    ("cifar100_wrn402_wrn162", "wrn_40_2", ("ce", "kd", "cc", "ca", "fa", "preview_mean", "preview_hard_frac")),
    ("cifar100_wrn402_wrn162_kd", "wrn_40_2", ("ce", "kd")),
    ("cifar100_wrn402_wrn162_crd", "wrn_40_2", ("ce", "crd")),
    ("cifar100_wrn402_wrn162_ce", None, ("ce",)),
    ("teacher_cifar100_resnet56", None, ("ce",)),
]

SMALL = [
    "--data.batch_size", "2",
    "--data.eval_batch_size", "4",
    *IN_PROCESS_LOADERS,
    *QUIET_CPU_RUN,
    *ONE_BATCH_EACH,
]  # fmt: skip


def _fit_then_test(config: str, root: Path, extra: list[str], train_keys: tuple[str, ...], top5: bool) -> None:
    common = ["--config", config, *SMALL, "--trainer.default_root_dir", str(root / "run"), *extra]
    cli = main(args=["fit", *common])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    for key in (*(f"train/{k}" for k in train_keys), "train/loss", "val/acc1"):
        assert key in metrics, (config, key, sorted(metrics))
        assert math.isfinite(float(metrics[key])), (config, key)
    if top5:
        assert "val/acc5" in metrics
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    metrics = cli.trainer.callback_metrics
    for key in ("test/acc1", "test/acc1_last", "test/acc1_best", *(("test/acc5",) if top5 else ())):
        assert key in metrics and 0.0 <= float(metrics[key]) <= 100.0, (config, key)


@pytest.mark.parametrize(("config", "teacher", "train_keys"), CIFAR_CASES, ids=[c[0] for c in CIFAR_CASES])
def test_shipped_cifar100_config_runs(tmp_path, config, teacher, train_keys):
    # official pickles with 100 fine classes, one training and one test image each
    write_cifar100_python(tmp_path / "data", num_classes=100, n_train_per_class=1, n_test_per_class=1)
    extra = ["--data.data_root", str(tmp_path / "data")]
    if teacher is not None:
        ckpt = tmp_path / "teachers" / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"
        extra += ["--model.teacher_checkpoint", str(write_repdistiller_checkpoint(ckpt, teacher, 100))]
    _fit_then_test(config, tmp_path, extra, train_keys, top5=False)


def test_shipped_imagenet_config_runs(tmp_path, monkeypatch):
    write_imagenet_folder(tmp_path / "imagenet", num_classes=1000)  # the shipped 1000-way classifier
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # IMAGENET1K_V1 is read from this cache
    write_torchvision_weights(tmp_path / "hub", "tv_resnet34")
    extra = ["--data.data_root", str(tmp_path / "imagenet")]
    keys = ("ce", "kd", "cc", "ca", "fa", "preview_mean", "preview_hard_frac")
    _fit_then_test("imagenet_resnet34_resnet18", tmp_path, extra, keys, top5=True)
