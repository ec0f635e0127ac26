"""Numeric options out of their range are refused where the configs, module, data module and datasets are built,
naming the key as a YAML config writes it; boundary values that keep a meaning (a weight of 0, η = 0) are accepted."""

import math
import re

import pytest

from evedit.data import EVEDataModule, VideoFolderDataset
from evedit.metrics import MetricsConfig
from evedit.models import DepthConfig, EditConfig, ModelConfig, TCCConfig
from evedit.module import EVEModule


def _expect(key):
    return pytest.raises(ValueError, match=re.escape(key))


TINY = dict(backbone="tiny", depth_model="tiny")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tiny_channels", [32, 0]),
        ("tiny_channels", [48, 64]),  # GroupNorm(32) of a 48-wide block
        ("tiny_cross_attention_dim", 0),
        ("tiny_cross_attention_dim", 30),  # 4 text-encoder heads
        ("tiny_vocab_size", 4),
        ("tiny_max_length", 0),
    ],
)
def test_model_config_refuses(field, value):
    with _expect(f"model.model.{field}"):
        ModelConfig(**TINY, **{field: value})


def test_model_config_accepts_boundaries():
    ModelConfig(**TINY, tiny_channels=[16, 32], tiny_cross_attention_dim=4, tiny_vocab_size=8, tiny_max_length=1)
    ModelConfig(tiny_channels=[48, 64], tiny_vocab_size=0)  # the tiny_* keys are unused by the real backbones


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: DepthConfig(scale=math.nan), "model.edit.depth.scale"),
        (lambda: DepthConfig(smooth_window=0), "model.edit.depth.smooth_window"),
        (lambda: DepthConfig(smooth_window=4), "model.edit.depth.smooth_window"),  # 5 frames were averaged
        (lambda: DepthConfig(estimator_size=0), "model.edit.depth.estimator_size"),
        (lambda: TCCConfig(step=-0.1), "model.edit.tcc.step"),
        (lambda: TCCConfig(lambda_tmp=-1.0), "model.edit.tcc.lambda_tmp"),
        (lambda: TCCConfig(lambda_agr=math.nan), "model.edit.tcc.lambda_agr"),
        (lambda: EditConfig(guidance_scale=float("nan")), "model.edit.guidance_scale"),
        (lambda: EditConfig(eta=1.5), "model.edit.eta"),
        (lambda: EditConfig(eta=-0.1), "model.edit.eta"),
        (lambda: MetricsConfig(resize=0), "model.metrics.resize"),
    ],
)
def test_edit_configs_refuse(build, key):
    with _expect(key):
        build()


def test_edit_configs_accept_boundaries():
    DepthConfig(scale=0.0, smooth_window=1)
    DepthConfig(smooth_window=3)
    TCCConfig(step=0.0, lambda_tmp=0.0, lambda_agr=0.0)
    EditConfig(guidance_scale=0.0, eta=1.0)
    EditConfig(guidance_scale=-1.0)
    EditConfig(guidance_scale=1.0, eta=0.0)
    MetricsConfig(resize=1)


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_module_refuses_num_threads(value):
    with _expect("model.num_threads"):
        EVEModule(model=ModelConfig(**TINY), metrics=MetricsConfig(clip_path="tiny"), num_threads=value)


def test_module_accepts_num_threads(monkeypatch):
    class Built(Exception):
        pass

    def stop(cfg):  # the networks are built after the options are checked: stop there
        raise Built

    monkeypatch.setattr("evedit.module.build_components", stop)
    for value in (None, 1):
        with pytest.raises(Built):
            EVEModule(model=ModelConfig(**TINY), num_threads=value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_frames", 0),
        ("size", -32),
        ("frame_stride", 0),
        ("max_items", 0),
        ("max_items", -1),
        ("num_workers", -1),
    ],
)
def test_datamodule_refuses(key, value):
    with _expect(f"data.{key}"):
        EVEDataModule(**{key: value})


@pytest.mark.parametrize("key", ["demo_videos", "demo_frames", "demo_size"])
def test_datamodule_refuses_demo_sizes(key):
    with _expect(f"data.{key}"):
        EVEDataModule(generate_demo_data=True, **{key: 0})


def test_datamodule_accepts_boundaries():
    EVEDataModule(num_frames=1, size=1, max_items=None, num_workers=0)
    EVEDataModule(max_items=1, demo_videos=0)  # the demo sizes are unused without generate_demo_data


@pytest.mark.parametrize(("key", "kwargs"), [("data.num_frames", dict(num_frames=0)), ("data.size", dict(size=0))])
def test_dataset_names_the_key(tmp_path, key, kwargs):
    with _expect(key):
        VideoFolderDataset(tmp_path, **kwargs)
