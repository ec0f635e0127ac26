"""``fit --ckpt_path last.ckpt`` continues the method: the resumed run draws the same training windows per epoch as
an uninterrupted one and ends in the same method state.

The batch order (shuffle) and dropout come from the global RNG, which a resume does not restore, so the parameters
of the two runs differ after the resumed epoch and are not compared.
"""

from mmzoo.testing import assert_loads_without_data

from tsgsv.cli import main
from tsgsv.module import TSGSVModule


def _fit(tmp_path, root, epochs, seed, ckpt=None):
    args = [
        "fit",
        "--config",
        "tiny",
        "--data.data_root",
        str(tmp_path / "data"),
        "--trainer.default_root_dir",
        str(tmp_path / root),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_val_batches",
        "0",
        "--data.demo.videos_per_split",
        "[3, 1, 1]",
        "--seed_everything",
        str(seed),
    ]
    return main(args=args + (["--ckpt_path", str(ckpt)] if ckpt else []))


def test_resume_redraws_the_same_windows(tmp_path):
    full = _fit(tmp_path, "full", 2, seed=0)
    _fit(tmp_path, "part", 1, seed=0)
    # the relaunch gets another global seed, as with `seed_everything: true` (a fresh seed per launch)
    resumed = _fit(tmp_path, "resumed", 2, seed=1, ckpt=tmp_path / "part" / "checkpoints" / "last.ckpt")

    a, b = full.trainer, resumed.trainer
    # epoch 2's windows come from the first launch's base seed + epoch, not from the relaunch's seed
    assert full.datamodule._window_seed == resumed.datamodule._window_seed
    assert full.datamodule.train_set.windows == resumed.datamodule.train_set.windows
    # full epochs: the number of windows, hence of steps, is set by the draws
    assert (a.current_epoch, a.global_step) == (b.current_epoch, b.global_step)
    sa, sb = a.lr_scheduler_configs[0].scheduler, b.lr_scheduler_configs[0].scheduler
    assert sa.last_epoch == sb.last_epoch and sa.get_last_lr() == sb.get_last_lr()
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(TSGSVModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2)
