import pytest
from mmzoo.cli import shipped_configs

from snps3.cli import main

CONFIGS = shipped_configs("snps3")


def test_paper_configs_are_shipped():
    for name in (
        "tiny",
        "demo",
        "pretrain_coco_vg_pvt",
        "pretrain_coco_vg_r50",
        "pretrain_cc3m_vst",
        "pretrain_webvid_vst",
        "msrvtt_7k_retrieval",
        "msrvtt_9k_retrieval",
        "didemo_retrieval",
        "msvd_retrieval",
        "msrvtt_qa",
        "msvd_qa",
        "msrvtt_mc",
    ):
        assert name in CONFIGS, name


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_parses(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_extra_commands_help():
    for cmd in ("mine-words", "lemma-table", "synthetic-data"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0


def _data_section(name):
    from pathlib import Path

    import yaml

    import snps3.configs

    return yaml.safe_load((Path(snps3.configs.__file__).parent / f"{name}.yaml").read_text())["data"]


def test_frame_transforms_of_paper_configs():
    # spec §3.7: flip only for VST runs; R50/PVT runs use the long-side resize (official variant) and no flip
    for name in ("pretrain_coco_vg_pvt", "pretrain_coco_vg_r50"):
        data = _data_section(name)
        assert data["transform"] == "long_side" and data["hflip"] == 0 and data["long_side_scale"] == "official"
        assert data["long_side"] == 768
    for name in ("pretrain_cc3m_vst", "pretrain_webvid_vst", "msrvtt_7k_retrieval", "msvd_qa"):
        data = _data_section(name)
        assert data["transform"] == "crop" and data["hflip"] == 0.5


# A misspelt choice used to run another variant without a word (an unknown task ran the MC branches, an unknown
# lvwm_stage added no LVWM term, lr_step_unit fell to steps, nan_policy to skip, text_mlm_input to the masked caption).
@pytest.mark.parametrize(
    "key,value",
    [("task", "retreival"), ("text_mlm_input", "masked_caption"), ("lvwm_stage", "after_bert"),
     ("lr_step_unit", "epochs"), ("nan_policy", "Raise")],
)  # fmt: skip
def test_module_refuses_unknown_choices(make_config, key, value):
    from snps3.module import SNPS3Module

    with pytest.raises(ValueError, match=f"model.{key}='{value}': expected one of"):
        SNPS3Module(config=make_config(), **{key: value})


@pytest.mark.parametrize("key,value", [("arch", "snps"), ("visual_encoder", "r50")])
def test_config_refuses_unknown_choices(make_config, key, value):
    with pytest.raises(ValueError, match=f"model.config.{key}='{value}': expected one of"):
        make_config(**{key: value})


def test_mlm_head_refuses_an_unknown_name(tiny_model):
    import torch

    hidden = torch.randn(2, 3, 16)
    assert tiny_model.mlm_logits(hidden, "text").shape == (2, 3, 209)
    with pytest.raises(ValueError, match="head='crosss': expected one of"):  # it used to read the cross head
        tiny_model.mlm_logits(hidden, "crosss")
