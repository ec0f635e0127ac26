"""Each shipped real-data config, unchanged but for its data root, the tiny random model (tiny.yaml's sizes, the
synthetic vocabulary, no pre-trained weights), small frames and batches and trainer limits, trains one step and is
validated and tested on tiny data written in the official layout of its corpus (spec §4)."""

import math

import pytest
from mmzoo.testing import QUIET_CPU_RUN

from snps3.cli import main
from snps3.synthetic import write_official_layouts

# one config per (dataset, task); pretrain_coco_vg_pvt differs from pretrain_coco_vg_r50 only in the visual encoder
FIT_CASES = {
    "pretrain_webvid_vst": ("r1_l1", "mlm_acc", "itm_acc", "r1_lvwm", "r1_l2", "select"),
    "pretrain_cc3m_vst": ("r1_l1", "mlm_acc", "itm_acc", "r1_lvwm", "r1_l2", "select"),
    "pretrain_coco_vg_r50": ("r1_l1", "mlm_acc", "itm_acc", "r1_lvwm", "r1_l2", "select"),
    "msrvtt_7k_retrieval": tuple(
        f"{lv}_simi_{d}-{k}" for lv in ("l1", "l2") for d in ("t2v", "v2t") for k in ("R@1", "MdR", "mean_recall")
    ),
    "msrvtt_9k_retrieval": ("l1_simi_t2v-R@1", "l2_simi_t2v-R@1", "l2_simi_v2t-MnR", "select"),
    "didemo_retrieval": ("l1_simi_t2v-R@1", "l2_simi_t2v-R@1", "l2_simi_v2t-MnR", "select"),
    "msvd_retrieval": ("l1_simi_t2v-R@1", "l2_simi_t2v-R@1", "l2_simi_v2t-MnR", "select"),
    "msrvtt_qa": ("acc", "select"),
    "msvd_qa": ("acc", "select"),
}

# tiny.yaml's model: a random tiny BERT over the synthetic vocab.txt and the tiny CNN
TINY = [
    "--model.config.bert=null",
    "--model.config.vocab_size=209",
    "--model.config.hidden_size=32",
    "--model.config.num_layers=2",
    "--model.config.num_heads=2",
    "--model.config.intermediate_size=64",
    "--model.config.max_position_embeddings=64",
    "--model.config.visual_encoder=tiny_cnn",
    "--model.config.visual_weights=null",
    "--model.num_threads=1",
    "--data.tokenizer=vocab.txt",
    "--data.crop_size=32",
    "--data.train_scale=[32, 36]",
    "--data.eval_short_side=32",
    "--data.long_side=64",
    "--data.batch_size=2",
    "--data.eval_batch_size=2",
    "--data.num_workers=0",
    "--data.pin_memory=false",
    "--data.persistent_workers=false",
    *QUIET_CPU_RUN,
    "--trainer.precision=32-true",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_official_layouts(tmp_path_factory.mktemp("snps3_official"), num_train=6, num_test=4, num_frames=8)


def args(name: str, root, data_root, init=None) -> list[str]:
    return [
        "--config",
        name,
        "--trainer.default_root_dir",
        str(root),
        f"--data.data_root={data_root}",
        f"--model.init_checkpoint={init or 'null'}",
        *TINY,
    ]


def finite(logged, stage: str, keys) -> None:
    for key in keys:
        assert f"{stage}/{key}" in logged, f"{stage}/{key} not logged; got {sorted(logged)}"
        assert math.isfinite(float(logged[f"{stage}/{key}"])), f"{stage}/{key}"


def fit_and_test(name: str, root, data_root, keys) -> None:
    common = args(name, root, data_root)
    limits = ["--trainer.max_steps=1", "--trainer.limit_train_batches=1", "--trainer.val_check_interval=1"]
    cli = main(args=["fit", *common, *limits])
    assert cli.trainer.global_step == 1
    logged = cli.trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss"]))
    finite(logged, "val", keys)
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    finite(cli.trainer.callback_metrics, "test", keys)
    return ckpt


@pytest.mark.parametrize("name", [n for n in FIT_CASES if n != "msrvtt_9k_retrieval"])
def test_shipped_config_fits_and_tests(name, data_root, tmp_path):
    fit_and_test(name, tmp_path, data_root, FIT_CASES[name])


def test_msrvtt_retrieval_checkpoint_answers_zero_shot_mc(data_root, tmp_path):
    """msrvtt_9k_retrieval trains; msrvtt_mc then tests zero-shot from that checkpoint (its init_checkpoint)."""
    ckpt = fit_and_test("msrvtt_9k_retrieval", tmp_path / "ret", data_root, FIT_CASES["msrvtt_9k_retrieval"])
    cli = main(args=["test", *args("msrvtt_mc", tmp_path / "mc", data_root, init=ckpt)])
    finite(cli.trainer.callback_metrics, "test", ("mc_acc", "select"))
    assert 0.0 <= float(cli.trainer.callback_metrics["test/mc_acc"]) <= 1.0
