"""The training state under the shipped Kwai configs at their real sizes (768-d video and BERT tag features,
h = 768, 8 heads, L = 2, dropout 0.2, the verticals' tag counts, batch 1024), looked at inside the first training
step of ``fit`` (after Lightning's sanity validation):

* every module is in train mode: dropout on, the BatchNorms of the input embedding and of the AAN / common-unique
  encoders update their running statistics, and the loss advances λ_p's counter k once per training call;
* exactly the parameters the configured variant never reaches from the loss are frozen (none for the main model;
  the second layer's discriminator for ``adv_layers: 1``), frozen ones get no gradient and every trainable one does;
* one AdamW group over exactly the trainable parameters, lr 5e-4, weight decay 1e-4, no scheduler (constant LR);
* λ_p's ``total_step`` is the config's, gradients are clipped to L2 norm 40 in float32, and the checkpoint monitor
  (``val/sample_mAP``) is a key the module logs.

The data are a small synthetic vertical in the official file layout, its label map padded to the config's tag count.
"""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mmzoo.cli import build
from mmzoo.testing import IN_PROCESS_LOADERS, QUIET_CPU_RUN, FirstStepProbe
from torch import nn

from radartag.synthetic import SyntheticKwaiConfig, pad_label_map, write_synthetic_vertical

VERTICAL = SyntheticKwaiConfig(
    num_users=10, favourites=1, num_parents=2, leaves_per_parent=3, follows=2, videos_per_user=2, feature_dim=768,
    split=(0.6, 0.2, 0.2),
)  # fmt: skip


class _Probe(FirstStepProbe):
    """The training state at the first training batch and the gradients of that step."""

    def extra(self, trainer, module):
        return {
            "schedulers": list(trainer.lr_scheduler_configs),
            "loss_step": int(module.loss.step),
            "running_mean": module.model.embedding.video_norm.running_mean.clone(),
        }

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if "no_grad" not in self.seen:
            params = list(module.named_parameters())
            self.seen["no_grad"] = {n for n, p in params if p.requires_grad and p.grad is None}
            self.seen["frozen_with_grad"] = {n for n, p in params if not p.requires_grad and p.grad is not None}

    def after_step(self, trainer, module):
        return {
            "loss_step_after": int(module.loss.step),
            "running_mean_after": module.model.embedding.video_norm.running_mean.clone(),
        }


@pytest.mark.parametrize(
    ("config", "num_tags", "total_step", "frozen"),
    [
        ("cosmetic", 3114, 3040, set()),
        (
            "cosmetic_mutual_attention",
            3114,
            1520,
            {"model.layers.1.reducer.disc_weight", "model.layers.1.reducer.disc_bias"},
        ),
    ],
)
def test_real_config_training_state(tmp_path, config, num_tags, total_step, frozen):
    root = tmp_path / "kwai_cosmetic"
    write_synthetic_vertical(root, "cosmetic", VERTICAL)
    pad_label_map(root, "cosmetic", num_tags)
    overrides = [
        "--data.dataset_root", str(root), *IN_PROCESS_LOADERS, *QUIET_CPU_RUN,
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.num_sanity_val_steps", "1",
    ]  # fmt: skip
    model, data, trainer = build("radartag", config, *overrides)
    probe = _Probe()
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + [probe]
    trainer.fit(model, datamodule=data)
    seen = probe.seen
    assert seen and not seen["sanity_checking"]
    c = model.config
    assert (c.hidden_dim, c.num_heads, c.num_layers, c.dropout, c.num_tags) == (768, 8, 2, 0.2, num_tags)

    # 1. modes: every module trains; BatchNorm updates its statistics; λ_p's counter advances in training only
    assert seen["not_training"] == []
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) > 2 and all(m.track_running_stats and m.momentum for m in norms)
    assert not torch.equal(seen["running_mean"], seen["running_mean_after"])
    assert (seen["loss_step"], seen["loss_step_after"]) == (0, 1)  # the sanity validation did not count

    # 2. exactly the unused parameters are frozen; they get no gradient, every trainable one does
    assert set(seen["frozen"]) == frozen
    assert set(seen["frozen"]) == {
        n for n, p in model.named_parameters() if any(p is q for q in model.model.unused_parameters())
    }
    assert seen["no_grad"] == set() and seen["frozen_with_grad"] == set()

    # 3. one AdamW group over exactly the trainable parameters, constant lr 5e-4, weight decay 1e-4
    (group,) = seen["groups"]
    assert len(group[2]) == len(set(group[2])) and set(group[2]) == seen["trainable"]
    assert group[:2] == (pytest.approx(5e-4), pytest.approx(1e-4))
    assert seen["schedulers"] == []
    assert type(trainer.optimizers[0]) is torch.optim.AdamW

    # 4. λ_p's total_step, clipping, precision and the monitored key
    assert model.loss.total_step == total_step
    assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (40.0, "norm")
    assert trainer.precision == "32-true"
    assert model.checkpoint_monitor == "val/sample_mAP"
    trainer.validate(model, datamodule=data, verbose=False)
    assert "val/sample_mAP" in trainer.callback_metrics
