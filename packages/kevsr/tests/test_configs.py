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


@pytest.mark.parametrize("name", [n for n in shipped_configs("kevsr") if str(n).startswith("koubei")])
def test_paper_configs_stop_early_on_validation_f1(name, capsys):
    """Spec §3.7 (reconstruction): early stopping on validation F1 (level 2, spec §5) with patience 5, max 30
    epochs; prediction by threshold unless top_k is set (spec §3.5)."""
    import yaml

    with pytest.raises(SystemExit):
        main(args=["fit", "--config", name, "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    stops = [c for c in cfg["trainer"]["callbacks"] or [] if c["class_path"].endswith("EarlyStopping")]
    assert len(stops) == 1
    args = stops[0]["init_args"]
    assert (args["monitor"], args["mode"], args["patience"]) == ("val/f1_l2", "max", 5)
    assert cfg["trainer"]["max_epochs"] == 30
    assert cfg["model"]["top_k"] is None
