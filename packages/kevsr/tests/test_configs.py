"""Every shipped YAML parses against the CLI (as --print_config does)."""

import pytest
from mmzoo.cli import shipped_configs

from kevsr.cli import main


@pytest.mark.parametrize("name", shipped_configs("kevsr"))
def test_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    assert "nt_fusion" in capsys.readouterr().out


def test_the_mmbt_row_needs_no_knowledge_graph(capsys):
    """MMBT is the temporal stream alone, which reads no KG: its config must not make users supply and stream the
    multilingual Numberbatch file."""
    import yaml

    with pytest.raises(SystemExit):
        main(args=["fit", "--config", "koubei_mmbt", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["streams"] == "temporal" and cfg["data"]["kg_path"] is None
    assert cfg["data"]["missing_features"] == "raise"
