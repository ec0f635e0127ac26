"""The training state under the shipped benchmark configs at their real model sizes (ActivityNet: C3D-PCA 500 /
BERT 768 features, h = FFN = 1024, 8 heads, dropout 0.5, 2-layer bidirectional GRU with dropout 0.5; MAD: CLIP 512,
h = 512, no input projection), looked at inside the first training step of ``fit`` (after Lightning's sanity
validation, which runs the streaming evaluation):

* every module is in train mode (dropout and the GRU's inter-layer dropout on): nothing is pre-trained or frozen;
* every parameter (the loss's twin regressor included) sits in exactly one AdamW group with the config's lr and
  weight decay;
* the per-step learning rate follows spec §3.11: linear warm-up from 0.1·lr over ``warmup_epochs`` epochs of
  optimizer steps (the real windows per epoch over the batch and ``accumulate_grad_batches``), flat to 40% of the
  steps of all ``max_epochs``, cosine to 0;
* gradient clipping (L2 norm 20), float32 and the checkpoint monitor (``val/selection``, logged).

The training batch is 16 windows instead of 512 so that an epoch of the small data has several steps; the data
are a few synthetic videos in the official layout.
"""

import math

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from mmzoo.cli import build
from mmzoo.testing import IN_PROCESS_LOADERS, QUIET_CPU_RUN, FirstStepProbe

from tsgsv.cli import main
from tsgsv.synthetic import SyntheticStreamConfig, write_synthetic_dataset, write_synthetic_mad_raw

BATCH = 16


class _Probe(FirstStepProbe):
    """The training state at the first training batch, with the schedule and the epoch's batch count."""

    def extra(self, trainer, module):
        sched = trainer.lr_scheduler_configs[0]
        return {
            "batches": trainer.num_training_batches,
            "factor": sched.scheduler.lr_lambdas[0],
            "interval": sched.interval,
            "train_windows": len(trainer.datamodule.train_set),
        }


def _write(config, root):
    if config == "mad":
        raw = write_synthetic_mad_raw(root.parent / "mad_raw", num_movies=3, dim=512)
        main(args=["convert-mad", "--annotations", str(raw / "annotations"), "--features", str(raw / "features"),
                   "--out", str(root)])  # fmt: skip
        return
    cfg = SyntheticStreamConfig(
        videos_per_split=(3, 2, 2), queries_per_video=2, frames=(80, 100), events=(2, 3), event_length=(15, 30),
        video_dim=500, text_dim=768, tokens=(4, 24), video_feature_file="activitynet_v1-3_c3d_{split}.hdf5",
        language_model="bert-base-uncased",
    )  # fmt: skip
    write_synthetic_dataset(root, cfg)


@pytest.mark.parametrize(
    ("config", "accumulate", "recipe"),
    [
        ("activitynet", 1, {"lr": 1e-5, "warmup_epochs": 4, "epochs": 10, "dropout": 0.5, "h": 1024}),
        ("mad", 2, {"lr": 6e-5, "warmup_epochs": 6, "epochs": 15, "dropout": 0.2, "h": 512}),
    ],
)
def test_real_config_training_state(tmp_path, config, accumulate, recipe):
    root = tmp_path / config
    _write(config, root)
    overrides = [
        "--data.data_root", str(root), "--data.batch_size", str(BATCH), *IN_PROCESS_LOADERS,
        *QUIET_CPU_RUN, "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.num_sanity_val_steps", "1",
        "--trainer.limit_val_batches", "1", "--trainer.accumulate_grad_batches", str(accumulate),
    ]  # fmt: skip
    model, data, trainer = build("tsgsv", config, *overrides)
    probe = _Probe()
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + [probe]
    assert model.checkpoint_monitor == "val/selection"
    trainer.fit(model, datamodule=data)
    seen = probe.seen
    assert seen and not seen["sanity_checking"]
    cfg = model.config
    assert (cfg.hidden_dim, cfg.dropout, cfg.gru_layers) == (recipe["h"], recipe["dropout"], 2)

    # 1. modes: every module trains (nothing is frozen in TSGSV); the GRU's inter-layer dropout applies
    assert seen["not_training"] == []
    gru = model.model.sentence_encoder.gru
    assert (gru.num_layers, gru.bidirectional, gru.dropout) == (2, True, 0.5)

    # 2./3. one AdamW group with every parameter once, the config's lr and weight decay 5e-4
    assert seen["frozen"] == []
    (group,) = seen["groups"]
    assert len(group[2]) == len(set(group[2])) and set(group[2]) == seen["trainable"]
    assert seen["initial_lr"] == [pytest.approx(recipe["lr"])] and group[1] == pytest.approx(5e-4)
    assert group[0] == pytest.approx(0.1 * recipe["lr"])  # the warm-up starts from 0.1·lr

    # the schedule in optimizer steps: epochs of ceil(batches / accumulate) steps
    batches = math.ceil(seen["train_windows"] / BATCH)
    assert seen["batches"] == batches and batches >= 2
    per_epoch = math.ceil(batches / accumulate)
    total = recipe["epochs"] * per_epoch
    assert seen["total"] == total and seen["interval"] == "step"
    warmup = recipe["warmup_epochs"] * per_epoch
    flat_end = max(0.4 * total, warmup)
    f = seen["factor"]
    assert f(0) == pytest.approx(0.1)
    assert f(warmup / 2) == pytest.approx(0.55)
    assert f(warmup) == f(math.ceil(flat_end)) == 1.0  # the peak; 4 of 10 (6 of 15) epochs is 40%: no flat part
    assert f(math.ceil(flat_end) + 1) < 1.0
    assert f((flat_end + total) / 2) == pytest.approx(0.5)
    assert f(total) == pytest.approx(0.0, abs=1e-12)

    # 4. clipping, precision and the monitored key
    assert (trainer.gradient_clip_val, trainer.gradient_clip_algorithm) == (20.0, "norm")
    assert trainer.precision == "32-true"
    assert trainer.reload_dataloaders_every_n_epochs == 1
    trainer.validate(model, datamodule=data, verbose=False)
    assert "val/selection" in trainer.callback_metrics
