import pytest
import yaml
from mmzoo.cli import resolve_config, shipped_configs

from tsgsv.cli import main
from tsgsv.metrics import GroundingEvalConfig
from tsgsv.models import TSGSVConfig

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
