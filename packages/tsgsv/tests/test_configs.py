import re

import pytest
import torch
import yaml
from mmzoo.cli import resolve_config, shipped_configs

from tsgsv.cli import main
from tsgsv.data import TSGVDataModule
from tsgsv.losses import TSGSVLoss
from tsgsv.metrics import GroundingEvalConfig
from tsgsv.models import TSGSVConfig
from tsgsv.module import TSGSVModule

CONFIGS = shipped_configs("tsgsv")


def test_paper_configs_shipped():
    assert {"tiny", "demo", "activitynet", "tacos", "mad"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    raw = yaml.safe_load(open(resolve_config(name, "tsgsv")))
    TSGSVConfig(**raw["model"]["config"])  # the architecture validates
    GroundingEvalConfig(**raw["model"]["evaluation"])
    for key in ("short_memory", "long_memory", "future_memory", "max_text_len"):
        assert raw["data"][key] == raw["model"]["config"][key], key
    assert printed["model"]["config"]["hidden_dim"] == raw["model"]["config"]["hidden_dim"]


# Each misspelling used to run another variant (no twin branch for 'Twin', attention to the future memory only for
# 'long+future'), to fail only when the model or the first step was built ('tokenlearner', 'kd'), or to need no
# check at all when both feature file names were given ('anet').
MISSPELT = {
    "config.compressor": (lambda: TSGSVConfig(compressor="tokenlearner"), "model.config.compressor='tokenlearner'"),
    "config.future_usage": (lambda: TSGSVConfig(future_usage="Twin"), "model.config.future_usage='Twin'"),
    "config.pincer_memory": (
        lambda: TSGSVConfig(pincer_memory="long+future"),
        "model.config.pincer_memory='long+future'",
    ),
    "loss.tpn_type": (lambda: TSGSVLoss(8, tpn_type="kd"), "model.tpn_type='kd'"),
    "module.tpn_type": (lambda: TSGSVModule(_tiny_config(), tpn_type="kd"), "model.tpn_type='kd'"),
    "data.dataset": (
        lambda: TSGVDataModule(dataset="anet", video_feature_file="f_{split}.hdf5", language_model="bert"),
        "data.dataset='anet'",
    ),
}


def _tiny_config(**kw) -> TSGSVConfig:
    return TSGSVConfig(video_dim=8, text_dim=8, hidden_dim=8, ffn_dim=8, num_heads=2, compressor_tokens=[2], **kw)


@pytest.mark.parametrize("case", list(MISSPELT))
def test_misspelt_choice_is_refused_naming_its_key(case):
    build, key = MISSPELT[case]
    with pytest.raises(ValueError, match=re.escape(key) + r": expected one of \["):
        build()


def test_listed_choices_are_accepted():
    for compressor in ("language_guided", "token_learner", "lstr", "scdm", "cqa", "none"):
        assert _tiny_config(compressor=compressor).compressor == compressor
    for future_usage in ("twin", "anticipation", "none"):
        for pincer_memory in ("long_and_future", "future"):
            cfg = _tiny_config(future_usage=future_usage, pincer_memory=pincer_memory)
            assert (cfg.future_usage, cfg.pincer_memory) == (future_usage, pincer_memory)
    assert TSGSVLoss(8, tpn_type="KD").regressor is None
    assert isinstance(TSGSVLoss(8, tpn_type="twinnet").regressor, torch.nn.Linear)
    for dataset in ("activitynet", "tacos", "mad"):
        assert TSGVDataModule(dataset=dataset).hparams.dataset == dataset
