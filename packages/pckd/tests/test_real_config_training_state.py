"""Training state under the shipped paper configs, built at their real sizes through the real loading path.

Every ``cifar100_*`` distillation config, every ``teacher_cifar100_*`` config and the ImageNet config is built with
``mmzoo.cli.build`` (all keys as shipped except the data root, batch sizes, loader workers and the trainer's length
and device); the teacher comes from a RepDistiller file (or the torchvision cache file for ``IMAGENET1K_V1``)
holding random weights. A short fit (sanity validation, two steps, a validation, two more steps) then checks at
every training batch:

* modes: the teacher (a fixed network, spec §2) is in eval mode throughout, BatchNorm included; the student and the
  auxiliary heads E_s, E_t, H (or CRD's Embed heads) are in train mode, also after each validation run;
* requires_grad: the teacher is frozen; the student and the heads of the method train (a head whose loss weight is
  0 is frozen);
* the optimizer (spec §3.9): one SGD group holding exactly the trainable parameters, lr / momentum / weight decay of
  the config on every one of them, the teacher excluded; MultiStepLR at epochs 150/180/210 (30/60/90 on ImageNet)
  stepped per epoch;
* the teacher's BatchNorm running statistics do not move during training.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from mmzoo.cli import build, resolve_config, shipped_configs
from mmzoo.testing import IN_PROCESS_LOADERS, QUIET_CPU_RUN

from pckd.testing import (
    write_cifar100_python,
    write_imagenet_folder,
    write_repdistiller_checkpoint,
    write_torchvision_weights,
)

CONFIGS = [c for c in shipped_configs("pckd") if c.startswith(("cifar100_", "teacher_cifar100_", "imagenet_"))]
# fitted at real size: every method and ablation, each backbone family, both lrs, ImageNet; the ResNet50 / resnet32x4
# teachers (whose 16·d_t align heads take seconds per step on CPU) are built like the ones kept here
FIT_CONFIGS = [
    c for c in CONFIGS if c.startswith(("cifar100_wrn402_", "imagenet_"))
] + ["cifar100_resnet56_resnet20", "cifar100_resnet110_resnet20", "cifar100_vgg13_vgg8", "teacher_cifar100_resnet56",
     "teacher_cifar100_vgg13"]  # fmt: skip

SHORT = [
    "--data.batch_size", "2",
    "--data.eval_batch_size", "2",
    *IN_PROCESS_LOADERS,
    *QUIET_CPU_RUN,
    "--trainer.enable_checkpointing", "false",  # nothing here reads one (ImageNet's: 0.25 GB, two per validation)
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "4",
    "--trainer.val_check_interval", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "1",
]  # fmt: skip


def _shipped(name: str) -> dict:
    return yaml.safe_load(Path(resolve_config(name, "pckd")).read_text())


def _expected_trainable(model) -> set[str]:
    """Parameter names the recipe trains, derived from the config rather than from the module's own list."""
    h = model.hparams
    names = {f"student.{n}" for n, _ in model.student.named_parameters()}
    if h.method == "pckd":
        if h.w_cc > 0:
            names |= {f"embed_s.{n}" for n, _ in model.embed_s.named_parameters()}
            names |= {f"embed_t.{n}" for n, _ in model.embed_t.named_parameters()}
        if h.w_fa > 0:
            names |= {f"align.{n}" for n, _ in model.align.named_parameters()}
    if h.method == "crd" and h.w_crd > 0:
        names |= {f"crd_embed_s.{n}" for n, _ in model.crd_embed_s.named_parameters()}
        names |= {f"crd_embed_t.{n}" for n, _ in model.crd_embed_t.named_parameters()}
    return names


class _StateProbe(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []  # (batch_idx, validation runs so far)
        self.val_runs = 0
        self.teacher_bn: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        self.val_runs += 1

    def on_train_batch_start(self, trainer, model, batch, batch_idx) -> None:
        self.seen.append((batch_idx, self.val_runs))
        trained = ["student", "embed_s", "embed_t", "align", "crd_embed_s", "crd_embed_t"]
        for name in trained:
            sub = getattr(model, name)
            if sub is None:
                continue
            off = [n for n, m in sub.named_modules() if not m.training]
            assert not off, f"{name} has modules in eval mode during training: {off[:5]}"
        if model.teacher is not None:
            on = [n for n, m in model.teacher.named_modules() if m.training]
            assert not on, f"teacher has modules in train mode during training: {on[:5]}"
            assert not any(p.requires_grad for p in model.teacher.parameters())
            bn = {n: b.clone() for n, b in model.teacher.named_buffers() if "running" in n}
            if self.teacher_bn is None:
                self.teacher_bn = bn
            else:
                for n, b in bn.items():
                    assert torch.equal(b, self.teacher_bn[n]), f"teacher BatchNorm statistic {n} changed"

        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == _expected_trainable(model), sorted(trainable ^ _expected_trainable(model))[:10]
        by_id = {id(p): n for n, p in model.named_parameters()}
        (opt,) = trainer.optimizers
        h = model.hparams
        assert isinstance(opt, torch.optim.SGD)
        in_groups = [by_id[id(p)] for g in opt.param_groups for p in g["params"]]
        assert len(in_groups) == len(set(in_groups)), "a parameter sits in two optimizer groups"
        assert set(in_groups) == trainable
        for g in opt.param_groups:
            assert g["momentum"] == h.momentum and g["weight_decay"] == h.weight_decay
            assert g["initial_lr"] == h.lr and g["lr"] == h.lr  # epoch 0: before the first milestone
        (cfg,) = trainer.lr_scheduler_configs
        assert isinstance(cfg.scheduler, torch.optim.lr_scheduler.MultiStepLR)
        assert cfg.interval == "epoch" and cfg.frequency == 1
        assert sorted(cfg.scheduler.milestones.elements()) == list(h.lr_milestones)
        assert cfg.scheduler.gamma == h.lr_gamma


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_recipe(config):
    """The optimiser keys of every shipped config follow spec §3.9 (lr by the student's family)."""
    shipped = _shipped(config)
    m = shipped["model"]
    student = m["config"]["student_arch"]
    assert (m["optimizer"], m["momentum"], m["lr_gamma"]) == ("sgd", 0.9, 0.1)
    if config.startswith("imagenet_"):
        assert (m["lr"], m["weight_decay"], m["lr_milestones"]) == (0.1, 1e-4, [30, 60, 90])
        assert shipped["trainer"]["max_epochs"] == 100 and shipped["data"]["batch_size"] == 256
    else:
        lr = 0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05
        assert (m["lr"], m["weight_decay"], m["lr_milestones"]) == (lr, 5e-4, [150, 180, 210])
        assert shipped["trainer"]["max_epochs"] == 240 and shipped["data"]["batch_size"] == 64
    assert shipped["trainer"].get("accumulate_grad_batches", 1) == 1
    assert shipped["trainer"]["devices"] == 1


@pytest.mark.parametrize("config", FIT_CONFIGS)
def test_real_config_training_state(tmp_path, monkeypatch, config):
    shipped = _shipped(config)
    m = shipped["model"]
    arch_t = m["config"]["teacher_arch"]
    extra = []
    if config.startswith("imagenet_"):
        write_imagenet_folder(tmp_path / "imagenet", num_classes=1000, per_class=1, size=8)
        extra += ["--data.data_root", str(tmp_path / "imagenet")]
        monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
        assert m["teacher_checkpoint"] == "IMAGENET1K_V1"
        write_torchvision_weights(tmp_path / "hub", arch_t)
    else:
        write_cifar100_python(tmp_path / "data", num_classes=100, n_train_per_class=1, n_test_per_class=1)
        extra += ["--data.data_root", str(tmp_path / "data")]
        if arch_t is not None:
            ckpt = tmp_path / Path(m["teacher_checkpoint"])  # teachers/<arch>_vanilla/ckpt_epoch_240.pth
            write_repdistiller_checkpoint(ckpt, arch_t, m["config"]["num_classes"])
            extra += ["--model.teacher_checkpoint", str(ckpt)]
    model, data, trainer = build("pckd", config, *SHORT, *extra, "--trainer.default_root_dir", str(tmp_path / "run"))
    assert not model.hparams.teacher_random_init
    assert model.hparams.lr == m["lr"] and model.hparams.weight_decay == m["weight_decay"]
    if arch_t is not None:  # the teacher's weights are the file's, loaded through the package's reader
        ref = (
            torch.load(tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth")
            if config.startswith("imagenet_")
            else torch.load(tmp_path / Path(m["teacher_checkpoint"]), weights_only=False)["model"]
        )
        got = model.teacher.state_dict()
        key = next(k for k in got if k.endswith("weight"))
        assert any(torch.equal(got[key], v) for v in ref.values())
    probe = _StateProbe()
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 4
    # every step was checked; sanity validation ran before the first, a mid-epoch validation before the third
    assert [b for b, _ in probe.seen] == [0, 1, 2, 3]
    assert probe.seen[0][1] >= 1 and probe.seen[2][1] > probe.seen[1][1]


def test_teacher_stays_in_eval_mode_when_the_module_is_switched():
    """``train()`` on the whole module (what Lightning's loops and users call) leaves the teacher in eval mode."""
    from pckd.models import PCKDConfig
    from pckd.module import PCKDModule

    model = PCKDModule(PCKDConfig("resnet8", "resnet8", 10), teacher_random_init=True)
    model.eval()
    model.train()
    assert all(not m.training for m in model.teacher.modules())
    assert all(m.training for m in model.student.modules())
    assert all(m.training for m in model.align.modules())
