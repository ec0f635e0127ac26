import pytest
from mmzoo.cli import shipped_configs

from evedit.cli import main

CONFIGS = shipped_configs("evedit")


def test_every_paper_setting_is_shipped():
    assert {"tiny", "demo", "loveu", "zve"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["test", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    assert "tcc:" in capsys.readouterr().out


def test_edit_command_uses_config_sections():
    from evedit.edit import configs_from_yaml

    model, edit = configs_from_yaml("tiny")
    assert model.backbone == "tiny" and edit.num_inference_steps == 4 and edit.tcc.lambda_agr == 0.5


def test_misspelt_choices_are_refused_outside_the_cli(tmp_path):
    """LightningCLI checks the Literal keys while parsing; `evedit edit --config` and Python callers build the
    dataclasses directly, and the pipeline branches on these strings (an unknown `init` ran SDEdit, an unknown
    `temporal_pairs` ran the key-frame variant), so a misspelt choice must name its key instead."""
    from evedit.edit import configs_from_yaml
    from evedit.models import DepthConfig, EditConfig, ModelConfig, TCCConfig

    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  model:\n    backbone: tiny\n    depth_model: tiny\n  edit:\n    init: ddim_inverson\n")
    with pytest.raises(ValueError, match=r"model\.edit\.init='ddim_inverson': expected one of \['ddim_inversion'"):
        configs_from_yaml(str(path))
    path.write_text("model:\n  edit:\n    tcc:\n      temporal_pairs: keys\n")
    with pytest.raises(ValueError, match=r"model\.edit\.tcc\.temporal_pairs='keys'"):
        configs_from_yaml(str(path))
    with pytest.raises(ValueError, match=r"model\.edit\.depth\.norm='per_frame'"):
        DepthConfig(norm="per_frame")
    with pytest.raises(ValueError, match=r"model\.edit\.tcc\.agree_target='txt'"):
        TCCConfig(agree_target="txt")
    with pytest.raises(ValueError, match=r"model\.edit\.inversion_prompt='empty'"):
        EditConfig(inversion_prompt="empty")
    with pytest.raises(ValueError, match=r"model\.model\.torch_dtype='fp16'"):
        ModelConfig(torch_dtype="fp16")
    with pytest.raises(ValueError, match=r"model\.model\.backbone='sd15'"):
        ModelConfig(backbone="sd15")
    cfg = EditConfig(init="sdedit", depth=DepthConfig(norm="frame"), tcc=TCCConfig(temporal_pairs="key"))
    assert (cfg.init, cfg.depth.norm, cfg.tcc.temporal_pairs) == ("sdedit", "frame", "key")  # valid choices pass
