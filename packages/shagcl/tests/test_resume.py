"""``fit --ckpt_path last.ckpt`` continues SHA-GCL: the reduce-on-plateau state (lr scale, best mR@100, bad validations,
reductions) and the lr schedule of the resumed run equal those of an uninterrupted run, each epoch resamples its pairs
with that epoch's seed, and a run the plateau rule has stopped stays stopped."""

import math

import pytest
from mmzoo.testing import assert_loads_without_data

from shagcl.cli import main
from shagcl.module import SHAGCLModule


def _fit(tmp_path, name, epochs, extra=()):
    return main(
        args=[
            "fit",
            "--config",
            "tiny",
            "--data.data_root",
            str(tmp_path / "data"),
            "--trainer.default_root_dir",
            str(tmp_path / name),
            "--trainer.max_steps",
            "-1",
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.limit_train_batches",
            "2",
            "--trainer.val_check_interval",
            "1.0",
            "--trainer.check_val_every_n_epoch",
            "1",
            # every validation after the first is a plateau (threshold above any recall): one reduction per epoch
            # from epoch 1 on; the second reduction (epoch 2) stops the run before max_epochs=4
            "--model.plateau_patience",
            "1",
            "--model.plateau_threshold",
            "10.0",
            "--model.max_lr_reductions",
            "2",
            "--model.warmup_steps",
            "3",
            *extra,
        ]
    )


def _state(cli):
    m = cli.model
    return {
        "epoch": cli.trainer.current_epoch,
        "step": cli.trainer.global_step,
        "lr_scale": m.lr_scale,
        "best": m.best_metric,
        "bad": m.bad_validations,
        "reductions": m.lr_reductions,
        "group_sizes": m.group_sizes,
        "lr": [g["lr"] for g in m.optimizers().param_groups],
        "sched_step": m.lr_schedulers().last_epoch,
        "epoch_seed": cli.datamodule.datasets["train"].epoch_seed,
    }


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")
def test_resume_continues_plateau_rule_and_stays_stopped(tmp_path):
    full = _fit(tmp_path, "full", 4)
    a = _state(full)
    assert a["reductions"] == 2 and math.isclose(a["lr_scale"], 0.01) and a["epoch"] == 3  # stopped by the rule

    _fit(tmp_path, "resumed", 2)  # pre-empted after epoch 1 (one reduction so far)
    resumed = _fit(tmp_path, "resumed", 4, ["--ckpt_path", str(tmp_path / "resumed" / "checkpoints" / "last.ckpt")])
    b = _state(resumed)
    assert a == b
    # batches are shuffled and the model has dropout: parameters are not expected to match bit for bit

    # a run the plateau rule stopped does not train on when resumed with the same settings
    again = _fit(tmp_path, "full", 4, ["--ckpt_path", str(tmp_path / "full" / "checkpoints" / "last.ckpt")])
    assert again.trainer.global_step == a["step"] and again.model.lr_reductions == 2

    # from Python, the checkpoint loads without a datamodule (its predicate groups build the GCL decoder; class names
    # come along) and a Trainer given the datamodule then validates as `validate --ckpt_path` does, without
    # re-initialising the loaded decoder, word embeddings or box head
    loaded = assert_loads_without_data(
        SHAGCLModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2
    )
    assert loaded.group_sizes == list(full.model.group_sizes)
    assert loaded.predicate_names == full.model.predicate_names and loaded.object_names == full.model.object_names
