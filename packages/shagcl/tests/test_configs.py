import re

import pytest
import torch
from mmzoo.cli import shipped_configs
from shagcl_testlib import tiny_config
from torch import nn

from shagcl.cli import main
from shagcl.data import GQA200Dataset, SGGDataModule, VG150Dataset
from shagcl.detector import FasterRCNNFeatures
from shagcl.gcl import group_predicates
from shagcl.losses import GCLLoss, collaborative_kd_loss
from shagcl.models import HybridAttentionLayer


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


def _gcl_loss(**kw) -> GCLLoss:
    return GCLLoss([2, 2], torch.ones(2, 5), **kw)


def _kd(mode: str) -> dict:
    logits = [torch.randn(3, 3), torch.randn(3, 5)]
    return collaborative_kd_loss(logits, torch.tensor([1, 3, 0]), torch.ones(2, 3, dtype=torch.bool), 2, [2, 4], mode)


# Each misspelling used to run another variant: the hybrid encoder ('slef'), random word vectors ('Glove'), the GCL
# decoder ('Single'), divide-μ grouping ('avg'), computed counts ('Official'), top-down distillation
# ('KL_logit_neighbor'), a stop at the first training step ('rand'), fc7 features ('fc6'), the training images or the
# GQA test file ('tset'), SGCls inputs ('sg_det'), the file's predicate order ('freq'), or a demo run without its data
# ('vg').
MISSPELT = {
    **{
        f"config.{key}": (lambda key=key, value=value: tiny_config(**{key: value}), f"model.config.{key}={value!r}")
        for key, value in (
            ("protocol", "PredCls"),
            ("encoder", "slef"),
            ("word_embeddings", "Glove"),
            ("union_features", "official_"),
            ("decoder", "Single"),
            ("group_split", "avg"),
            ("count_source", "Official"),
            ("background_mode", "rand"),
            ("kd_mode", "KL_logit_neighbor"),
        )
    },
    "HybridAttentionLayer": (lambda: HybridAttentionLayer(8, 2, 4, 16, 0.0, "slef"), "model.config.encoder='slef'"),
    "group_predicates": (lambda: group_predicates([50, 20, 5], mode="avg"), "model.config.group_split='avg'"),
    "collaborative_kd_loss": (lambda: _kd("KL_logit_neighbor"), "model.config.kd_mode='KL_logit_neighbor'"),
    "GCLLoss.kd_mode": (lambda: _gcl_loss(kd_mode="Neighbor"), "model.config.kd_mode='Neighbor'"),
    "GCLLoss.background_mode": (lambda: _gcl_loss(background_mode="rand"), "model.config.background_mode='rand'"),
    "object_stage": (lambda: FasterRCNNFeatures(nn.Identity(), object_stage="fc6"), "object_stage='fc6'"),
    "union_stage": (lambda: FasterRCNNFeatures(nn.Identity(), union_stage="fc6"), "union_stage='fc6'"),
    "VG150Dataset.split": (lambda: VG150Dataset("data", "tset"), "split='tset'"),
    "VG150Dataset.protocol": (lambda: VG150Dataset("data", "test", protocol="sg_det"), "data.protocol='sg_det'"),
    "VG150Dataset.feature_source": (
        lambda: VG150Dataset("data", "test", feature_source="cache"),
        "data.feature_source='cache'",
    ),
    "VG150Dataset.predicate_order": (
        lambda: VG150Dataset("data", "test", predicate_order="freq"),
        "data.predicate_order='freq'",
    ),
    "GQA200Dataset.split": (lambda: GQA200Dataset("data", "tset"), "split='tset'"),
    "GQA200Dataset.protocol": (lambda: GQA200Dataset("data", "test", protocol="sg_det"), "data.protocol='sg_det'"),
    **{
        f"{reader.__name__}.missing_features": (
            lambda reader=reader: reader("data", "test", missing_features="skip"),
            "data.missing_features='skip'",
        )
        for reader in (VG150Dataset, GQA200Dataset)
    },
    **{
        f"SGGDataModule.{key}": (lambda key=key, value=value: SGGDataModule(**{key: value}), f"data.{key}={value!r}")
        for key, value in (
            ("dataset", "vg"),
            ("protocol", "sg_det"),
            ("feature_source", "cache"),
            ("predicate_order", "freq"),
            ("missing_features", "skip"),
        )
    },
}


@pytest.mark.parametrize("case", list(MISSPELT))
def test_misspelt_choice_is_refused_naming_its_key(case):
    build, key = MISSPELT[case]
    with pytest.raises(ValueError, match=re.escape(key) + r": expected one of \["):
        build()


def test_listed_choices_are_accepted():
    for key, values in (
        ("protocol", ("predcls", "sgcls", "sgdet")),
        ("encoder", ("hybrid", "self", "cross")),
        ("decoder", ("gcl", "single")),
        ("group_split", ("divide", "average")),
        ("count_source", ("computed", "official")),
        ("background_mode", ("rand_insert", "rand_choose", "all_include")),
        ("kd_mode", ("KL_logit_TopDown", "KL_logit_Neighbor", "KL_logit_BiDirection", "KL_logit_BottomUp", "None")),
    ):
        for value in values:
            assert getattr(tiny_config(**{key: value}), key) == value
    assert group_predicates([50, 20, 5, 4, 3], mode="average", num_average_groups=2) == [2, 3]
    assert set(_kd("None")) == set() and set(_kd("KL_logit_Neighbor")) == {2}
    dm = SGGDataModule(dataset="gqa200", protocol="sgdet", feature_source="synthetic", predicate_order="file")
    assert (dm.hparams.dataset, dm.hparams.protocol) == ("gqa200", "sgdet")
