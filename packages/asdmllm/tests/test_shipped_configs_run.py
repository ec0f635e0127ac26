"""The shipped paper configs run end to end (fit, then test on ``last.ckpt``) on tiny data in the official layouts:
SocialCounterfactuals and CMSC parquet shards (``<root>/data/*.parquet``), FairFace's ``fairface_label_val.csv`` with
``val/<i>.jpg``.

For LLaVA, ``model.mllm.pretrained`` points to a tiny random LLaVA written as a local ``transformers`` snapshot by
:func:`asdmllm.testing.save_tiny_llava` at the shipped image size (the 7B/13B weights cannot be loaded here); for
Qwen2-VL (no tiny snapshot writer) it is null, which builds the tiny random model of the shipped ``arch`` as tiny.yaml
does. Every other key of the shipped config is kept except the data roots, batch sizes / loader workers, and the
trainer's length, device, devices, strategy and logger. Cases:

* ``llava7b_socialcounterfactuals`` (ASD on SocialCounterfactuals, bias tests on its test split, FairFace and CMSC):
  also stands for ``llava13b_socialcounterfactuals`` (another checkpoint of the same architecture).
* ``llava7b_socialcounterfactuals_lora`` (LoRA on bf16 weights, one device, gradient accumulation).
* ``qwen2vl7b_socialcounterfactuals`` (the Qwen2-VL architecture, its chat template, 448 px).
* ``llava7b_socialcounterfactuals_ft`` (the plain fine-tuning baseline).
* ``llava7b_cmsc`` (ASD trained on CMSC, bias tests on its test split and FairFace).
"""

import math

import pytest
from mmzoo.testing import IN_PROCESS_LOADERS, ONE_BATCH_EACH, QUIET_CPU_RUN

from asdmllm.cli import main
from asdmllm.data import make_cmsc, make_fairface, make_socialcounterfactuals
from asdmllm.models import MLLMConfig
from asdmllm.testing import build_llama_style_tokenizer, save_tiny_llava

IMAGE_SIZE = 336  # the LLaVA configs' data.image_size; the tiny snapshot's vision tower takes the same size
QWEN_IMAGE_SIZE = 448  # the Qwen2-VL config's data.image_size and model.mllm.image_size

SMALL = [
    "--data.batch_size", "2",
    "--data.eval_batch_size", "4",
    *IN_PROCESS_LOADERS,
    *QUIET_CPU_RUN,
    *ONE_BATCH_EACH,
]  # fmt: skip

# (shipped config, training data folder, bias test sets beyond the training data's own test split, resampled)
CASES = [
    ("llava7b_socialcounterfactuals", "SocialCounterfactuals", ("fairface", "cmsc"), True),
    ("llava7b_socialcounterfactuals_lora", "SocialCounterfactuals", ("fairface", "cmsc"), True),
    ("qwen2vl7b_socialcounterfactuals", "SocialCounterfactuals", ("fairface", "cmsc"), True),
    ("llava7b_socialcounterfactuals_ft", "SocialCounterfactuals", ("fairface", "cmsc"), False),
    ("llava7b_cmsc", "CMSC", ("fairface",), True),
]
# social attributes of each bias test set (SocialCounterfactuals: the race-gender family)
ATTRIBUTES = {"socialcounterfactuals": ("race", "gender"), "cmsc": ("race", "gender", "age"),
              "fairface": ("race", "gender", "age")}  # fmt: skip


@pytest.fixture(scope="module")
def official_data(tmp_path_factory):
    """Tiny SocialCounterfactuals, CMSC and FairFace folders and a tiny LLaVA snapshot, shared by the cases."""
    root = tmp_path_factory.mktemp("official")
    cmsc = {"personality": ["compassionate", "pleasant"], "responsibility": ["chef"]}  # groups of spec §4.2
    for size in (IMAGE_SIZE, QWEN_IMAGE_SIZE):
        folder = root / str(size)
        make_socialcounterfactuals(
            folder / "SocialCounterfactuals", ["plumber", "nurse", "chef"], ["White", "Black"], ["male", "female"], 3,
            image_size=size, every_split=True,
        )  # fmt: skip
        make_cmsc(folder / "CMSC", concepts=cmsc, n_sets=3, image_size=size, every_split=True)
        make_fairface(folder / "fairface", 4, image_size=size)
    tiny = MLLMConfig(image_size=IMAGE_SIZE, patch_size=14)
    save_tiny_llava(root / "llava", build_llama_style_tokenizer(), tiny)
    return root


@pytest.mark.parametrize(("config", "train_data", "extra_sets", "resampled"), CASES, ids=[c[0] for c in CASES])
def test_shipped_config_runs(official_data, tmp_path, config, train_data, extra_sets, resampled):
    qwen = config.startswith("qwen")
    data = official_data / str(QWEN_IMAGE_SIZE if qwen else IMAGE_SIZE)
    common = [
        "--config", config, *SMALL,
        "--model.mllm.pretrained", "null" if qwen else str(official_data / "llava"),
        "--data.data_root", str(data / train_data),
        "--data.fairface_root", str(data / "fairface"),
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    if "cmsc" in extra_sets:
        common += ["--data.cmsc_root", str(data / "CMSC")]
    cli = main(args=["fit", *common])
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    own = train_data.lower()
    keys = ["train/loss", "val/loss", f"val/bias/{own}/max_skew", f"val/bias/{own}/min_skew"]
    if resampled:  # ASD: the Skew of the training set is estimated before the epoch and drives the resampling
        keys += ["train/max_skew", "train/min_skew", "train/resampled_length"]
    for key in keys:
        assert key in metrics and math.isfinite(float(metrics[key])), (key, sorted(metrics))
    assert resampled == ("train/max_skew" in metrics)
    # the loaded checkpoint trains in train mode (dropout on) whether or not a Skew refresh ran before the epoch
    assert not [name for name, m in cli.model.named_modules() if not m.training][:5]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    metrics = cli.trainer.callback_metrics
    names = [info.name for info in cli.datamodule.eval_sets("test")]
    assert names == [own, *extra_sets]
    for name in names:
        for attribute in ("", *(f"{a}/" for a in ATTRIBUTES[name])):
            for key in ("max_skew", "min_skew"):
                value = metrics.get(f"test/bias/{name}/{attribute}{key}")
                assert value is not None and math.isfinite(float(value)), (name, attribute, key, sorted(metrics))
    assert math.isfinite(float(metrics["test/loss"]))
