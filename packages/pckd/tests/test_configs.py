"""Every shipped YAML parses against the CLI (as --print_config does); option values outside their choices are
refused when a module or data module is built in Python."""

import re

import pytest
import torch
from mmzoo.cli import shipped_configs

from pckd.cli import main
from pckd.data import PCKDDataModule
from pckd.models import PCKDConfig
from pckd.module import PCKDModule


@pytest.mark.parametrize("name", shipped_configs("pckd"))
def test_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    assert "student_arch" in capsys.readouterr().out


def _digits_module(**kw):
    cfg = PCKDConfig("digits_student", "digits_teacher", num_classes=10, in_channels=1, align_hidden_mult=1)
    return PCKDModule(cfg, teacher_random_init=True, **kw)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        # 'crdd' trained CE beside an unused teacher, 'SGD' ran Adam, 'cifar10' stopped in a bare KeyError
        (lambda: _digits_module(method="crdd"), "model.method='crdd'"),
        (lambda: _digits_module(optimizer="SGD"), "model.optimizer='SGD'"),
        (lambda: PCKDDataModule(dataset="cifar10"), "data.dataset='cifar10'"),
    ],
    ids=["method", "optimizer", "dataset"],
)
def test_misspelt_choice_is_refused_naming_its_key(build, key):
    with pytest.raises(ValueError, match=re.escape(key) + r": expected one of \["):
        build()


def test_each_listed_choice_is_accepted():
    for method in ("ce", "kd", "crd", "pckd"):
        assert _digits_module(method=method).hparams.method == method
    assert isinstance(_digits_module(optimizer="sgd").configure_optimizers()["optimizer"], torch.optim.SGD)
    assert isinstance(_digits_module(optimizer="adam").configure_optimizers()["optimizer"], torch.optim.Adam)
    for dataset in ("cifar100", "imagenet", "digits"):
        assert PCKDDataModule(dataset=dataset).hparams.dataset == dataset
