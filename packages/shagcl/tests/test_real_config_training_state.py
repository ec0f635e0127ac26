"""Training state under the shipped VG150 configs at their real sizes, through the real loading path.

The relation head is built as shipped (H = 512, 8 heads, FFN 2048, 4 + 2 SHA layers, 1024-d box-head features on
256×7×7 ROI maps, GloVe 200-d, official predicate counts, rect branch), its fc6/fc7 copies from a torchvision detector
state dict (``model.config.box_head_checkpoint``) and its word tables from a GloVe text file, on VG150 files in the
official layout with feature caches written by ``shagcl extract``. Only the data paths, the validation carve-out,
batch sizes / workers and the trainer's length, device, precision (fp16 AMP does not run on a CPU: the mixed path
is exercised with bf16 autocast instead) and checkpointing change (off: with its SGD momentum a real-size checkpoint
is 0.9 GB, written twice per validation).

Checked at every training batch (after the validation runs that precede it): the whole relation head (box-head
copies, rect BatchNorm, encoder dropout, decoder) trains in train mode with every parameter trainable (the detector is
frozen outside it, in the feature cache); the SGD groups of spec §3.9 hold every parameter once, weight decay 1e-4 on
weights and 0 on every bias and frequency-bias table, lr 0.008; the warm-up is linear from 0.1 over 500 steps; the
plateau rule reads the ``val/mR@100`` that validation logs.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from mmzoo.cli import build
from mmzoo.testing import QUIET_CPU_RUN
from torch import nn

from shagcl.models import load_glove

# PredCls: the official union branch (4-level maps, 3x3 conv, own fc6/fc7); SGDet: the simplified union feature with
# the rect branch's BatchNorm and the object classifier (which SGCls shares)
CONFIGS = ["vg150_predcls", "vg150_sgdet"]

SHORT = [
    "--data.num_val_images", "1",
    "--data.batch_size", "2",
    "--data.test_batch_size", "2",
    "--data.num_workers", "0",
    *QUIET_CPU_RUN,
    "--trainer.precision", "bf16-mixed",
    "--trainer.max_steps", "3",
    "--trainer.val_check_interval", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "1",
]  # fmt: skip


class _StateProbe(pl.Callback):
    def __init__(self, detector, glove) -> None:
        self.detector, self.glove, self.loaded = detector, glove, False
        self.seen: list[tuple[int, int]] = []  # (global step, validation runs so far)
        self.val_runs = 0
        self.val_metric_seen = False

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_runs += 1
        self.val_metric_seen |= "val/mR@100" in trainer.callback_metrics

    def on_fit_start(self, trainer, model) -> None:
        """Before any step: fc6/fc7 copies hold the detector's box head, both word tables the GloVe vectors."""
        state = torch.load(self.detector, weights_only=True)
        heads = [model.model.box_head] + ([model.model.union.box_head] if model.model.union is not None else [])
        for head in heads:
            assert torch.equal(head.fc6.weight, state["roi_heads.box_head.fc6.weight"])
            assert torch.equal(head.fc7.bias, state["roi_heads.box_head.fc7.bias"])
        vectors = load_glove(str(self.glove), model.object_names, 200)
        for table in (model.model.context.obj_embed1, model.model.context.obj_embed2):
            assert isinstance(table, nn.Embedding) and table.weight.requires_grad
            assert torch.equal(table.weight[1:], vectors[1:])  # row 0: background, not a GloVe word
        self.loaded = True

    def on_train_batch_start(self, trainer, model, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, self.val_runs))
        off = [n for n, m in model.named_modules() if not m.training]
        assert not off, f"modules in eval mode during training: {off[:5]}"
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert not frozen, f"frozen parameters in the relation head: {frozen[:5]}"
        names = {id(p): n for n, p in model.named_parameters()}
        (opt,) = trainer.optimizers
        assert isinstance(opt, torch.optim.SGD)
        grouped = [names[id(p)] for g in opt.param_groups for p in g["params"]]
        assert len(grouped) == len(set(grouped)) and set(grouped) == set(names.values())
        decay_groups = [g for g in opt.param_groups if g["weight_decay"] > 0]
        (decay,) = decay_groups
        assert decay["weight_decay"] == model.hparams.weight_decay == 1e-4
        no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
        # 0 on biases and on the frequency-bias tables (the real names), decay on every other weight
        expected = {n for n in names.values() if n.endswith(".bias") or ".freq_bias." in n}
        assert no_decay == expected, sorted(no_decay ^ expected)[:10]
        if model.config.use_frequency_bias:
            assert any(".freq_bias." in n and n.endswith("table.weight") for n in no_decay)
        for g in opt.param_groups:
            assert g["momentum"] == 0.9 and g["initial_lr"] == model.hparams.lr == 0.008
            step = trainer.global_step  # warm-up: factor 0.1 at step 0, linear to 1 at step 500
            assert math.isclose(g["lr"], 0.008 * (0.1 + 0.9 * min(step / 500, 1.0)), rel_tol=1e-6)
        (cfg,) = trainer.lr_scheduler_configs
        assert cfg.interval == "step" and cfg.frequency == 1


@pytest.mark.parametrize("config", CONFIGS)
def test_real_config_training_state(official, tmp_path, config):
    root, glove, detector, caches = official("vg150")
    protocol = config.split("_")[1]
    args = [
        *SHORT,
        "--data.data_root", str(root),
        "--data.feature_cache", str(caches[protocol]),
        "--model.config.glove_path", str(glove),
        "--model.config.box_head_checkpoint", str(detector),
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_checkpointing", "false",
    ]  # fmt: skip
    model, data, trainer = build("shagcl", config, *args)
    cfg = model.config
    assert (cfg.hidden_dim, cfg.num_heads, cfg.ffn_dim, cfg.obj_layers, cfg.edge_layers) == (512, 8, 2048, 4, 2)
    assert cfg.feature_dim == 1024 and cfg.word_embeddings == "glove" and cfg.trainable_box_head
    assert cfg.dropout == 0.1 and cfg.use_rect_features
    assert trainer.gradient_clip_val == 5.0
    probe = _StateProbe(detector, glove)
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3
    assert probe.loaded and [s for s, _ in probe.seen] == [0, 1, 2]
    assert probe.seen[0][1] >= 1 and probe.seen[2][1] > probe.seen[1][1]  # sanity, then a mid-run validation
    assert probe.val_metric_seen  # the plateau rule and model selection read a logged val/mR@100
    assert model.best_metric > -math.inf  # the plateau rule ran on it
    # the CLI's best-checkpoint callback (off here) keeps the highest val/mR@100
    assert (type(model).checkpoint_monitor, type(model).checkpoint_mode) == ("val/mR@100", "max")
