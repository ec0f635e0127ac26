"""Numeric options outside their range are refused where configs, modules, data modules, datasets and the loss are
built, naming the key as a YAML config writes it; boundary values that keep a meaning (weights of 0, clipping off,
no warm-up, zero node caps) are accepted."""

import math
import re

import pytest

from shenet.data import DigitsDataset, MSRVTTDataset, SHENetDataModule
from shenet.hierarchy import ParserConfig
from shenet.losses import SHENetContrastiveLoss
from shenet.models import SHENet, SHENetConfig
from shenet.module import SHENetModule


def _config(**kw):
    return SHENetConfig(**{"clip_model": "custom", "random_init": True, **kw})


CONFIG = [
    ("custom_embed_dim", 0),
    ("custom_image_size", 0),
    ("custom_patch_size", 0),
    ("custom_vision_width", -64),
    ("custom_vision_layers", -1),
    ("custom_vision_head_width", 0),
    ("custom_text_width", 0),
    ("custom_text_layers", 0),
    ("custom_text_heads", 0),
    ("custom_context_length", 0),
    ("temporal_layers", 0),
    ("temporal_heads", 0),
    ("max_frames", 0),
    ("max_frames", 2.5),
    ("tau_frame", math.nan),  # NaN passed the old `<= 0` test
    ("tau_patch", math.nan),
]

MODULE = [
    ("lr", -1e-4),
    ("coef_lr", -1.0),
    ("weight_decay", -0.2),
    ("warmup_proportion", -0.1),
    ("warmup_proportion", 1.5),
    ("eps", 0.0),
    ("max_grad_norm", math.nan),
    ("eval_text_chunk", 0),
    ("eval_video_chunk", 0),
]

DATA = [
    ("max_frames", 0),
    ("image_size", 0),
    ("fps", 0.0),
    ("max_words", 2),
    ("batch_size", 0),
    ("eval_batch_size", 0),
    ("num_workers", -1),
    ("demo_num_train", 0),
    ("demo_num_test", 0),
]

PARSER = [("max_verbs", -1), ("max_nouns", 1.5), ("paragraph_max_adjs", -2)]


@pytest.mark.parametrize(("key", "value"), CONFIG)
def test_config_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.config.{key}={value!r}")):
        _config(**{key: value})


@pytest.mark.parametrize(
    ("kw", "keys"),
    [
        (
            dict(custom_vision_width=32, custom_vision_head_width=64),
            ("custom_vision_head_width", "custom_vision_width"),
        ),
        (dict(custom_text_width=64, custom_text_heads=3), ("custom_text_heads", "custom_text_width")),
    ],
)
def test_config_refuses_inconsistent_sizes(kw, keys):
    with pytest.raises(ValueError, match=".*".join(re.escape(f"model.config.{k}={kw[k]}") for k in keys)):
        _config(**kw)


def test_seqtransf_heads_must_divide_the_embedding_dim():
    with pytest.raises(ValueError, match=r"model\.config\.temporal_heads=3 .*model\.config\.custom_embed_dim=32"):
        SHENet(_config(temporal="seqTransf", temporal_layers=1, temporal_heads=3, custom_embed_dim=32))


@pytest.mark.parametrize(("key", "value"), MODULE)
def test_module_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.{key}={value!r}")):
        SHENetModule(_config(), **{key: value})


@pytest.mark.parametrize(("betas", "key"), [((0.9, 1.0), "model.betas[1]=1.0"), ((-0.1, 0.98), "model.betas[0]=-0.1")])
def test_module_refuses_betas(betas, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        SHENetModule(_config(), betas=betas)


def test_loss_refuses_negative_aux_weight():
    with pytest.raises(ValueError, match=re.escape("model.aux_weight=-0.5")):
        SHENetContrastiveLoss(aux_weight=-0.5)


@pytest.mark.parametrize(("key", "value"), DATA)
def test_datamodule_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"data.{key}={value!r}")):
        SHENetDataModule(dataset="digits", **{key: value})


@pytest.mark.parametrize(("key", "value"), [("max_frames", 0), ("image_size", -32), ("fps", -1.0)])
def test_dataset_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"data.{key}={value!r}")):
        MSRVTTDataset(".", "test", **{key: value})


@pytest.mark.parametrize(
    ("split", "kw", "key"),
    [("test", dict(num_videos=0), "data.demo_num_test=0"), ("train", dict(image_size=0), "data.image_size=0")],
)
def test_digits_dataset_refuses(split, kw, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        DigitsDataset(split, **kw)


@pytest.mark.parametrize(("key", "value"), PARSER)
def test_parser_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"data.parser.{key}={value!r}")):
        ParserConfig(**{key: value})


def test_boundary_values_are_accepted():
    cfg = _config(custom_vision_layers=0, sim_weights=[1.0, 0.0, 0.0])
    module = SHENetModule(
        cfg, lr=0.0, weight_decay=0.0, warmup_proportion=0.0, betas=(0.0, 0.0), max_grad_norm=0.0, aux_weight=0.0
    )
    assert module.hparams.max_grad_norm == 0.0 and module.loss.aux_weight == 0.0
    assert SHENetModule(_config(), warmup_proportion=1.0, max_grad_norm=-1.0).hparams.warmup_proportion == 1.0
    dm = SHENetDataModule(dataset="digits", num_workers=0, max_words=3, max_frames=1, fps=0.5)
    assert dm.hparams.num_workers == 0
    parser = ParserConfig(max_verbs=0, max_nouns=0, max_adjs=0)
    assert parser.caps == {"verb": 0, "noun": 0, "adj": 0}
    assert SHENetContrastiveLoss(aux_weight=0.0).aux_weight == 0.0


@pytest.mark.parametrize(
    ("weights", "key"),
    [([1.0, math.nan, 1.0], "model.config.sim_weights[1]"), ([0.0, 1.0, 1.0], "model.config.sim_weights[0]")],
)
def test_sim_weights_refused_one_by_one(weights, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        _config(sim_weights=weights)
