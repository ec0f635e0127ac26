"""Numeric options outside their range are refused where configs, modules, data modules, readers and losses are
built, naming the key as a YAML config writes it; boundary values that keep a meaning (loss weights of 0, no
warm-up, zero k-medoids iterations, the adaptive kNN k) are accepted."""

from __future__ import annotations

import math
import re

import pytest
from rtqvl_testlib import tiny_config, tiny_vision

from rtqvl.data import RetrievalDataset, RTQDataModule
from rtqvl.losses import AnswerLoss, CaptionLoss
from rtqvl.models import TextConfig
from rtqvl.module import RTQModule

CONFIG = [
    ("k_test", 0),
    ("queue_size", 0),
    ("momentum", 1.5),
    ("init_std", 0.0),
    ("embed_dim", 0),
    ("temp_init", 0.0),
    ("temp_init", math.nan),
    ("max_text_len", 2),
    ("max_caption_len", 0),
    ("num_beams", 0),
    ("gen_max_len", 0),
    ("gen_min_len", -1),
    ("repetition_penalty", 0.0),
    ("num_choices", 0),
]

VISION = [
    ("image_size", 0),
    ("patch_size", 0),
    ("hidden_size", 0),
    ("num_layers", -1),
    ("num_heads", 0),
    ("mlp_dim", 0),
    ("layer_norm_eps", 0.0),
    ("num_frames", 0),
    ("num_segments", 0),
    ("cluster_block", 1.5),
    ("spectral_sigma", 0.0),
    ("spectral_knn_k", 2.5),
    ("shift_fold_div", 1),
    ("cluster_tokens", 0),
    ("kmedoids_max_iter", -1),
    ("num_proxies", 0),
    ("drop_path_rate", 1.5),
    ("grad_checkpoint_last", -1),
]

TEXT = [
    ("hidden_size", 0),
    ("num_layers", 0),
    ("num_heads", 0),
    ("intermediate_size", 0),
    ("max_position_embeddings", 0),
    ("dropout", 1.5),
    ("layer_norm_eps", -1e-12),
]

MODULE = [
    ("lr", -1e-5),
    ("warmup_lr", -1e-7),
    ("min_lr", -1.0),
    ("weight_decay", -0.04),
    ("warmup_steps", 2.5),
    ("alpha", 1.5),
    ("alpha", -0.4),
    ("alpha_ramp_epochs", math.nan),
    ("itc_weight", -1.0),
    ("itm_weight", -1.0),
    ("label_smoothing", 1.5),
]

DATA = [
    ("num_frames", 0),
    ("image_size", 0),
    ("batch_size", 0),
    ("eval_batch_size", 0),
    ("num_workers", -1),
    ("demo_num_train", 0),
    ("demo_num_test", 1),
]


def _text(**over):
    kw = dict(vocab_path="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, dropout=0.0)
    return TextConfig(**{**kw, **over})


@pytest.mark.parametrize(("key", "value"), CONFIG)
def test_config_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.config.{key}={value!r}")):
        tiny_config(**{key: value})


@pytest.mark.parametrize(("key", "value"), VISION)
def test_vision_config_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.config.vision.{key}={value!r}")):
        tiny_vision(**{key: value})


@pytest.mark.parametrize(("key", "value"), TEXT)
def test_text_config_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.config.text.{key}={value!r}")):
        _text(**{key: value})


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (
            lambda: tiny_config(gen_min_len=7, gen_max_len=6),
            r"model\.config\.gen_min_len=7 .*model\.config\.gen_max_len=6",
        ),
        (
            lambda: tiny_config(max_text_len=40, text=_text(max_position_embeddings=32)),
            r"model\.config\.max_text_len=40 .*model\.config\.text\.max_position_embeddings=32",
        ),
        (lambda: _text(num_heads=3), r"model\.config\.text\.num_heads=3 .*model\.config\.text\.hidden_size=64"),
        (
            lambda: tiny_vision(num_heads=3),
            r"model\.config\.vision\.num_heads=3 .*model\.config\.vision\.hidden_size=64",
        ),
        (
            lambda: tiny_vision(patch_size=5),
            r"model\.config\.vision\.image_size=32 .*model\.config\.vision\.patch_size=5",
        ),
        (
            lambda: tiny_vision(num_segments=3),
            r"model\.config\.vision\.num_segments=3 .*model\.config\.vision\.num_frames",
        ),
        (
            lambda: tiny_vision(temporal_block=5),
            r"model\.config\.vision\.cluster_block .*model\.config\.vision\.num_layers",
        ),
    ],
)
def test_inconsistent_sizes_are_refused_naming_both_keys(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


@pytest.mark.parametrize(("key", "value"), MODULE)
def test_module_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.{key}={value!r}")):
        RTQModule(tiny_config(), **{key: value})


@pytest.mark.parametrize(("betas", "key"), [((0.9, 1.0), "model.betas[1]=1.0"), ((-0.1, 0.999), "model.betas[0]=-0.1")])
def test_module_refuses_betas(betas, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        RTQModule(tiny_config(), betas=betas)


@pytest.mark.parametrize("loss", [CaptionLoss, AnswerLoss])
def test_losses_refuse_label_smoothing(loss):
    with pytest.raises(ValueError, match=re.escape("model.label_smoothing=-0.1")):
        loss(label_smoothing=-0.1)


@pytest.mark.parametrize(("key", "value"), DATA)
def test_datamodule_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"data.{key}={value!r}")):
        RTQDataModule(**{key: value})


@pytest.mark.parametrize(("key", "value"), [("num_frames", 0), ("image_size", -32)])
def test_reader_refuses(key, value):
    kw = {"num_frames": 4, "image_size": 32, key: value}
    with pytest.raises(ValueError, match=re.escape(f"data.{key}={value!r}")):
        RetrievalDataset(".", "test", ["test.jsonl"], "ann", "videos", kw["num_frames"], kw["image_size"], False)


def test_boundary_values_are_accepted():
    vision = tiny_vision(kmedoids_max_iter=0, spectral_knn_k=0, drop_path_rate=0.0, grad_checkpoint_last=0)
    cfg = tiny_config(vision=vision, momentum=1.0, gen_min_len=0, init_std=None)
    assert cfg.vision.kmedoids_max_iter == 0 and cfg.gen_min_len == 0
    assert tiny_config(gen_min_len=6, gen_max_len=6, max_text_len=512, text=_text(max_position_embeddings=512))
    module = RTQModule(
        tiny_config(),
        lr=0.0,
        min_lr=0.0,
        weight_decay=0.0,
        warmup_steps=0,
        alpha=0.0,
        alpha_ramp_epochs=0.0,
        itc_weight=0.0,
        itm_weight=1.0,
        label_smoothing=0.0,
    )
    assert module.hparams.itc_weight == 0.0
    assert RTQModule(tiny_config(), warmup_steps=-1, alpha=1.0).hparams.warmup_steps == -1  # <= 0: no warm-up
    assert RTQDataModule(num_workers=0, demo_num_test=2).hparams.num_workers == 0
    assert CaptionLoss(label_smoothing=0.0).label_smoothing == 0.0
