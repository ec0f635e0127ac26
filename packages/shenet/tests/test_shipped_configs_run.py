"""Each shipped real-data config, unchanged but for its data root, the tiny random model and trainer limits, trains
one step and tests on a tiny dataset written in that dataset's official layout (spec §4)."""

import math

import pytest
import yaml
from mmzoo.cli import resolve_config
from mmzoo.testing import QUIET_CPU_RUN

from shenet.cli import main
from shenet.synthetic import write_digits_official

# one config per (dataset, task); msrvtt_meanp and msrvtt_vitb16 differ from msrvtt only in model switches
CASES = ["msrvtt", "msvd", "didemo", "activitynet"]
# test queries over the 4 written test videos: MSVD evaluates every caption, the others one text per video
QUERIES = {"msrvtt": 4, "msvd": 8, "didemo": 4, "activitynet": 4}

# the model of tiny.yaml: a random custom CLIP on 4 frames of 32x32
TINY_MODEL = {
    "clip_model": "custom",
    "pretrained": "null",
    "random_init": "true",
    "custom_embed_dim": "32",
    "custom_image_size": "32",
    "custom_patch_size": "16",
    "custom_vision_width": "64",
    "custom_vision_layers": "2",
    "custom_vision_head_width": "32",
    "custom_text_width": "64",
    "custom_text_layers": "2",
    "custom_text_heads": "2",
    "temporal_layers": "1",
    "temporal_heads": "2",
    "max_frames": "4",
}
METRICS = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MdR", "t2v_MnR", "v2t_R@1", "v2t_MnR")


def overrides(name: str, root, data_root) -> list[str]:
    shipped = yaml.safe_load(open(resolve_config(name, "shenet")))
    args = ["--config", name, "--trainer.default_root_dir", str(root)]
    args += [f"--model.config.{k}={v}" for k, v in TINY_MODEL.items()]
    # the text context must hold the shipped caption length
    args += [f"--model.config.custom_context_length={shipped['data']['max_words']}"]
    args += [
        f"--data.data_root={data_root}",
        "--data.max_frames=4",
        "--data.image_size=32",
        "--data.batch_size=2",
        "--data.eval_batch_size=2",
        "--data.num_workers=0",
        "--data.pin_memory=false",
        "--data.persistent_workers=false",
        *QUIET_CPU_RUN,
    ]
    return args


@pytest.mark.parametrize("name", CASES)
def test_shipped_config_fits_and_tests(name, tmp_path):
    shipped = yaml.safe_load(open(resolve_config(name, "shenet")))
    data_root = write_digits_official(shipped["data"]["dataset"], tmp_path / "data", num_train=4, num_test=4)
    common = overrides(name, tmp_path, data_root)
    cli = main(args=["fit", *common, "--trainer.max_steps=1", "--trainer.limit_train_batches=1"])
    assert cli.trainer.global_step == 1
    logged = cli.trainer.callback_metrics
    assert math.isfinite(float(logged["train/loss"]))
    for key in METRICS:
        assert math.isfinite(float(logged[f"val/{key}"])), key
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    assert cli.datamodule.num_queries("test") == QUERIES[name]
    logged = cli.trainer.callback_metrics
    for key in METRICS:
        assert math.isfinite(float(logged[f"test/{key}"])), key
    assert 0.0 <= float(logged["test/t2v_R@1"]) <= 100.0
