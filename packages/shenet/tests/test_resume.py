"""Resuming ``fit`` from ``last.ckpt`` continues the method: a run of 2 epochs stopped after the first (as a
pre-empted job is) and resumed ends with the same training state as an uninterrupted 2-epoch run.

Method state and where it lives: the parameters (incl. the logit scale), BertAdam's first and second moments
(optimizer state, kept in float32 whatever the parameters' dtype), the warm-up + cosine schedule (``LambdaLR``: its
step count is scheduler state, its length is recomputed from ``max_epochs``, so the interrupted run is configured
with the same ``max_epochs`` and stopped, not started with fewer epochs) and the parser record of the data module
(``SHENetDataModule.state_dict``). The global RNG streams are not part of a checkpoint, so the test draws the data
order and every random draw of an epoch from (seed, epoch); with that, the whole state dict must match too.
"""

from __future__ import annotations

import pytest
import torch
from mmzoo.testing import assert_loads_without_data, assert_same_training_state, epoch_seeded_train_dataloader

from shenet.cli import main
from shenet.data import SHENetDataModule
from shenet.module import SHENetModule


def _stop_after_this_epoch(self):
    self.trainer.should_stop = True


def _fit(root, data_root, precision: str, *extra: str):
    args = [
        "fit",
        "--config",
        "tiny",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.precision",
        precision,
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--data.data_root",
        str(data_root),
    ]
    return main(args=[*args, *extra]).trainer


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_resume_continues_optimizer_and_schedule(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(SHENetDataModule, "train_dataloader", epoch_seeded_train_dataloader(SHENetDataModule))
    data = tmp_path / "data"
    full = _fit(tmp_path / "full", data, precision)
    with monkeypatch.context() as m:
        m.setattr(SHENetModule, "on_train_epoch_end", _stop_after_this_epoch, raising=False)
        cut = _fit(tmp_path / "cut", data, precision)
    assert cut.current_epoch == 1
    resumed = _fit(
        tmp_path / "cut", data, precision, "--ckpt_path", str(tmp_path / "cut" / "checkpoints" / "last.ckpt")
    )

    assert (full.current_epoch, full.global_step) == (resumed.current_epoch, resumed.global_step) == (2, 4)
    sched_a, sched_b = full.lr_scheduler_configs[0].scheduler, resumed.lr_scheduler_configs[0].scheduler
    assert sched_a.last_epoch == sched_b.last_epoch == 4
    opt = resumed.optimizers[0]
    for p in (p for g in opt.param_groups for p in g["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].dtype == torch.float32, (key, opt.state[p][key].dtype)
    assert_same_training_state(full, resumed)  # weights, BertAdam moments (dtype included), lrs
    assert full.datamodule.state_dict() == resumed.datamodule.state_dict()
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    if precision == "32-true":
        assert_loads_without_data(
            SHENetModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=1
        )
