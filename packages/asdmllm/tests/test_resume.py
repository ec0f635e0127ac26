"""``fit --ckpt_path last.ckpt`` continues ASD: the per-sample Skew, the resampled list and the LR schedule of the
resumed run equal those of an uninterrupted run."""

import pytest
import torch
from mmzoo.testing import assert_loads_without_data

from asdmllm.cli import main
from asdmllm.module import ASDModule


def _fit(tmp_path, name, data, extra):
    args = [
        "fit",
        "--config",
        "tiny",
        "--data.data_root",
        data,
        "--trainer.default_root_dir",
        str(tmp_path / name),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        # a Skew table kept for two epochs: epoch 1 reuses the table estimated at the start of epoch 0
        "--model.debias.refresh_every_n_epochs",
        "2",
        "--model.scheduler",
        "cosine",
        "--model.warmup_ratio",
        "0.25",
        *extra,
    ]
    return main(args=args)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_continues_skew_table_resampling_and_schedule(tmp_path):
    data = str(tmp_path / "data")
    full = _fit(tmp_path, "full", data, [])
    # pre-emption after epoch 0 of the same 2-epoch run (EarlyStopping stops it once the epoch ends)
    stop = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
        "--trainer.callbacks.monitor=train/loss",
        "--trainer.callbacks.stopping_threshold=1e9",
    ]
    first = _fit(tmp_path, "resumed", data, stop)
    assert first.trainer.current_epoch == 1 and first.trainer.should_stop
    ckpt = str(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    resumed = _fit(tmp_path, "resumed", data, ["--ckpt_path", ckpt])

    a, b = full.model, resumed.model
    assert full.trainer.current_epoch == resumed.trainer.current_epoch == 2
    assert full.trainer.global_step == resumed.trainer.global_step
    # method state: the per-sample Skew of the last epoch (estimated at epoch 0) and that epoch's resampled list
    torch.testing.assert_close(a.sample_skew, b.sample_skew, rtol=0, atol=0)
    assert torch.equal(full.datamodule.train_sampler.indices, resumed.datamodule.train_sampler.indices)
    # the LR schedule counts the same optimizer steps
    assert a.lr_schedulers().last_epoch == b.lr_schedulers().last_epoch
    assert a.optimizers().param_groups[0]["lr"] == b.optimizers().param_groups[0]["lr"]
    # the data order is a function of (Skew, seed, epoch) and the tiny model has no dropout: same parameters
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(ASDModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize(
    "variant",
    [["--model.debias.epoch_length", "nominal"], ["--model.debias.resample", "false"]],
    ids=["nominal_epochs", "sfloss_only"],
)
def test_resume_keeps_the_skew_table_when_the_schedule_reads_the_loader(tmp_path, variant):
    """Without resampled epochs the LR schedule is sized from ``trainer.estimated_stepping_batches``, which builds
    the training loader in configure_optimizers, before the loop counters of a resumed fit are restored. A resume
    at epoch 3 with a Skew table kept for two epochs (estimated at epoch 2) must go on with that table."""
    data = str(tmp_path / "data")
    common = [*variant, "--model.scheduler", "constant", "--model.warmup_ratio", "0.0"]
    full = _fit(tmp_path, "full", data, [*common, "--trainer.max_epochs", "4"])
    _fit(tmp_path, "resumed", data, [*common, "--trainer.max_epochs", "3"])
    ckpt = str(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    resumed = _fit(tmp_path, "resumed", data, [*common, "--trainer.max_epochs", "4", "--ckpt_path", ckpt])

    a, b = full.model, resumed.model
    assert full.trainer.global_step == resumed.trainer.global_step
    assert a._skew_epoch == b._skew_epoch == 2
    torch.testing.assert_close(a.sample_skew, b.sample_skew, rtol=0, atol=0)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
