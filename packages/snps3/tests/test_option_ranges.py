"""Numeric options outside their range are refused where configs, modules, data modules, readers and losses are
built, naming the key as a YAML config writes it; boundary values that keep a meaning (no warm-up, no flip, no
masking, a frozen momentum encoder, the default thread count) are accepted."""

import math
import re

import pytest

from snps3.data import CaptionProcessor, FrameTransform, RetrievalDataset, SNPS3DataModule
from snps3.losses import MoCoLoss
from snps3.models import SNPS3Config
from snps3.module import SNPS3Module

CONFIG = [
    ("vocab_size", 0),
    ("hidden_size", 0),
    ("num_layers", 0),
    ("num_heads", 0),
    ("intermediate_size", -1),
    ("max_position_embeddings", 0),
    ("sep_token_id", -1),
    ("mask_token_id", 2.0),
    ("p3e_cross_layers", 0),
    ("tiny_cnn_channels", 0),
    ("sim_head_dropout", 1.5),
    ("mlm_ln_eps", 0.0),
    ("swin_embed_dim", 0),
    ("swin_drop_path", -0.1),
]

MODULE = [
    ("moco_queue_size", 0),
    ("moco_momentum", 1.5),
    ("temperature", 0.0),
    ("temperature", math.nan),
    ("attentive_mask_prob", 2.0),
    ("lvwm_num_words", 0),
    ("l2_chunk", 0),
    ("eval_pair_batch", 0),
    ("lr", -1e-4),
    ("weight_decay", -1e-3),
    ("warmup_iterations", 2.5),
    ("num_threads", -1),
]

DATA = [
    ("num_frames", 0),
    ("max_text_len", 2),
    ("mask_prob", 1.5),
    ("words_top_k", 0),
    ("crop_size", 0),
    ("eval_short_side", 0),
    ("long_side", -448),
    ("hflip", 1.5),
    ("num_answers", -1),
    ("batch_size", 0),
    ("eval_batch_size", 0),
    ("num_workers", -1),
    ("synthetic_train", 0),
    ("synthetic_test", 0),
    ("synthetic_size", 8),
]


@pytest.mark.parametrize(("key", "value"), CONFIG)
def test_config_refuses(make_config, key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.config.{key}={value!r}")):
        make_config(**{key: value})


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        (dict(swin_depths=[2, 2, -1, 2]), "model.config.swin_depths[2]=-1"),
        (dict(swin_heads=[3, 0, 12, 24]), "model.config.swin_heads[1]=0"),
        (dict(swin_window=[8, 0, 7]), "model.config.swin_window[1]=0"),
    ],
)
def test_config_refuses_swin_sizes(make_config, kw, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        make_config(**kw)


def test_config_refuses_inconsistent_sizes(make_config):
    with pytest.raises(ValueError, match=r"model\.config\.mask_token_id=209 .*model\.config\.vocab_size=209"):
        make_config(mask_token_id=209)
    with pytest.raises(ValueError, match=r"model\.config\.swin_heads\[0\]=5 .*model\.config\.swin_embed_dim=96"):
        SNPS3Config(bert=None, visual_encoder="video_swin", swin_heads=[5, 6, 12, 24])


@pytest.mark.parametrize(("key", "value"), MODULE)
def test_module_refuses(make_config, key, value):
    with pytest.raises(ValueError, match=re.escape(f"model.{key}={value!r}")):
        SNPS3Module(config=make_config(), **{key: value})


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        (dict(betas=(0.9, 1.0)), "model.betas[1]=1.0"),
        (dict(betas=(-0.1, 0.98)), "model.betas[0]=-0.1"),
        (dict(lr_steps=[100, -5]), "model.lr_steps[1]=-5"),
    ],
)
def test_module_refuses_sequences(make_config, kw, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        SNPS3Module(config=make_config(), **kw)


def test_moco_loss_refuses():
    with pytest.raises(ValueError, match=re.escape("model.temperature=-0.05")):
        MoCoLoss(queue_size=8, dim=4, temperature=-0.05)
    with pytest.raises(ValueError, match=re.escape("model.moco_queue_size=0")):
        MoCoLoss(queue_size=0, dim=4)


@pytest.mark.parametrize(("key", "value"), DATA)
def test_datamodule_refuses(key, value):
    with pytest.raises(ValueError, match=re.escape(f"data.{key}={value!r}")):
        SNPS3DataModule(data_root=".", **{key: value})


@pytest.mark.parametrize(
    ("kw", "key"),
    [(dict(train_scale=(0, 336)), "data.train_scale[0]=0"), (dict(train_scale=(336, 268)), "data.train_scale[0]=336")],
)
def test_datamodule_refuses_train_scale(kw, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        SNPS3DataModule(data_root=".", **kw)


def test_readers_refuse():
    with pytest.raises(ValueError, match=re.escape("data.hflip=-0.5")):
        FrameTransform(hflip=-0.5)
    with pytest.raises(ValueError, match=re.escape("data.train_scale[0]=336")):
        FrameTransform(train_scale=(336, 268))
    with pytest.raises(ValueError, match=re.escape("data.max_text_len=2")):
        CaptionProcessor(None, max_len=2)
    with pytest.raises(ValueError, match=re.escape("data.mask_prob=-0.1")):
        CaptionProcessor(None, max_len=16, mask_prob=-0.1)
    with pytest.raises(ValueError, match=re.escape("data.num_frames=0")):
        RetrievalDataset(".", "test", "msrvtt_7k", processor=None, transform=None, num_frames=0, train=False)


def test_boundary_values_are_accepted(make_config):
    assert make_config(sim_head_dropout=0.0, swin_drop_path=0.0, pad_token_id=0).pad_token_id == 0
    module = SNPS3Module(
        config=make_config(),
        moco_queue_size=8,
        moco_momentum=1.0,
        attentive_mask_prob=0.0,
        lr=0.0,
        weight_decay=0.0,
        betas=(0.0, 0.0),
        warmup_iterations=-1,  # <= 0: no warm-up
        lr_steps=[0],
        num_threads=0,
    )
    assert module.hparams.num_threads == 0 and module.hparams.moco_momentum == 1.0
    dm = SNPS3DataModule(data_root=".", hflip=0.0, mask_prob=0.0, num_workers=0, train_scale=(224, 224))
    assert dm.hparams.hflip == 0.0
    assert SNPS3DataModule(data_root=".", masking="mlm", words_top_k=0).hparams.words_top_k == 0  # no word significant
    assert FrameTransform(hflip=1.0, train_scale=(32, 32)).hflip == 1.0
