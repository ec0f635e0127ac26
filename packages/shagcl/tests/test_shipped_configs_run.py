"""The shipped paper configs run end to end (fit, then test on ``last.ckpt``) on tiny data in the official layouts:
VG150 (``vg/VG-SGG-with-attri.h5``, ``VG-SGG-dicts-with-attri.json``, ``image_data.json``, ``VG_100K/``) and GQA200
(``gqa/GQA_200_{ID_Info,Train,Test}.json``, ``images/``) with the full class counts (150/50 and 200/100), a GloVe
text file, a (random) torchvision detector state dict, and feature caches written by ``shagcl extract`` from it as
the README prescribes (PredCls/SGCls: pooled object and union maps; SGDet: ``--protocol sgdet --union_stage fc7``).

Each case keeps every key of its shipped config except the data root and feature cache, the GloVe and detector
files (tiny ones written by :mod:`shagcl.testing`), ``data.num_val_images`` (the tiny splits hold a few images),
batch sizes / loader workers, the relation head's size (``hidden_dim``, ``num_heads``, ``key_dim``, ``ffn_dim``,
``obj_layers``, ``edge_layers`` as small as tiny.yaml), and the trainer's length, device, precision (fp16 AMP does not
run on a CPU) and logger. Cases: ``{vg150,gqa200}_{predcls,sgcls,sgdet}``. The VG150 PredCls ablations
``vg150_predcls_sha`` (single classifier), ``_self_attention`` and ``_cross_attention`` (other encoders) differ from
``vg150_predcls`` only in that model switch and are not repeated.
"""

import math

import pytest
from mmzoo.testing import QUIET_CPU_RUN

from shagcl.cli import main
from shagcl.testing import write_detector_checkpoint, write_glove, write_gqa200, write_vg150

DATASETS = {"vg150": (150, 50), "gqa200": (200, 100)}  # object / predicate classes without background
CASES = [(d, p) for d in DATASETS for p in ("predcls", "sgcls", "sgdet")]
EXTRACT = ["--random_weights", "--min_size", "64", "--max_size", "96", "--num_val_images", "1"]

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


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Per dataset: the annotation files and images, GloVe, detector, and the PredCls and SGDet feature caches."""
    made = {}

    def make(dataset: str):
        if dataset in made:
            return made[dataset]
        root = tmp_path_factory.mktemp(dataset)
        n_obj, n_pred = DATASETS[dataset]
        kw = dict(n_obj_classes=n_obj, n_predicates=n_pred, max_obj=3, with_images=True)
        if dataset == "vg150":
            write_vg150(root, n_images=7, n_test=2, **kw)
            names = [f"object{i}" for i in range(1, n_obj + 1)]
        else:
            write_gqa200(root, n_train=5, n_test=2, **kw)
            names = [f"object{i}" for i in range(1, n_obj + 1)]
        glove = write_glove(root / "glove" / "glove.6B.200d.txt", names, 200)
        detector = write_detector_checkpoint(root / "detector.pth", n_obj + 1)
        caches = {}
        base = ["extract", "--dataset", dataset, "--data_root", str(root), "--checkpoint", str(detector), *EXTRACT]
        base.remove("--random_weights")
        caches["predcls"] = caches["sgcls"] = root / "features_predcls.h5"
        main(args=[*base, "--protocol", "predcls", "--output", str(caches["predcls"])])
        caches["sgdet"] = root / "features_sgdet.h5"
        # a random detector scores every class near 1/201: no threshold, so that detections exist
        main(args=[*base, "--protocol", "sgdet", "--union_stage", "fc7", "--score_thresh", "0",
                   "--detections_per_img", "4", "--output", str(caches["sgdet"])])  # fmt: skip
        made[dataset] = (root, glove, detector, caches)
        return made[dataset]

    return make


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
    cli = main(args=["fit", *common])
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/mR@100"):
        assert key in metrics and math.isfinite(float(metrics[key])), (key, sorted(metrics))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    metrics = cli.trainer.callback_metrics
    for k in (20, 50, 100):
        for name in ("R", "mR", "ng-R", "ng-mR", "zR"):
            key = f"test/{name}@{k}"
            assert key in metrics and 0.0 <= float(metrics[key]) <= 1.0, (key, sorted(metrics))
