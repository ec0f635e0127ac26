"""Every shipped YAML parses against the CLI (as --print_config does)."""

import pytest
from mmzoo.cli import shipped_configs

from shenet.cli import main

CONFIGS = shipped_configs("shenet")


def test_expected_configs_are_shipped():
    for name in ("tiny", "demo", "msrvtt", "msvd", "didemo", "activitynet"):
        assert name in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_print_config(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "model:" in out and "data:" in out
