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
