"""The shipped paper configs run end to end (fit, then test on ``last.ckpt``) on tiny data in the official layouts:
VG150 (``vg/VG-SGG-with-attri.h5``, ``VG-SGG-dicts-with-attri.json``, ``image_data.json``, ``VG_100K/``) and GQA200
(``gqa/GQA_200_{ID_Info,Train,Test}.json``, ``images/``) with the full class counts (150/50 and 200/100), a GloVe
text file, a (random) torchvision detector state dict, and feature caches written by ``shagcl extract`` from it as
the README prescribes (PredCls/SGCls: pooled object and union maps; SGDet: ``--protocol sgdet --union_stage fc7``).

Each case keeps every key of its shipped config except the data root and feature cache, the GloVe and detector
files (tiny ones written by :mod:`shagcl.testing`), ``data.num_val_images`` (the tiny splits hold a few images),
batch sizes / loader workers, the relation head's size (``hidden_dim``, ``num_heads``, ``key_dim``, ``ffn_dim``,
``obj_layers``, ``edge_layers`` as small as tiny.yaml), and the trainer's length, device, precision (fp16 AMP does not
run on a CPU), logger and checkpointing (one ``last.ckpt`` saved after the fit). The data come from the session's ``official`` fixture (conftest.py), which the real-size
training-state checks share. Cases: ``{vg150,gqa200}_{predcls,sgcls,sgdet}``. The VG150 PredCls ablations
``vg150_predcls_sha`` (single classifier), ``_self_attention`` and ``_cross_attention`` (other encoders) differ from
``vg150_predcls`` only in that model switch and are not repeated.
"""

import math

import pytest
from mmzoo.testing import QUIET_CPU_RUN
from shagcl_testlib import assert_test_recalls

from shagcl.cli import main

CASES = [(d, p) for d in ("vg150", "gqa200") for p in ("predcls", "sgcls", "sgdet")]

SMALL = [
    "--data.num_val_images", "1",
    "--data.batch_size", "2",
    "--data.test_batch_size", "2",
    "--data.num_workers", "0",
    "--model.config.hidden_dim", "32",
    "--model.config.num_heads", "2",
    "--model.config.key_dim", "16",
    "--model.config.ffn_dim", "64",
    "--model.config.obj_layers", "1",
    "--model.config.edge_layers", "1",
    *QUIET_CPU_RUN,
    "--trainer.precision", "32-true",
    "--trainer.max_steps", "1",
    "--trainer.val_check_interval", "1",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
]  # fmt: skip


@pytest.mark.parametrize(("dataset", "protocol"), CASES, ids=[f"{d}_{p}" for d, p in CASES])
def test_shipped_config_runs(official, tmp_path, dataset, protocol):
    root, glove, detector, caches = official(dataset)
    common = [
        "--config", f"{dataset}_{protocol}", *SMALL,
        "--data.data_root", str(root),
        "--data.feature_cache", str(caches[protocol]),
        "--model.config.glove_path", str(glove),
        "--model.config.box_head_checkpoint", str(detector),
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    # one checkpoint, written after the fit: the checkpoint callbacks would write two per validation, each holding
    # the detector-sized fc6/fc7 copies and their momentum (about 0.3 GB)
    cli = main(args=["fit", *common, "--trainer.enable_checkpointing", "false"])
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/mR@100"):
        assert key in metrics and math.isfinite(float(metrics[key])), (key, sorted(metrics))
    ckpt = tmp_path / "run" / "last.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    assert_test_recalls(main(args=["test", *common, "--ckpt_path", str(ckpt)]).trainer.callback_metrics)
