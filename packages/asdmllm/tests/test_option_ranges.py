"""Numeric options out of their range are refused where the configs, module, data module and readers are built,
naming the key as a YAML config writes it; boundary values that keep a meaning (0 = all questions, no LoRA) are
accepted."""

import math
import re

import pytest
import torch

from asdmllm.cmsc import CMSCBuildConfig
from asdmllm.data import DebiasDataModule, DemoDataConfig, FairFaceDataset, SocialCounterfactualsDataset
from asdmllm.models import MLLMConfig
from asdmllm.module import ASDModule, DebiasConfig, GeneralEvalConfig, SkewConfig
from asdmllm.sampling import bias_aware_resample


def _expect(key):
    return pytest.raises(ValueError, match=re.escape(key))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(max_length=0), "model.mllm.max_length"),
        (dict(image_size=0), "model.mllm.image_size"),
        (dict(patch_size=0), "model.mllm.patch_size"),  # used to divide by zero
        (dict(arch="qwen2_vl", spatial_merge_size=0), "model.mllm.spatial_merge_size"),
        (dict(lora=True, lora_r=0), "model.mllm.lora_r"),
        (dict(lora=True, lora_alpha=0), "model.mllm.lora_alpha"),
        (dict(lora=True, lora_dropout=1.0), "model.mllm.lora_dropout"),
        (dict(vision_hidden_size=0), "model.mllm.vision_hidden_size"),
        (dict(vision_hidden_size=33), "model.mllm.vision_hidden_size"),
        (dict(vision_layers=-1), "model.mllm.vision_layers"),
        (dict(text_hidden_size=0), "model.mllm.text_hidden_size"),
        (dict(text_layers=0), "model.mllm.text_layers"),
        (dict(text_heads=0), "model.mllm.text_heads"),
        (dict(text_heads=3), "model.mllm.text_heads"),  # 64 is not a multiple of 3
        (dict(max_position_embeddings=0), "model.mllm.max_position_embeddings"),
    ],
)
def test_mllm_config_refuses(kwargs, key):
    with _expect(key):
        MLLMConfig(**kwargs)


def test_mllm_config_accepts_boundaries():
    MLLMConfig(lora=True, lora_r=1, lora_dropout=0.0)
    MLLMConfig(lora=False, lora_r=0, lora_alpha=0)  # the LoRA keys are unused without LoRA
    # the tiny-model sizes are unused with a pretrained checkpoint
    MLLMConfig(pretrained="some/checkpoint", text_heads=0, vision_hidden_size=0, max_position_embeddings=0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(max_questions=-1), "model.general_eval.max_questions"),
        (dict(max_new_tokens=0), "model.general_eval.max_new_tokens"),
    ],
)
def test_general_eval_refuses(kwargs, key):
    with _expect(key):
        GeneralEvalConfig(**kwargs)


def test_general_eval_accepts_boundaries():
    GeneralEvalConfig(max_questions=0, max_new_tokens=1)  # 0: every question
    GeneralEvalConfig(max_questions=None)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(lr=-1e-6), "model.lr"),
        (dict(weight_decay=-0.1), "model.weight_decay"),
        (dict(betas=(0.9, 1.0)), "model.betas"),
        (dict(betas=(-0.1, 0.999)), "model.betas"),
        (dict(betas=(0.9,)), "model.betas"),
        (dict(warmup_ratio=-0.1), "model.warmup_ratio"),
        (dict(warmup_ratio=1.5), "model.warmup_ratio"),
        (dict(warmup_ratio=math.nan), "model.warmup_ratio"),
    ],
)
def test_module_refuses(kwargs, key):
    with _expect(key):
        ASDModule(scheduler="constant", **kwargs)


def test_module_accepts_boundaries(monkeypatch):
    class Built(Exception):
        pass

    def stop(config):  # the MLLM is built after the options are checked: stop there
        raise Built

    monkeypatch.setattr("asdmllm.module.MultimodalLLM", stop)
    with pytest.raises(Built):
        ASDModule(lr=0.0, weight_decay=0.0, betas=(0.0, 0.0), warmup_ratio=1.0, scheduler="constant")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(n_sets=0), "data.demo.n_sets"),
        (dict(bias=1.5), "data.demo.bias"),
        (dict(bias=-0.1), "data.demo.bias"),
        (dict(fairface_images=-1), "data.demo.fairface_images"),
        (dict(cmsc_sets=-1), "data.demo.cmsc_sets"),
    ],
)
def test_demo_config_refuses(kwargs, key):
    with _expect(key):
        DemoDataConfig(**kwargs)


def test_demo_config_accepts_boundaries():
    DemoDataConfig(n_sets=1, bias=0.0, fairface_images=0, cmsc_sets=0)
    DemoDataConfig(bias=1.0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [(dict(image_size=0), "data.image_size"), (dict(num_workers=-1), "data.num_workers")],
)
def test_datamodule_refuses(kwargs, key):
    with _expect(key):
        DebiasDataModule(**kwargs)


def test_datamodule_accepts_boundaries():
    DebiasDataModule(image_size=1, num_workers=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda root: SocialCounterfactualsDataset(root, image_size=0),
        lambda root: FairFaceDataset(root, ["nurse"], ["occupation"], image_size=-32),
    ],
)
def test_readers_refuse_image_size(tmp_path, build):
    with _expect("data.image_size"):
        build(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"sets_per_concept": 0}, "--sets-per-concept"),
        ({"image_size": -8}, "--image-size"),
        ({"num_inference_steps": 0}, "--steps"),
        ({"shard_size": 0}, "--shard-size"),
        ({"guidance_scale": float("nan")}, "--guidance-scale"),
        ({"races": []}, "--races"),
    ],
)
def test_build_cmsc_refuses(kwargs, flag):
    with pytest.raises(ValueError, match=re.escape(f"build-cmsc {flag}")):
        CMSCBuildConfig(**kwargs)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        # the older checks named three keys at once (and no value), or a `method.` prefix no config has
        (lambda: SkewConfig(alpha=0.0), "model.skew.alpha=0.0"),
        (lambda: SkewConfig(concept_chunk=2.5), "model.skew.concept_chunk=2.5"),
        (lambda: DebiasConfig(tau2=float("nan")), "model.debias.tau2=nan"),
        (lambda: DebiasConfig(refresh_every_n_epochs=0), "model.debias.refresh_every_n_epochs=0"),
        (lambda: bias_aware_resample(torch.zeros(3), tau1=-1.0), "model.debias.tau1=-1.0"),
        (lambda: DebiasDataModule(eval_batch_size=0), "data.eval_batch_size=0"),
    ],
)
def test_skew_and_debias_settings_name_one_key_and_its_value(build, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        build()
