"""Every shipped YAML parses against the CLI (as --print_config does)."""

from __future__ import annotations

import pytest
from mmzoo.cli import shipped_configs

from rtqvl.cli import main

CONFIGS = shipped_configs("rtqvl")


def test_expected_configs_are_shipped():
    for name in ("tiny", "demo", "msrvtt_retrieval", "didemo_retrieval", "activitynet_retrieval", "msrvtt_caption",
                 "msvd_caption", "msrvtt_qa", "nextqa", "msrvtt_retrieval_rq"):
        assert name in CONFIGS, name


@pytest.mark.parametrize("name", CONFIGS)
def test_print_config(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", name, "--print_config"])
    assert e.value.code in (0, None)
    assert "model:" in capsys.readouterr().out
