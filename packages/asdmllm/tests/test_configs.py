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


# A misspelt choice used to run another variant without a word: the data module read the data as CMSC, trained on
# captions, split by occupation or skipped corrupt images; the module decayed the LR by cosine; the generator drew
# shapes. Each is refused where it is built, naming the key as a config file writes it.
@pytest.mark.parametrize(
    "key,value",
    [("dataset", "social_counterfactuals"), ("instruction_mode", "concept-qa"), ("split_by", "occupations"),
     ("on_corrupt", "skp")],
)  # fmt: skip
def test_datamodule_refuses_unknown_choices(key, value):
    from asdmllm.data import DebiasDataModule

    with pytest.raises(ValueError, match=f"data.{key}='{value}': expected one of"):
        DebiasDataModule(**{key: value})


@pytest.mark.parametrize(
    "reader,key,value",
    [("scounter", "split", "trian"), ("scounter", "instruction_mode", "captions"),
     ("scounter", "split_by", "set"), ("scounter", "on_corrupt", "ignore"), ("cmsc", "split", "tset"),
     ("cmsc", "instruction_mode", "qa"), ("cmsc", "on_corrupt", "warn"), ("fairface", "on_corrupt", "Skip")],
)  # fmt: skip
def test_readers_refuse_unknown_choices(tmp_path, reader, key, value):
    from functools import partial

    from asdmllm.data import (
        CMSCDataset,
        FairFaceDataset,
        SocialCounterfactualsDataset,
        make_cmsc,
        make_fairface,
        make_socialcounterfactuals,
    )

    if reader == "scounter":
        root = make_socialcounterfactuals(tmp_path, ["nurse", "chef"], ["White", "Black"], ["male", "female"], 4)
        build = partial(SocialCounterfactualsDataset, root, image_size=32)
    elif reader == "cmsc":
        build = partial(CMSCDataset, make_cmsc(tmp_path, n_sets=4, every_split=True), image_size=32)
    else:
        build = partial(FairFaceDataset, make_fairface(tmp_path, 4), ["nurse"], ["occupation"], image_size=32)
    assert len(build())  # the data itself reads
    key_name = key if key == "split" else f"data.{key}"
    with pytest.raises(ValueError, match=f"{key_name}='{value}': expected one of"):
        build(**{key: value})


def test_demo_generator_refuses_an_unknown_glyph_source(tmp_path):
    from asdmllm.data import DemoDataConfig, glyph_pools, make_socialcounterfactuals

    assert len(glyph_pools("shapes", 2, (0.0, 1.0))) == 2
    with pytest.raises(ValueError, match="glyph_source='digit': expected one of"):
        glyph_pools("digit", 2, (0.0, 1.0))
    with pytest.raises(ValueError, match="glyph_source='digit'"):
        make_socialcounterfactuals(tmp_path, ["nurse"], ["White"], ["male"], 2, glyph_source="digit")
    assert not (tmp_path / "data").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="data.demo.glyph_source='Digits': expected one of"):
        DemoDataConfig(glyph_source="Digits")


def test_module_refuses_an_unknown_scheduler():
    from asdmllm.module import ASDModule

    with pytest.raises(ValueError, match="model.scheduler='cosin': expected one of"):
        ASDModule(scheduler="cosin")


def test_score_refuses_an_unknown_concept_set():  # "groups" used to score every concept of the image's group
    import torch

    from asdmllm.data import EvalSetInfo
    from asdmllm.module import ASDModule

    module = ASDModule(scheduler="constant").eval()
    info = EvalSetInfo("x", ["nurse", "chef"], ["occupation"] * 2, ["Who?"] * 2, ["race"], [["White"]])
    images, concept = torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([0])
    with torch.no_grad():
        own = module.score(images, concept, info, "own")  # the image's own concept only
        assert torch.isfinite(own[0, 0]) and torch.isnan(own[0, 1])
        with pytest.raises(ValueError, match="which='groups': expected one of"):
            module.score(images, concept, info, "groups")
