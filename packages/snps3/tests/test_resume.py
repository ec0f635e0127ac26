"""Resuming ``fit`` from ``last.ckpt`` continues the method: an interrupted pre-training run (1 epoch, then resume
to 2) ends with the same training state as an uninterrupted 2-epoch run.

Method state of a pre-training run and where it lives: the MoCo key encoders (``momentum``, a submodule), the text
and clip key queues and their pointers (buffers of ``moco_loss``), AdamW's moments (optimizer state), the warm-up
and step decay (``LambdaLR``, whose step count is scheduler state; the epoch unit reads ``current_epoch``). The
masking (MSSM, attentive re-masking) draws from the global RNG per batch and has no schedule of its own. The global
RNG streams are not part of a checkpoint, so the test draws the data order and every random draw of an epoch from
(seed, epoch); with that, the whole state dict must match too.
"""

from __future__ import annotations

import torch
from mmzoo.testing import assert_loads_without_data, assert_same_training_state, epoch_seeded_train_dataloader

from snps3.cli import main
from snps3.data import SNPS3DataModule
from snps3.module import SNPS3Module


def _fit(root, data_root, max_epochs: int, *extra: str):
    args = [
        "fit",
        "--config",
        "tiny",
        "--data.data_root",
        str(data_root),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        str(max_epochs),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--model.warmup_iterations",
        "3",
        "--model.lr_steps",
        "[3]",
    ]
    return main([*args, *extra])


def test_resume_continues_moco_queues_and_schedule(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(SNPS3DataModule, "train_dataloader", epoch_seeded_train_dataloader(SNPS3DataModule))
    full = _fit(tmp_path / "full", synthetic_root, 2)
    _fit(tmp_path / "cut", synthetic_root, 1)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = _fit(tmp_path / "cut", synthetic_root, 2, "--ckpt_path", str(last))

    ta, tb = full.trainer, resumed.trainer
    assert (ta.current_epoch, ta.global_step) == (tb.current_epoch, tb.global_step) == (2, 4)
    a, b = full.model, resumed.model
    for q in ("queue_t", "queue_v"):
        qa, qb = getattr(a.moco_loss, q), getattr(b.moco_loss, q)
        assert int(qa.ptr) == int(qb.ptr) != 0, q
        torch.testing.assert_close(qa.keys, qb.keys, msg=q)
    for (n, pa), pb in zip(a.momentum.named_parameters(), b.momentum.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, msg=f"momentum {n}")
    sched_a, sched_b = ta.lr_scheduler_configs[0].scheduler, tb.lr_scheduler_configs[0].scheduler
    assert sched_a.last_epoch == sched_b.last_epoch == 4
    assert_same_training_state(ta, tb)  # weights, buffers, AdamW moments, lrs
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(SNPS3Module, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2)
