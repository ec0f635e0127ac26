"""Numeric options out of their range are refused where the config, module or data module is built, naming the key
as a YAML config writes it; boundary values that keep a meaning (a loss weight of 0, no region layer) are accepted."""

import math
import re

import pytest

from kevsr.data import KEVSRDataModule
from kevsr.models import KEVSRConfig
from kevsr.module import KEVSRModule

TINY = dict(
    dim=8,
    f2d_dim=4,
    f3d_dim=4,
    text_dim=4,
    region_dim=4,
    kg_dim=4,
    num_frames=2,
    num_regions=2,
    num_keywords=2,
    num_level1=2,
    num_level2=3,
    temporal_layers=1,
    temporal_heads=2,
    region_layers=1,
    region_heads=2,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("f2d_dim", 0),
        ("f3d_dim", -1),
        ("text_dim", 0),
        ("region_dim", 2.5),
        ("temporal_layers", 0),
        ("region_layers", -1),
        ("temporal_dropout", 1.0),
        ("temporal_dropout", -0.1),
        ("temporal_dropout", math.nan),
        ("temporal_heads", 0),
        ("temporal_heads", -2),
        ("region_heads", 0),
        ("num_frames", 2.5),  # the older `< 1` checks let fractional counts and NaN through
        ("init_std", math.nan),
    ],
)
def test_config_refuses(field, value):
    key = f"model.config.{field}"
    with pytest.raises(ValueError, match=re.escape(key)):
        KEVSRConfig(**{**TINY, field: value})


def test_config_accepts_boundaries():
    KEVSRConfig(**{**TINY, "region_layers": 0, "temporal_dropout": 0.0})
    # with a BERT temporal encoder its own config gives the temporal layers and heads
    KEVSRConfig(**{**TINY, "temporal_layers": 0, "temporal_heads": 0, "temporal_init_from_bert": "some/folder"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beta_t", -1.0),
        ("beta_nt", -0.5),
        ("beta_distill", -1.0),
        ("beta1", -1.0),
        ("beta2", math.nan),
        ("nt_beta1", -1.0),
        ("nt_beta2", -1.0),
        ("lr", -1e-4),
        ("weight_decay", -0.01),
        ("warmup_ratio", -0.1),
        ("warmup_ratio", 1.5),
        ("rp_accuracy", 0.0),
        ("rp_accuracy", 1.1),
        ("threshold", math.nan),
    ],
)
def test_module_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.{key}")):
        KEVSRModule(KEVSRConfig(**TINY), streams="temporal", **{key: value})


def test_module_accepts_boundaries():
    KEVSRModule(
        KEVSRConfig(**TINY),
        streams="temporal",
        beta_nt=0.0,
        beta_distill=0.0,
        nt_beta1=0.0,
        lr=0.0,
        weight_decay=0.0,
        warmup_ratio=0.0,
        rp_accuracy=1.0,
        threshold=-2.0,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_regions", 0),
        ("num_keywords", -1),
        ("kg_dim", 0),
        ("batch_size", 0),
        ("eval_batch_size", -8),
        ("batch_size", 2.0),
        ("num_workers", -1),
    ],
)
def test_datamodule_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"data.{key}")):
        KEVSRDataModule("unused", **{key: value})


def test_datamodule_accepts_no_workers():
    KEVSRDataModule("unused", num_workers=0, batch_size=1, eval_batch_size=1)
