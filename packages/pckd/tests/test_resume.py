"""``fit --ckpt_path last.ckpt`` continues the method: the resumed run ends in the same method state as an
uninterrupted one.

The training batches are drawn from the global RNG (shuffle, random crops, flips), which a resume does not restore,
so the parameters of the two runs differ after the resumed epoch and are not compared.
"""

import torch
from mmzoo.testing import assert_loads_without_data

from pckd.cli import main
from pckd.losses import PreviewWeights
from pckd.module import PCKDModule
from pckd.testing import write_cifar100_python


def _fit(data, root, epochs, ckpt=None):
    args = [
        "fit",
        "--config",
        "tiny",
        "--data.data_root",
        str(data),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
    ]
    return main(args=args + (["--ckpt_path", str(ckpt)] if ckpt else []))


def test_resume_continues_preview_schedule_and_state(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_cifar100_python(data, num_classes=10, n_train_per_class=4, n_test_per_class=2)
    preview_epochs: list[int] = []
    forward = PreviewWeights.forward

    def spy(self, ce, epoch):
        preview_epochs.append(epoch)
        return forward(self, ce, epoch)

    monkeypatch.setattr(PreviewWeights, "forward", spy)

    full = _fit(data, tmp_path / "full", 2)
    full_epochs = list(preview_epochs)
    part = _fit(data, tmp_path / "part", 1)
    first_best = float(part.model.best_val_acc1)
    preview_epochs.clear()
    resumed = _fit(data, tmp_path / "resumed", 2, ckpt=tmp_path / "part" / "checkpoints" / "last.ckpt")

    assert full_epochs == [1, 1, 2, 2]  # τ_e = λ^e with e = current_epoch + 1
    assert preview_epochs == full_epochs[2:]  # the resumed epoch previews with e = 2, not e = 1
    a, b = full.trainer, resumed.trainer
    assert (a.current_epoch, a.global_step) == (b.current_epoch, b.global_step)
    assert a.lr_scheduler_configs[0].scheduler.state_dict() == b.lr_scheduler_configs[0].scheduler.state_dict()
    assert [g["lr"] for g in a.optimizers[0].param_groups] == [g["lr"] for g in b.optimizers[0].param_groups]
    # the frozen teacher: the same random initialisation (seed 0) in both runs, restored from the checkpoint
    ta, tb = full.model.teacher.state_dict(), resumed.model.teacher.state_dict()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # the best validation top-1 carries over from the interrupted run instead of restarting at -1
    assert float(resumed.model.best_val_acc1) >= first_best >= 0
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(PCKDModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2)
