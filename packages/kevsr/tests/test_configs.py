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
