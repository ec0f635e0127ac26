import pytest
from mmzoo.cli import shipped_configs

from asdmllm.cli import main


@pytest.mark.parametrize("name", shipped_configs("asdmllm"))
def test_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_csd_alias_and_ablation_switches():
    from asdmllm.module import DebiasConfig

    assert DebiasConfig("csd").use_resample and DebiasConfig("csd").use_sfloss
    assert not DebiasConfig("ft").use_resample and not DebiasConfig("ft").use_sfloss
    only = DebiasConfig("asd", resample=True, sfloss=False)
    assert only.use_resample and not only.use_sfloss
