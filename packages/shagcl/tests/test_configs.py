import pytest
from mmzoo.cli import shipped_configs

from shagcl.cli import main


@pytest.mark.parametrize("name", shipped_configs("shagcl"))
def test_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_paper_configs_exist():
    names = set(shipped_configs("shagcl"))
    for ds in ("vg150", "gqa200"):
        for protocol in ("predcls", "sgcls", "sgdet"):
            assert f"{ds}_{protocol}" in names
    assert {"tiny", "demo"} <= names
