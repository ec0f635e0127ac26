"""Resuming ``fit`` from ``last.ckpt`` continues the method: an interrupted run (1 epoch, then resume to 2) ends
with the same training state as an uninterrupted 2-epoch run.

Method state of a retrieval run and where it lives: the momentum encoders/projections (submodules), the ITC feature
queues and the queue pointer (registered buffers), the temperature (a parameter), AdamW's moments (optimizer
state), the learning rate (recomputed every batch from ``current_epoch`` and the batch index) and the distillation
weight α (recomputed from the same counters). The global RNG streams are not part of a checkpoint, so the test
draws the data order and the augmentation/dropout randomness from (seed, epoch) at the start of every epoch; with
that, the whole state dict must match too.
"""

from __future__ import annotations

import torch
from mmzoo.testing import assert_loads_without_data, assert_same_training_state, epoch_seeded_train_dataloader

from rtqvl.cli import main
from rtqvl.data import RTQDataModule
from rtqvl.module import RTQModule


def _fit(root, max_epochs: int, *extra: str):
    common = [
        "fit",
        "--config",
        "tiny",
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
        "--data.data_root",
        str(root.parent / "data"),
        "--data.demo_num_train",
        "17",
        "--data.demo_num_test",
        "8",
        "--model.config.queue_size",
        "24",  # 2 batches of 8 per epoch: the pointer stands at 16 after epoch 0, not at the wrap-around
    ]
    return main([*common, *extra]).trainer


def test_resume_continues_momentum_queues_and_schedule(tmp_path, monkeypatch):
    monkeypatch.setattr(RTQDataModule, "train_dataloader", epoch_seeded_train_dataloader(RTQDataModule))
    full = _fit(tmp_path / "full", 2)
    _fit(tmp_path / "cut", 1)
    resumed = _fit(tmp_path / "cut", 2, "--ckpt_path", str(tmp_path / "cut" / "checkpoints" / "last.ckpt"))

    a, b = full.lightning_module, resumed.lightning_module
    assert (full.current_epoch, full.global_step) == (resumed.current_epoch, resumed.global_step) == (2, 4)
    ma, mb = a.model, b.model
    assert int(ma.queue_ptr) == int(mb.queue_ptr) == (4 * 8) % 24
    for name in ("video_queue", "text_queue", "idx_queue"):
        torch.testing.assert_close(getattr(ma, name), getattr(mb, name), msg=name)
    for (_, ema_a), (_, ema_b) in zip(ma.momentum_pairs(), mb.momentum_pairs(), strict=True):
        for (n, pa), pb in zip(ema_a.named_parameters(), ema_b.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, msg=f"momentum {n}")
    assert float(full.callback_metrics["train/alpha"]) == float(resumed.callback_metrics["train/alpha"])
    assert_same_training_state(full, resumed)  # weights, buffers, AdamW moments, lrs
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(RTQModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2)
