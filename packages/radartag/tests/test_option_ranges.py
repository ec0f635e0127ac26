"""Numeric options outside their range are refused where the config, module, data module or demo generator settings
are built, naming the key as a YAML config writes it; values that keep a meaning (0 weights, null) still build."""

import re

import pytest

from radartag.data import KwaiTagDataModule
from radartag.models import RadarConfig
from radartag.module import RadarModule
from radartag.synthetic import SyntheticKwaiConfig

SMALL = dict(video_dim=4, tag_dim=4, num_tags=5, hidden_dim=8, num_heads=2)

CONFIG_CASES = [
    # num_heads=0 stopped in a bare ZeroDivisionError of the divisibility check
    ("model.config.num_heads", dict(num_heads=0)),
    ("model.config.hidden_dim", dict(hidden_dim=-8)),
    ("model.config.video_dim", dict(video_dim=0)),
    ("model.config.tag_dim", dict(tag_dim=0)),
    ("model.config.num_tags", dict(num_tags=-3)),
    ("model.config.lmf_rank", dict(reducer="lmf", lmf_rank=0)),
    # torch's Dropout refused p > 1 without the key; p = 1 silently zeroed every training score
    ("model.config.dropout", dict(dropout=1.5)),
    ("model.config.dropout", dict(dropout=1.0)),
    ("model.config.dropout", dict(dropout=-0.1)),
]


@pytest.mark.parametrize(("key", "kw"), CONFIG_CASES, ids=[f"{k}={v}" for k, v in CONFIG_CASES])
def test_config_refuses_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        RadarConfig(**{**SMALL, **kw})


MODULE_CASES = [
    # AdamW refused these only in configure_optimizers, without the key
    ("model.lr", dict(lr=-1e-3)),
    ("model.weight_decay", dict(weight_decay=-1e-4)),
    # a negative weight or schedule constant trained uphill / turned the adversarial gradient around, silently
    ("model.bce_weight", dict(bce_weight=-333.0)),
    ("model.lambda0", dict(lambda0=-0.01)),
    ("model.adv_gamma", dict(adv_gamma=-20.0)),
    ("model.adv_gamma", dict(adv_gamma=float("nan"))),
    # total_step 0 or below was silently read as 1 (λ_p at its final value from the first step)
    ("model.adv_total_step", dict(adv_total_step=0)),
]


@pytest.mark.parametrize(("key", "kw"), MODULE_CASES, ids=[f"{k}={v}" for k, v in MODULE_CASES])
def test_module_refuses_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        RadarModule(RadarConfig(**SMALL), **kw)


DATA_CASES = [
    # batch sizes and workers reached the DataLoader only at the first loader
    ("data.batch_size", dict(batch_size=0)),
    ("data.eval_batch_size", dict(eval_batch_size=-1)),
    ("data.num_workers", dict(num_workers=-1)),
    ("data.num_layers", dict(num_layers=0)),
]


@pytest.mark.parametrize(("key", "kw"), DATA_CASES, ids=[f"{k}={v}" for k, v in DATA_CASES])
def test_datamodule_refuses_out_of_range_value(key, kw, tmp_path):
    with pytest.raises(ValueError, match=re.escape(key)):
        KwaiTagDataModule(str(tmp_path), "v", **kw)


DEMO_CASES = [
    # the generator failed in numpy or indexing, or wrote a vertical with empty splits
    ("data.demo.num_parents", dict(num_parents=1)),
    ("data.demo.leaves_per_parent", dict(leaves_per_parent=0)),
    ("data.demo.videos_per_user", dict(videos_per_user=0)),
    ("data.demo.feature_dim", dict(feature_dim=0)),
    ("data.demo.homophily", dict(homophily=1.5)),
    ("data.demo.imitation", dict(imitation=-0.1)),
    ("data.demo.noise", dict(noise=-2.0)),
    ("data.demo.split", dict(split=(0.7, -0.1, 0.4))),
    ("data.demo.split", dict(split=(0.7, 0.3))),
    ("data.demo.favourites", dict(num_parents=2, leaves_per_parent=1, favourites=3)),
]


@pytest.mark.parametrize(("key", "kw"), DEMO_CASES, ids=[f"{k}={v}" for k, v in DEMO_CASES])
def test_demo_settings_refuse_out_of_range_value(key, kw):
    with pytest.raises(ValueError, match=re.escape(key)):
        SyntheticKwaiConfig(**kw)


def test_demo_settings_given_as_a_dict_are_checked(tmp_path):
    with pytest.raises(ValueError, match=re.escape("data.demo.imitation")):
        KwaiTagDataModule(str(tmp_path), "v", demo={"imitation": 2.0})


def test_boundary_values_are_accepted(tmp_path):
    assert RadarConfig(**{**SMALL, "num_tags": None, "dropout": 0.0}).num_tags is None
    module = RadarModule(RadarConfig(**SMALL), lr=0.0, weight_decay=0.0, bce_weight=0.0, lambda0=0.0, adv_gamma=0.0)
    assert module.hparams.lambda0 == 0.0 and module.hparams.adv_total_step is None
    assert RadarModule(RadarConfig(**SMALL), adv_total_step=1).loss.total_step == 1
    dm = KwaiTagDataModule(str(tmp_path), "v", num_workers=0, fanout=0, eval_fanout=-1, batch_size=1)
    assert dm.hparams.eval_fanout == -1
    demo = SyntheticKwaiConfig(follows=0, homophily=0.0, imitation=0.0, noise=0.0, tag_noise=0.0, split=(1, 0, 0))
    assert demo.follows == 0  # no followee is fine while no video imitates one
