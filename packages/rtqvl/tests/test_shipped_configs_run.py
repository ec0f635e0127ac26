"""Each shipped real-data config, unchanged but for its data root, tiny.yaml's random-init model sizes and trainer
limits, trains one step, validates and tests on tiny data written in the official layout of its dataset (spec §4)."""

import math

import pytest
from mmzoo.testing import QUIET_CPU_RUN

from rtqvl.cli import main
from rtqvl.synthetic import write_official_layouts

RETRIEVAL = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MdR", "t2v_MnR", "v2t_R@1", "v2t_MnR", "score")
CAPTION = ("BLEU-4", "CIDEr", "ROUGE-L", "score")
# one config per (dataset, task); the msrvtt_retrieval_* ablations differ from msrvtt_retrieval only in model switches
CASES = {
    "msrvtt_retrieval": RETRIEVAL,
    "didemo_retrieval": RETRIEVAL,
    "activitynet_retrieval": RETRIEVAL,
    "msrvtt_caption": CAPTION,
    "msvd_caption": CAPTION,
    "msrvtt_qa": ("acc", "score"),
    "nextqa": ("acc", "acc_C", "acc_T", "acc_D", "score"),
}

# tiny.yaml's model (random init: no pretrained_path) on 4 frames of 32x32
TINY = [
    "--model.config.vision.image_size=32",
    "--model.config.vision.patch_size=8",
    "--model.config.vision.hidden_size=64",
    "--model.config.vision.num_layers=4",
    "--model.config.vision.num_heads=4",
    "--model.config.vision.mlp_dim=128",
    "--model.config.vision.num_frames=4",
    "--model.config.vision.num_segments=2",
    "--model.config.vision.cluster_block=2",
    "--model.config.vision.temporal_block=3",
    "--model.config.text.vocab_path=tiny",
    "--model.config.text.hidden_size=64",
    "--model.config.text.num_layers=2",
    "--model.config.text.num_heads=4",
    "--model.config.text.intermediate_size=128",
    "--model.config.pretrained_path=null",
    "--data.num_frames=4",
    "--data.image_size=32",
    "--data.batch_size=2",
    "--data.eval_batch_size=2",
    "--data.num_workers=0",
    *QUIET_CPU_RUN,
    "--trainer.precision=32-true",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_official_layouts(tmp_path_factory.mktemp("rtqvl_official"), num_train=4, num_test=4)


def finite(logged, stage: str, keys) -> None:
    for key in keys:
        assert f"{stage}/{key}" in logged, f"{stage}/{key} not logged; got {sorted(logged)}"
        assert math.isfinite(float(logged[f"{stage}/{key}"])), f"{stage}/{key}"


@pytest.mark.parametrize("name", list(CASES))
def test_shipped_config_fits_and_tests(name, data_root, tmp_path):
    common = ["--config", name, "--trainer.default_root_dir", str(tmp_path), f"--data.data_root={data_root}", *TINY]
    cli = main(args=["fit", *common, "--trainer.max_steps=1", "--trainer.limit_train_batches=1"])
    assert cli.trainer.global_step == 1
    logged = cli.trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss"]))
    finite(logged, "val", CASES[name])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    finite(cli.trainer.callback_metrics, "test", CASES[name])
