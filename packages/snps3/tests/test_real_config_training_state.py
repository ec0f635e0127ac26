"""The shipped paper configs at their real size (bert-base loaded with from_pretrained from a randomly initialised
save_pretrained folder; Video Swin, PVTv2-B2, ResNet-50): module modes during training, MoCo key encoders, what
trains, the optimiser's groups and the schedule (spec §3.2, §3.6, §3.7)."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from mmzoo.cli import resolve_config
from torchvision.ops.misc import FrozenBatchNorm2d

from snps3.cli import main
from snps3.models import SNPS3Config
from snps3.module import SNPS3Module

# one config per (task, visual encoder, schedule unit)
CASES = ["msrvtt_9k_retrieval", "msvd_qa", "pretrain_coco_vg_r50", "pretrain_coco_vg_pvt", "pretrain_webvid_vst"]


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    """bert-base-uncased's architecture with random weights, in the layout from_pretrained reads."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert") / "bert-base-uncased"
    BertModel(BertConfig(), add_pooling_layer=True).save_pretrained(path)
    return str(path)


def shipped_module(name: str, bert: str) -> SNPS3Module:
    model = yaml.safe_load(open(resolve_config(name, "snps3")))["model"]
    config = dict(model.pop("config"), bert=bert, visual_weights=None)
    model["init_checkpoint"] = None  # a checkpoint only fills weights (load_state_dict), modes stay
    return SNPS3Module(config=SNPS3Config(**config), **model)


@pytest.mark.parametrize("name", CASES)
def test_shipped_config_trains_what_the_recipe_trains(name, bert_base):
    module = shipped_module(name, bert_base)
    hp = module.hparams
    assert module.model.bert.config.num_hidden_layers == 12 and module.model.hidden_size == 768
    # every module (the MoCo key encoders included, as attributes of the trained model) is in train mode
    assert [n for n, m in module.named_modules() if not m.training] == []
    assert module.model.bert.config.hidden_dropout_prob == 0.1
    if hp.config.visual_encoder == "resnet50":  # frozen BatchNorm statistics (spec §3.2)
        norms = [m for m in module.model.visual.modules() if "BatchNorm" in type(m).__name__]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    # MoCo: key encoders never take gradients; everything else the task's losses reach trains
    moco = hp.with_moco and hp.task in ("pretrain", "retrieval")
    assert module.moco_active == moco
    if moco:
        assert not any(p.requires_grad for p in module.momentum.parameters())
        assert module.momentum.bert.config.hidden_dropout_prob == 0.1
    frozen = {n for n, p in module.model.named_parameters() if not p.requires_grad}
    expected_frozen = {
        n for n, _ in module.model.named_parameters() if any(n.startswith(u + ".") for u in module.unused_modules)
    }
    assert frozen == expected_frozen
    assert not any(n.startswith(("bert.encoder.", "bert.embeddings.", "visual.")) for n in frozen)
    if hp.task == "retrieval":
        assert sorted(module.unused_modules) == ["itm_head", "mlm_cross", "mlm_text"]
    if hp.task == "qa":
        assert {"bert.pooler", "clip_mlp", "sim_head"} <= set(module.unused_modules)
    if hp.task == "pretrain":
        assert module.unused_modules == []

    # an epoch-unit schedule reads the epoch from the trainer when it is built
    module._trainer = SimpleNamespace(current_epoch=0, training=False, is_last_batch=False)
    opt = module.configure_optimizers()["optimizer"]
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in module.parameters() if p.requires_grad}
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == hp.weight_decay and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["lr"] == hp.lr
    in_no_decay = {id(p) for p in no_decay["params"]}
    for n, p in module.named_parameters():
        if p.requires_grad and (n.endswith(".bias") or "LayerNorm" in n):
            assert id(p) in in_no_decay, n
    assert id(module.model.bert.embeddings.word_embeddings.weight) in {id(p) for p in decay["params"]}


@pytest.mark.parametrize("name", ["msrvtt_9k_retrieval", "pretrain_coco_vg_pvt"])
def test_step_schedule_of_the_shipped_recipe(name, bert_base):
    """Linear warm-up from 0.1·lr over warmup_iterations, then ×0.1 at each of lr_steps (in optimiser steps)."""
    module = shipped_module(name, bert_base)
    hp = module.hparams
    sched = module.configure_optimizers()["lr_scheduler"]
    assert sched["interval"] == "step" and hp.lr_step_unit == "step"
    factor = sched["scheduler"].lr_lambdas[0]
    warm, (decay_at,) = hp.warmup_iterations, hp.lr_steps
    if warm:
        assert factor(0) == pytest.approx(0.1) and factor(warm // 2) == pytest.approx(0.55)
    assert factor(warm) == pytest.approx(1.0) and factor(decay_at - 1) == pytest.approx(1.0)
    assert factor(decay_at) == pytest.approx(0.1)


class ModeProbe(pl.Callback):
    def __init__(self):
        self.eval_modules = None
        self.sanity_ran = False

    def on_sanity_check_end(self, trainer, pl_module):
        self.sanity_ran = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.eval_modules is None:
            self.eval_modules = [n for n, m in pl_module.named_modules() if not m.training]


def test_loaded_bert_and_key_encoders_train_in_train_mode_after_sanity_validation(synthetic_root, tmp_path):
    """Through Lightning: a BERT loaded with from_pretrained (at reduced width, the synthetic vocabulary) and its
    momentum copy are in train mode at the first training step, after the sanity validation ran."""
    from transformers import BertConfig, BertModel

    bert = BertConfig(vocab_size=209, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(bert, add_pooling_layer=True).save_pretrained(tmp_path / "bert")
    cli = main(
        ["--config", "tiny", "--data.data_root", str(synthetic_root), "--trainer.default_root_dir", str(tmp_path),
         "--trainer.logger", "false", "--trainer.num_sanity_val_steps", "1", "--trainer.limit_train_batches", "1",
         "--model.config.bert", str(tmp_path / "bert")],
        run=False,
    )  # fmt: skip
    probe = ModeProbe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert probe.sanity_ran and cli.model.moco_active
    assert probe.eval_modules == []
    assert torch.is_tensor(cli.trainer.callback_metrics["train/loss"])
