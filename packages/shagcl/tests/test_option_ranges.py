"""Numeric options outside their range are refused where the config, module, data module or reader is built, naming
the key as a YAML config writes it; boundary values that keep a meaning (a coefficient of 0, null, no warm-up) still
build."""

import re

import pytest
from shagcl_testlib import tiny_config

from shagcl.data import GQA200Dataset, SGGDataModule, SyntheticFeaturesConfig, VG150Dataset
from shagcl.module import SHAGCLModule

CONFIG_CASES = [
    # the divide rule refused μ <= 1 only at setup; the rest were not refused at all
    ("model.config.group_mu", dict(group_mu=1.0)),
    ("model.config.group_min_count", dict(group_min_count=-1)),
    ("model.config.num_average_groups", dict(group_split="average", num_average_groups=0)),  # ZeroDivisionError
    ("model.config.kd_coefficient", dict(kd_coefficient=-1.0)),
    ("model.config.no_relation_penalty", dict(no_relation_penalty=-0.1)),
    ("model.config.later_nms_threshold", dict(later_nms_threshold=1.5)),
    ("model.config.later_nms_threshold", dict(later_nms_threshold=float("nan"))),
    ("model.config.roi_channels", dict(roi_channels=0)),
    ("model.config.fpn_levels", dict(fpn_levels=0)),
    # roi_resolution 0 with rect_size -1 passed the rect-size relation
    ("model.config.roi_resolution", dict(union_features="official", roi_resolution=0, rect_size=-1)),
    # the older `< 1` / `< 2` checks let fractional sizes and NaN through, and named no value for the class counts
    ("model.config.hidden_dim", dict(hidden_dim=32.5)),
    ("model.config.num_heads", dict(num_heads=float("nan"))),
    ("model.config.num_predicates=1", dict(num_predicates=1)),
]


@pytest.mark.parametrize(("key", "kw"), CONFIG_CASES, ids=[f"{k}={v}" for k, v in CONFIG_CASES])
def test_config_refuses_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        tiny_config(**kw)


MODULE_CASES = [
    # torch.optim.SGD refused these only in configure_optimizers, without the key (momentum > 1: never)
    ("model.lr", dict(lr=-0.01)),
    ("model.momentum", dict(momentum=1.5)),
    ("model.weight_decay", dict(weight_decay=-1e-4)),
    # a negative factor made the lr negative; a negative warm-up was no warm-up
    ("model.warmup_factor", dict(warmup_factor=-0.1)),
    ("model.warmup_steps", dict(warmup_steps=-5)),
    ("model.plateau_factor", dict(plateau_factor=2.0)),
    ("model.plateau_patience", dict(plateau_patience=-1)),
    ("model.plateau_threshold", dict(plateau_threshold=-0.01)),
    ("model.max_lr_reductions", dict(max_lr_reductions=0)),  # stopped before the first step
    ("model.recall_ks", dict(recall_ks=(0, 50, 100))),
    ("model.predict_top_k", dict(predict_top_k=-5)),  # kept all but the last 5 triplets
    ("model.draw_images", dict(draw_images=-1)),
]


@pytest.mark.parametrize(("key", "kw"), MODULE_CASES, ids=[f"{k}={v}" for k, v in MODULE_CASES])
def test_module_refuses_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        SHAGCLModule(tiny_config(), **kw)


DATA_CASES = [
    # loaders refused these only when first built; the readers sliced with negative counts from the end
    ("data.batch_size", dict(batch_size=0)),
    ("data.test_batch_size", dict(test_batch_size=-1)),
    ("data.num_workers", dict(num_workers=-1)),
    ("data.num_val_images", dict(num_val_images=-10)),
    ("data.max_pairs", dict(max_pairs=0)),
    ("data.max_fg_pairs", dict(max_fg_pairs=-1)),
    ("data.max_fg_pairs=300 exceeds data.max_pairs=256", dict(max_pairs=256, max_fg_pairs=300)),
    ("data.samples_per_gt_rel", dict(samples_per_gt_rel=0)),  # torch.multinomial in SGDet training
    ("data.max_train_images", dict(max_train_images=0)),
    ("data.max_eval_images", dict(max_eval_images=-1)),
    ("data.box_scale", dict(box_scale=0)),
    ("data.gqa_skip_test_entry", dict(dataset="gqa200", gqa_skip_test_entry=0)),
    ("data.demo_num_images", dict(demo_num_images=0)),
    ("data.demo_num_predicates", dict(demo_num_predicates=0)),
]


@pytest.mark.parametrize(("key", "kw"), DATA_CASES, ids=[f"{k}={v}" for k, v in DATA_CASES])
def test_datamodule_refuses_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        SGGDataModule(**kw)


READER_CASES = [
    ("data.max_pairs", lambda: VG150Dataset("missing", "train", max_pairs=-1)),
    ("data.num_val_images", lambda: VG150Dataset("missing", "val", num_val_images=-1)),
    ("data.box_scale", lambda: VG150Dataset("missing", "train", box_scale=-1024)),
    ("max_images", lambda: GQA200Dataset("missing", "test", max_images=0)),
    ("data.gqa_skip_test_entry", lambda: GQA200Dataset("missing", "test", skip_test_entry=-1)),
]


@pytest.mark.parametrize(("key", "build"), READER_CASES, ids=[k for k, _ in READER_CASES])
def test_reader_refuses_out_of_range_value_before_reading(key, build):
    # before: a FileNotFoundError of the missing files, or (with the files) silently truncated splits
    with pytest.raises(ValueError, match=re.escape(key)):
        build()


SYNTHETIC_CASES = [
    ("data.synthetic.feature_dim", dict(feature_dim=0)),
    ("data.synthetic.noise", dict(noise=-1.0)),
    ("data.synthetic.det_logit_scale", dict(det_logit_scale=-3.0)),
    ("data.synthetic.box_jitter", dict(box_jitter=-0.05)),
    ("data.synthetic.pooled_levels", dict(pooled_levels=0)),
]


@pytest.mark.parametrize(("key", "kw"), SYNTHETIC_CASES, ids=[f"{k}={v}" for k, v in SYNTHETIC_CASES])
def test_synthetic_features_refuse_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        SyntheticFeaturesConfig(**kw)


def test_boundary_values_are_accepted():
    cfg = tiny_config(kd_coefficient=0.0, no_relation_penalty=0.0, group_min_count=0, later_nms_threshold=1.0)
    assert cfg.kd_coefficient == 0.0
    module = SHAGCLModule(
        cfg, lr=0.0, momentum=0.0, weight_decay=0.0, warmup_steps=0, warmup_factor=0.0, plateau_patience=0,
        plateau_threshold=0.0, plateau_factor=1.0, draw_images=0, predict_top_k=1,
    )  # fmt: skip
    assert module.hparams.warmup_steps == 0 and module.draw_images == 0
    dm = SGGDataModule(num_val_images=0, num_workers=0, max_train_images=None, gqa_skip_test_entry=None)
    assert dm.hparams.gqa_skip_test_entry is None
    assert SyntheticFeaturesConfig(noise=0.0, box_jitter=0.0, det_logit_scale=0.0).noise == 0.0
