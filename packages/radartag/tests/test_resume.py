"""``fit --ckpt_path last.ckpt`` continues the method: the adversarial weight λ_p continues from the restored step
counter (not from step 0), the model that setup() builds from the data gets the checkpoint's weights, and the
resumed run ends in the same method state as an uninterrupted one.

The batch order (shuffle), the neighbour sampling of each batch and dropout come from the global RNG, which a resume
does not restore, so the parameters of the two runs differ after the resumed epoch and are not compared.
"""

from mmzoo.testing import assert_loads_without_data, assert_started_from_checkpoint, record_state_at_train_start

from radartag.cli import main
from radartag.module import RadarModule


def _fit(tmp_path, root, epochs, ckpt=None):
    args = [
        "fit",
        "--config",
        "tiny",
        "--data.dataset_root",
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
        "1",
    ]
    return main(args=args + (["--ckpt_path", str(ckpt)] if ckpt else []))


def test_resume_continues_adversarial_schedule(tmp_path, monkeypatch):
    at_train_start = record_state_at_train_start(monkeypatch, RadarModule)
    full = _fit(tmp_path, "full", 2)
    part = _fit(tmp_path, "part", 1)
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    resumed = _fit(tmp_path, "resumed", 2, ckpt=ckpt)

    # the resumed run starts training from the checkpoint's weights and λ_p step counter
    assert_started_from_checkpoint(at_train_start, ckpt)
    start = at_train_start[-1]
    assert int(start["loss.step"]) == part.trainer.global_step > 0

    a, b = full.trainer, resumed.trainer
    assert (a.current_epoch, a.global_step) == (b.current_epoch, b.global_step)
    la, lb = full.model.loss, resumed.model.loss
    assert int(la.step) == int(lb.step) == a.global_step  # one schedule step per training batch (no accumulation)
    assert la.total_step == lb.total_step
    assert float(a.callback_metrics["train/lambda_p"]) == float(b.callback_metrics["train/lambda_p"])

    # from Python, the checkpoint loads without a datamodule (num_tags is left to the data in the tiny config, so the
    # model is built from the count the checkpoint stores) and validates as `validate --ckpt_path` does
    assert full.model.hparams.config["num_tags"] is None
    loaded = assert_loads_without_data(
        RadarModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=1
    )
    assert loaded.config.num_tags == full.model.config.num_tags
