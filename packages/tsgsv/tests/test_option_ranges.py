"""Numeric options out of their range are refused where the config, loss, module or data module is built, naming
the key as a YAML config writes it; boundary values that keep a meaning (a weight of 0, NMS off) are accepted."""

import math
import re

import pytest

from tsgsv.data import TSGVDataModule
from tsgsv.losses import TSGSVLoss
from tsgsv.metrics import GroundingEvalConfig
from tsgsv.models import TSGSVConfig
from tsgsv.module import TSGSVModule
from tsgsv.synthetic import SyntheticStreamConfig

TINY = dict(video_dim=8, text_dim=8, hidden_dim=8, ffn_dim=8, num_heads=2, compressor_tokens=[2])


def _expect(key):
    return pytest.raises(ValueError, match=re.escape(key))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("video_dim", 0),
        ("text_dim", -8),
        ("hidden_dim", 0),
        ("ffn_dim", 0),
        ("num_heads", 0),
        ("num_heads", -2),
        ("gru_layers", 0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("gru_dropout", 1.5),
        ("gate_dropout", math.nan),
        ("temperature", 0.0),
        ("temperature", -16.0),
    ],
)
def test_config_refuses(field, value):
    with _expect(f"model.config.{field}"):
        TSGSVConfig(**{**TINY, field: value})


def test_config_accepts_boundaries():
    TSGSVConfig(**{**TINY, "dropout": 0.0, "gru_dropout": 0.0, "gate_dropout": 0.0, "temperature": 1e-3})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recall_at", [1, 0]),
        ("recall_at", [1.5]),
        ("group_size", 0),
        ("downsample_stride", 0),
        ("chunk_interval", -1),
        ("min_num_segments", -1),
        ("max_proposal_len", -1),
        ("nms_threshold", -0.1),
        ("iou_thresholds", [0.3, 1.0]),
        ("iou_thresholds", [-0.1]),
        ("map_label_extension", -1.0),
    ],
)
def test_evaluation_refuses(field, value):
    with _expect(f"model.evaluation.{field}"):
        GroundingEvalConfig(**{field: value})


def test_evaluation_accepts_boundaries():
    GroundingEvalConfig(
        min_num_segments=0, max_proposal_len=0, nms_threshold=1.0, iou_thresholds=[0.0], map_label_extension=0.0
    )
    GroundingEvalConfig(max_proposal_len=None)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(kd_weight=-0.1), "model.kd_weight"),
        (dict(kd_weight=1.5), "model.kd_weight"),
        (dict(tpn_type="twinnet", kd_weight=-1.0), "model.kd_weight"),
        (dict(gamma=-1.0), "model.focal_gamma"),
        (dict(channel_weights=(0.5, 0.5)), "model.channel_weights"),
        (dict(channel_weights=(0.5, -0.5, 1.0)), "model.channel_weights"),
    ],
)
def test_loss_refuses(kwargs, key):
    with _expect(key):
        TSGSVLoss(8, **kwargs)


def test_loss_accepts_boundaries():
    TSGSVLoss(8, kd_weight=0.0, gamma=0.0, channel_weights=(0.0, 0.0, 1.0))
    TSGSVLoss(8, kd_weight=1.0)
    TSGSVLoss(8, tpn_type="twinnet", kd_weight=2.0)  # the regression term is only added, any λ ≥ 0 is a weight


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", -1e-3),
        ("weight_decay", -1e-4),
        ("warmup_epochs", -1.0),
        ("warmup_start_factor", -0.1),
        ("flat_fraction", 1.5),
        ("flat_fraction", -0.1),
        ("eval_window_batch", 0),
        ("kd_weight", 1.5),
        ("focal_gamma", -3.0),
    ],
)
def test_module_refuses(key, value):
    with _expect(f"model.{key}"):
        TSGSVModule(TSGSVConfig(**TINY), **{key: value})


def test_module_accepts_boundaries():
    TSGSVModule(TSGSVConfig(**TINY), lr=0.0, warmup_epochs=0.0, warmup_start_factor=0.0, flat_fraction=1.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("val_fraction", 0.0),
        ("val_fraction", 1.5),
        ("short_memory", 0),
        ("long_memory", -1),
        ("future_memory", 0),
        ("max_text_len", 0),
        ("batch_size", 0),
        ("min_frames", -1),
        ("num_workers", -1),
        ("label_widths", (0.25, 0.0, 0.21)),
        ("label_widths", (0.25, 0.25)),
    ],
)
def test_datamodule_refuses(key, value):
    with _expect(f"data.{key}"):
        TSGVDataModule(**{key: value})


def test_datamodule_refuses_mad_sampling_ratios():
    with _expect("data.pos_expansion_ratio"):
        TSGVDataModule(pos_expansion_ratio=-1.0)
    with _expect("data.neg_pos_ratio"):
        TSGVDataModule(pos_expansion_ratio=5.0, neg_pos_ratio=-1.0)


def test_datamodule_accepts_boundaries():
    TSGVDataModule(min_frames=0, num_workers=0, val_fraction=1.0, pos_expansion_ratio=None, neg_pos_ratio=-1.0)
    TSGVDataModule(gaussian_label=False, label_widths=(0.0, 0.0, 0.0))  # hard labels use no width
    TSGVDataModule(pos_expansion_ratio=5.0, neg_pos_ratio=0.0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"videos_per_split": (10, -1, 5)}, "data.demo.videos_per_split[1]"),
        ({"queries_per_video": 0}, "data.demo.queries_per_video"),
        ({"num_classes": 0}, "data.demo.num_classes"),
        ({"noise": -0.1}, "data.demo.noise"),
        ({"seconds_per_frame": 0.0}, "data.demo.seconds_per_frame"),
        ({"frames": (1, 10)}, "data.demo.frames[0]"),  # frame stamps divide by N - 1
        ({"frames": (200, 120)}, "data.demo.frames"),  # numpy drew from an empty range
        ({"events": (3, 9)}, "data.demo.events"),  # more events than the 8 distinct classes
        ({"event_length": (0, 5)}, "data.demo.event_length[0]"),
        ({"tokens": (6,)}, "data.demo.tokens"),
    ],
)
def test_demo_generator_refuses(kwargs, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        SyntheticStreamConfig(**kwargs)


def test_demo_generator_accepts_boundaries():
    cfg = SyntheticStreamConfig(videos_per_split=(1, 0, 0), frames=(2, 2), events=(8, 8), onset_frames=0, noise=0.0)
    assert cfg.events == (8, 8)
