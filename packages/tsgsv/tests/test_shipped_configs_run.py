"""The shipped benchmark configs run end to end (``fit`` then ``test`` from the saved checkpoint) on tiny data
written in each dataset's official layout (spec §4):

- ``activitynet``: ``{train,val,test}.json`` with ``activitynet_v1-3_c3d_{split}.hdf5`` and
  ``bert-base-uncased_language_tokens_features_{split}.hdf5``; stands for the compressor ablations
  ``activitynet_compressor_{cqa,lstr,none,scdm,token_learner}`` (they differ only in ``model.config.compressor``);
- ``tacos``: one ``tall_c3d_features.hdf5`` for every split and the ``train&val`` sentence features (the config
  trains on train + val and validates on test);
- ``mad``: the raw MAD release converted by ``tsgsv convert-mad`` into ``CLIP_frames_features_5fps_{split}.hdf5``
  and ``CLIP_language_tokens_features_{split}.hdf5``.

Overridden: the data root, the feature widths with the model's hidden/FFN sizes and heads (tiny, random features),
the training batch, workers and the trainer limits (one step, one validation batch, cpu, no logger). Memories,
compressor tokens, evaluation settings, losses and split names stay as shipped.
"""

import math

import pytest
import torch
from mmzoo.testing import QUIET_CPU_RUN

from tsgsv.cli import main
from tsgsv.synthetic import SyntheticStreamConfig, write_synthetic_dataset, write_synthetic_mad_raw

DIM = 32  # feature widths; MAD's linear_before: false needs them equal to the hidden width
SIZES = ["--model.config.hidden_dim", "32", "--model.config.ffn_dim", "64", "--model.config.num_heads", "2"]


def _write(config, root):
    if config == "mad":
        raw = write_synthetic_mad_raw(root.parent / "mad_raw", num_movies=3, dim=DIM)
        main(args=["convert-mad", "--annotations", str(raw / "annotations"), "--features", str(raw / "features"),
                   "--out", str(root)])  # fmt: skip
        return
    files = {
        "activitynet": ("activitynet_v1-3_c3d_{split}.hdf5", ()),
        "tacos": ("tall_c3d_features.hdf5", ("train&val",)),
    }
    video_file, combined = files[config]
    cfg = SyntheticStreamConfig(
        videos_per_split=(3, 2, 2), queries_per_video=2, frames=(80, 100), events=(2, 3), event_length=(15, 30),
        video_dim=DIM, text_dim=DIM, tokens=(4, 24), video_feature_file=video_file,
        language_model="bert-base-uncased", combined_splits=combined,
    )  # fmt: skip
    write_synthetic_dataset(root, cfg)


@pytest.mark.parametrize("config", ["activitynet", "tacos", "mad"])
def test_shipped_benchmark_config_fits_and_tests(tmp_path, config):
    root = tmp_path / config
    _write(config, root)
    args = [
        *("--config", config, "--data.data_root", str(root)),
        *("--model.config.video_dim", str(DIM), "--model.config.text_dim", str(DIM), *SIZES),
        *("--data.batch_size", "8", "--data.num_workers", "2"),
        *QUIET_CPU_RUN,
        *("--trainer.default_root_dir", str(tmp_path / "run")),
    ]
    limits = ["--trainer.max_steps", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    cli = main(args=["fit", *args, *limits])
    dm = cli.datamodule
    if config == "tacos":  # trains on train + val, validates on test
        assert {a.video.split("_")[0] for a in dm.train_set.annotations} == {"train", "val"}
        assert {a.video.split("_")[0] for a in dm.val_set.annotations} == {"test"}
    m = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(m["train/loss"]))
    selection = cli.model.hparams.selection_metric  # R@1,IoU=0.5 (ANet, TACoS) or R@1,IoU=0.3 (MAD)
    assert f"val/{selection}" in m and torch.isfinite(m["val/selection"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *args, "--ckpt_path", str(ckpt)])
    m = cli.trainer.callback_metrics
    ev = cli.model.eval_config  # recall_at and iou_thresholds of the config
    expected = [f"test/R@{n},IoU={iou:g}" for n in ev.recall_at for iou in ev.iou_thresholds]
    for key in [*expected, "test/mAP", "test/mcAP"]:
        assert key in m and 0.0 <= float(m[key]) <= 1.0, key


def test_tacos_config_generates_demo_data_it_can_read(tmp_path):
    """With data.generate_demo_data, the tacos config's layout is written whole: every split's videos in the one
    tall_c3d_features.hdf5 and the train&val sentence features its train split reads."""
    demo = "{videos_per_split: [2, 1, 1], queries_per_video: 1, frames: [80, 90], video_dim: 32, text_dim: 32}"
    args = [
        *("--config", "tacos", "--data.data_root", str(tmp_path / "tacos"), "--data.generate_demo_data", "true"),
        *("--data.demo", demo, "--model.config.video_dim", str(DIM), "--model.config.text_dim", str(DIM), *SIZES),
    ]
    cli = main(args=args, run=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    assert {a.video.split("_")[0] for a in dm.train_set.annotations} == {"train", "val"}
    assert {a.video.split("_")[0] for a in dm.val_set.annotations} == {"test"}
