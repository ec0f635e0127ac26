"""Training state under the shipped configs, through the real loading path of a pretrained MLLM.

The 7B weights cannot be loaded here: ``model.mllm.pretrained`` points to a tiny random LLaVA written as a local
``transformers`` snapshot (:func:`asdmllm.testing.save_tiny_llava`, at the shipped 336 px), so the model comes from
``from_pretrained`` exactly as a real checkpoint does, in the shipped ``torch_dtype``, with the shipped trainable
parts, LoRA settings and gradient checkpointing. Qwen2-VL has no snapshot writer: its case builds the tiny random
model of the shipped ``arch`` (``pretrained: null``) with every other key as shipped. Only the data roots, batch
sizes / workers and the trainer's length, device, strategy (the 8-GPU FSDP configs run on one CPU device) and
precision (bf16 autocast runs on the CPU too) are overridden.

Checked at every training batch, after the sanity validation and again after a validation in the middle of the epoch
(and after the epoch's Skew refresh, which switches the model to eval mode and back):

* modes: the language model (LoRA dropout included) and the projector train in train mode;
* requires_grad (spec §3.1: ``trainable: [projector, llm]``, vision tower frozen): the vision tower is frozen; the
  projector trains; the LLM trains in full (lm_head included) or, with ``lora: true``, only its adapters on the seven
  attention/MLP projections of every layer; trained weights are float32 even in a bf16 checkpoint;
* the optimizer (spec §3.6): one AdamW group holding exactly the trainable parameters, lr / betas / weight decay 0 of
  the config; a per-step LambdaLR whose cosine length is the run's optimizer steps in nominal epochs
  (len(train set) / batch, divided by ``accumulate_grad_batches``) with a 3 % warm-up;
* gradient checkpointing (on in every shipped 7B/13B config) is active in the training steps, and every trainable
  parameter gets a gradient through it.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from mmzoo.cli import build
from mmzoo.testing import IN_PROCESS_LOADERS, QUIET_CPU_RUN

from asdmllm.data import make_socialcounterfactuals
from asdmllm.models import MLLMConfig
from asdmllm.testing import build_llama_style_tokenizer, save_tiny_llava

IMAGE_SIZE, QWEN_IMAGE_SIZE = 336, 448
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

SHORT = [
    "--data.batch_size", "1",
    "--data.eval_batch_size", "4",
    *IN_PROCESS_LOADERS,
    *QUIET_CPU_RUN,
    "--trainer.max_epochs", "1",
    "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "1",
]  # fmt: skip

# (config, snapshot?, batches run); the LoRA config keeps its accumulate_grad_batches: 8
CASES = [
    ("llava7b_socialcounterfactuals", True, 4),
    ("llava7b_socialcounterfactuals_lora", True, 16),
    ("qwen2vl7b_socialcounterfactuals", False, 4),
]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    for size in (IMAGE_SIZE, QWEN_IMAGE_SIZE):
        make_socialcounterfactuals(
            root / str(size) / "SocialCounterfactuals", ["plumber", "nurse", "chef"], ["White", "Black"],
            ["male", "female"], 8, image_size=size, every_split=True,
        )  # fmt: skip
    save_tiny_llava(root / "llava", build_llama_style_tokenizer(), MLLMConfig(image_size=IMAGE_SIZE, patch_size=14))
    return root


def _parts(mllm):
    inner = mllm.model.model
    if mllm.is_qwen:
        vision = [m for n, m in inner.visual.named_children() if n != "merger"]
        return vision, inner.visual.merger, inner.language_model
    return [inner.vision_tower], inner.multi_modal_projector, inner.language_model


class _StateProbe(pl.Callback):
    def __init__(self, lora: bool) -> None:
        self.lora = lora
        self.seen: list[tuple[int, int]] = []  # (batch_idx, validation runs so far)
        self.val_runs = 0
        self.grads_checked = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_runs += 1

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.seen.append((batch_idx, self.val_runs))
        mllm = module.mllm
        vision, projector, llm = _parts(mllm)
        for name, part in (("projector", projector), ("language model", llm)):
            off = [n for n, m in part.named_modules() if not m.training]
            assert not off, f"{name} has modules in eval mode during training: {off[:5]}"
        # the frozen vision tower (left in the loaded model's train mode, as LLaVA fine-tuning does) has nothing whose
        # output depends on the mode: no active dropout, no BatchNorm statistics to update
        for v in vision:
            live = [
                n for n, m in v.named_modules() if m.training and isinstance(m, torch.nn.modules.batchnorm._NormBase)
            ]
            live += [n for n, m in v.named_modules() if m.training and isinstance(m, torch.nn.Dropout) and m.p > 0]
            live += [n for n, m in v.named_modules() if m.training and float(getattr(m, "dropout", 0.0) or 0.0) > 0]
            assert not live, f"the frozen vision tower would behave differently in train mode: {live[:5]}"
        # requires_grad as the config's trainable parts say
        assert not any(p.requires_grad for v in vision for p in v.parameters())
        assert all(p.requires_grad for p in projector.parameters())
        named = dict(llm.named_parameters())
        if self.lora:
            trained = {n for n, p in named.items() if p.requires_grad}
            assert trained == {n for n in named if "lora_" in n}
            targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained}
            assert targets == set(LORA_TARGETS)
            assert not any(p.requires_grad for p in mllm.model.lm_head.parameters())
            dropouts = [m for n, m in llm.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)]
            assert dropouts and all(m.training and m.p == mllm.config.lora_dropout for m in dropouts)
        else:
            assert all(p.requires_grad for p in named.values())
            assert all(p.requires_grad for p in mllm.model.lm_head.parameters())
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for n, p in module.named_parameters() if n in trainable)
        if mllm.config.gradient_checkpointing:
            assert llm.gradient_checkpointing and llm.training
            # every decoder layer recomputes through torch's non-reentrant checkpoint (the reentrant kind would leave
            # the LoRA adapters without gradients behind the frozen embeddings)
            funcs = [getattr(m, "_gradient_checkpointing_func", None) for m in llm.modules()]
            funcs = [f for f in funcs if f is not None]
            assert funcs and all(getattr(f, "keywords", {}).get("use_reentrant") is False for f in funcs)
        # the optimizer of spec §3.6
        names = {id(p): n for n, p in module.named_parameters()}
        (opt,) = trainer.optimizers
        assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
        (group,) = opt.param_groups
        in_opt = [names[id(p)] for p in group["params"]]
        assert len(in_opt) == len(set(in_opt)) and set(in_opt) == trainable
        hp = module.hparams
        assert group["initial_lr"] == hp.lr and group["weight_decay"] == hp.weight_decay == 0.0
        assert tuple(group["betas"]) == tuple(hp.betas) == (0.9, 0.999)
        (cfg,) = trainer.lr_scheduler_configs
        assert cfg.interval == "step" and isinstance(cfg.scheduler, torch.optim.lr_scheduler.LambdaLR)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"trainable parameters without a gradient: {missing[:5]}"
        if self.lora:  # B starts at zero, so A's first gradient is zero; B's is not
            assert any(float(p.grad.abs().sum()) > 0 for n, p in module.named_parameters() if "lora_B" in n)
        self.grads_checked += 1


@pytest.mark.parametrize(("config", "snapshot", "batches"), CASES, ids=[c[0] for c in CASES])
def test_real_config_training_state(official, tmp_path, config, snapshot, batches):
    size = IMAGE_SIZE if snapshot else QWEN_IMAGE_SIZE
    model, data, trainer = build(
        "asdmllm",
        config,
        *SHORT,
        "--trainer.limit_train_batches", str(batches),
        "--trainer.val_check_interval", str(batches // 2),
        "--model.mllm.pretrained", str(official / "llava") if snapshot else "null",
        "--data.data_root", str(official / str(size) / "SocialCounterfactuals"),
        "--data.fairface_root", "null",
        "--data.cmsc_root", "null",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    )  # fmt: skip
    mllm = model.mllm.config
    assert mllm.trainable == ["projector", "llm"] and mllm.gradient_checkpointing
    lora = mllm.lora
    assert lora == config.endswith("_lora")
    if lora:
        assert (mllm.lora_r, mllm.lora_alpha, mllm.torch_dtype) == (128, 256, "bfloat16")
        assert trainer.accumulate_grad_batches == 8
    else:
        assert model.hparams.lr == 5e-7 if not model.mllm.is_qwen else model.hparams.lr == 1e-6
    assert trainer.precision == "bf16-mixed"
    probe = _StateProbe(lora)
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=data)
    assert [b for b, _ in probe.seen] == list(range(batches))
    half = batches // 2
    assert probe.seen[0][1] >= 1 and probe.seen[half][1] > probe.seen[half - 1][1]
    steps = math.ceil(batches / trainer.accumulate_grad_batches)
    assert trainer.global_step == steps and probe.grads_checked == steps
    # the cosine length: optimizer steps of the run in nominal epochs (the real train set, batch, accumulation)
    per_epoch = min(len(data.train_set) // data.hparams.batch_size, batches)
    total = math.ceil(per_epoch / trainer.accumulate_grad_batches) * trainer.max_epochs
    assert model._nominal_total_steps() == total
    (cfg,) = trainer.lr_scheduler_configs
    warmup = int(model.hparams.warmup_ratio * total)
    assert cfg.scheduler.lr_lambdas[0](0) == pytest.approx(1 / (warmup + 1))
    assert cfg.scheduler.lr_lambdas[0](total) == pytest.approx(0.0, abs=1e-12)
