"""Every shipped YAML parses against the CLI (as --print_config does)."""

from __future__ import annotations

import importlib.resources

import pytest
import yaml
from mmzoo.cli import shipped_configs

from rtqvl.cli import main
from rtqvl.models import TINY_TEXT, TINY_VISION, VisionConfig

CONFIGS = shipped_configs("rtqvl")


def test_expected_configs_are_shipped():
    for name in (
        "tiny",
        "demo",
        "msrvtt_retrieval",
        "didemo_retrieval",
        "activitynet_retrieval",
        "msrvtt_caption",
        "msvd_caption",
        "msrvtt_qa",
        "nextqa",
        "msrvtt_retrieval_rq",
        "msrvtt_retrieval_spectral",
        "msrvtt_retrieval_token_shift",
        "msrvtt_retrieval_divst",
        "msrvtt_retrieval_divst_prior",
        "msrvtt_retrieval_vip",
    ):
        assert name in CONFIGS, name


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_tiny_yaml_sizes_are_the_tiny_constants(name):
    """Tests, the repro and the benchmark's CPU case build the tiny model from TINY_VISION / TINY_TEXT; the shipped
    tiny configs must describe the same model."""
    text = (importlib.resources.files("rtqvl.configs") / f"{name}.yaml").read_text()
    config = yaml.safe_load(text)["model"]["config"]
    assert {k: config["vision"][k] for k in TINY_VISION} == TINY_VISION
    assert {k: config["text"][k] for k in TINY_TEXT} == TINY_TEXT


@pytest.mark.parametrize("name", CONFIGS)
def test_print_config(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", name, "--print_config"])
    assert e.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("msrvtt_retrieval_spectral", "refine", "spectral"),
        ("msrvtt_retrieval_token_shift", "refine", "token_shift"),
        ("msrvtt_retrieval_divst", "temporal_modeling", "divided_attention"),
        ("msrvtt_retrieval_divst_prior", "temporal_placement", "prior"),
        ("msrvtt_retrieval_vip", "temporal_modeling", "video_proxy"),
    ],
)
def test_ablation_rows_differ_from_rtq_only_in_their_switch(name, key, value):
    def vision(n: str) -> dict:
        text = (importlib.resources.files("rtqvl.configs") / f"{n}.yaml").read_text()
        return yaml.safe_load(text)["model"]["config"]["vision"]

    base, row = vision("msrvtt_retrieval"), vision(name)
    assert row[key] == value
    VisionConfig(**row)  # valid as a whole
    changed = {k for k in set(base) | set(row) if base.get(k) != row.get(k)}
    allowed = {key, "num_segments", "spectral_sigma", "shift_fold_div", "num_proxies"}
    if key == "temporal_placement":  # divided attention on the raw frames before Refine: blocks 0..τ−1, τ = K
        allowed |= {"temporal_modeling", "temporal_block"}
        assert row["temporal_modeling"] == "divided_attention" and row["temporal_block"] == row["cluster_block"]
    assert changed <= allowed


# A misspelt choice used to run another variant without a word (an unknown refine kept every token once C >= d·P,
# an unknown kmedoids_impl ran the torch k-medoids, an unknown caption backend scored with the python one). Configs,
# modules and metrics built in Python now refuse it, naming the key as a config file writes it.
@pytest.mark.parametrize(
    ("key", "value"),
    [("refine", "kmedoid"), ("kmedoids_impl", "cuda"), ("temporal_modeling", "message_tokens"),
     ("temporal_placement", "middle"), ("spectral_graph", "cosine")],
)  # fmt: skip
def test_vision_config_refuses_unknown_choices(key, value):
    from rtqvl_testlib import tiny_vision

    tiny_vision()  # the other fields are valid
    with pytest.raises(ValueError, match=f"model.config.vision.{key}='{value}': expected one of"):
        tiny_vision(**{key: value})


def test_refine_refuses_an_unknown_mode_even_when_every_token_fits():
    import torch

    from rtqvl.models.video import refine_segments

    x = torch.randn(4, 1 + 16, 8)  # one video of 4 frames, 4 segments of d = 1 frame: C = P keeps every token
    assert torch.equal(refine_segments(x, 1, 4, "none", 16), x)
    with pytest.raises(ValueError, match="model.config.vision.refine='kmedoid': expected one of"):
        refine_segments(x, 1, 4, "kmedoid", 16)


def test_refine_refuses_an_unknown_kmedoids_impl():  # it used to run the torch k-medoids
    import torch

    from rtqvl.models.video import refine_segments

    x = torch.randn(4, 1 + 16, 8)
    assert refine_segments(x, 1, 2, "kmedoids", 8).shape == (2, 1 + 8, 8)
    with pytest.raises(ValueError, match="model.config.vision.kmedoids_impl='cuda': expected one of"):
        refine_segments(x, 1, 2, "kmedoids", 8, kmedoids_impl="cuda")


def test_rtq_config_refuses_an_unknown_task():
    from rtqvl_testlib import tiny_config

    with pytest.raises(ValueError, match="model.config.task='retreival': expected one of"):
        tiny_config("retreival")


@pytest.mark.parametrize(
    ("task", "key", "value"),
    [("retrieval", "caption_backend", "pycoco"), ("captioning", "caption_backend", "coco_eval"),
     ("retrieval", "rank_ties", "pessimistic"), ("qa", "rank_ties", "average")],
)  # fmt: skip
def test_module_refuses_unknown_choices_whatever_the_task(task, key, value):
    from rtqvl_testlib import tiny_config

    from rtqvl.module import RTQModule

    with pytest.raises(ValueError, match=f"model.{key}='{value}': expected one of"):
        RTQModule(tiny_config(task), **{key: value})


def test_caption_metrics_refuse_an_unknown_backend():
    from rtqvl.metrics import CaptionMetrics, caption_metrics

    assert caption_metrics(["a red box"], [["a red box"]], backend="python")["ROUGE-L"] == 100.0
    with pytest.raises(ValueError, match="caption_backend='pycoco': expected one of"):
        caption_metrics(["a red box"], [["a red box"]], backend="pycoco")
    with pytest.raises(ValueError, match="caption_backend='Python': expected one of"):
        CaptionMetrics(backend="Python")
