"""Every shipped YAML parses against the CLI (as --print_config does)."""

from __future__ import annotations

import importlib.resources

import pytest
import yaml
from mmzoo.cli import shipped_configs

from rtqvl.cli import main
from rtqvl.models import VisionConfig

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
