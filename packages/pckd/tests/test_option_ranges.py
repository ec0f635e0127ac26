"""Numeric options outside their range are refused where the config, module or data module is built, naming the
key as a YAML config writes it; boundary values that keep a meaning (a loss weight of 0, momentum 0) still build."""

import math
import re

import pytest

from pckd.data import PCKDDataModule
from pckd.models import PCKDConfig
from pckd.module import PCKDModule


def _config(in_channels=1):
    return PCKDConfig("digits_student", "digits_teacher", num_classes=10, in_channels=in_channels, align_hidden_mult=1)


def _module(**kw):
    return PCKDModule(_config(), teacher_random_init=True, **kw)


MODULE_CASES = [
    # a negative loss weight trained uphill on that term without a word; inf ended in a non-finite loss
    ("model.w_ce", dict(w_ce=-1.0)),
    ("model.w_kd", dict(w_kd=-0.5)),
    ("model.w_kd", dict(w_kd=math.inf)),
    ("model.w_cc", dict(w_cc=-0.05)),
    ("model.w_ca", dict(w_ca=-1.0)),
    ("model.w_fa", dict(w_fa=-20.0)),
    ("model.w_crd", dict(method="crd", w_crd=-0.8)),
    ("model.w_ce", dict(w_ce=float("nan"))),
    # L_CC's own check said "L_CC temperatures must be > 0" without the key
    ("model.cc_temperature", dict(cc_temperature=0.0)),
    ("model.cc_base_temperature", dict(cc_base_temperature=-0.07)),
    # torch.optim refused these only in configure_optimizers (or, momentum > 1, never)
    ("model.momentum", dict(momentum=1.5)),
    ("model.momentum", dict(momentum=-0.1)),
    ("model.weight_decay", dict(weight_decay=-5e-4)),
    # a negative factor made the lr negative after the first milestone; a negative epoch never decayed
    ("model.lr_gamma", dict(lr_gamma=-0.1)),
    ("model.lr_milestones", dict(lr_milestones=(150, -1))),
    ("model.lr_milestones", dict(lr_milestones=(1.5,))),
    # the older `<= 0` checks let NaN and fractional counts through
    ("model.kd_temperature", dict(kd_temperature=float("nan"))),
    ("model.preview_lambda", dict(preview_lambda=float("nan"))),
    ("model.crd_num_negatives", dict(method="crd", crd_num_negatives=2.5)),
]


@pytest.mark.parametrize(("key", "kw"), MODULE_CASES, ids=[f"{k}={v}" for k, v in MODULE_CASES])
def test_module_refuses_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        _module(**kw)


def test_config_refuses_zero_input_channels():
    with pytest.raises(ValueError, match=re.escape("model.config.in_channels")):
        _config(in_channels=0)


@pytest.mark.parametrize(
    ("key", "kw"),
    [
        ("data.num_workers", dict(num_workers=-1)),
        ("data.label_noise", dict(label_noise=float("nan"))),
        ("data.eval_batch_size=0", dict(eval_batch_size=0)),  # the old message named both keys and no value
        ("data.num_views", dict(num_views=2.5)),
        (
            "data.num_views=5: must be an integer ≥ 1 and ≤ 4",
            dict(num_views=5),
        ),  # view 4 = rot90 by 360 degrees = view 0
    ],
)
def test_datamodule_refuses(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        PCKDDataModule(dataset="digits", **kw)


def test_boundary_values_are_accepted():
    # weight 0 = the ablations (w/o KD, w/o L_CC, ...); momentum 0 and 1, no decay, constant lr, no workers
    module = _module(w_ce=0.0, w_kd=0.0, w_cc=0.0, w_ca=0.0, w_fa=0.0, momentum=0.0, weight_decay=0.0)
    assert module.hparams.w_cc == 0.0
    assert _module(momentum=1.0, lr_gamma=0.0, lr_milestones=(0,)).hparams.momentum == 1.0
    assert _module(lr_milestones=()).hparams.lr_milestones == ()
    assert _module(method="crd", w_crd=0.0, crd_num_negatives=4, crd_feat_dim=4).hparams.w_crd == 0.0
    assert _config(in_channels=3).in_channels == 3
    assert PCKDDataModule(dataset="digits", num_workers=0).hparams.num_workers == 0
