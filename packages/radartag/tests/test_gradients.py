"""Every trainable parameter takes a gradient in one training step, for every shipped config and ablation switch:
Lightning's default DDP (``find_unused_parameters=False``) fails at the second step otherwise."""

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from mmzoo.cli import resolve_config, shipped_configs
from mmzoo.testing import repeated_index_reads

from radartag.data import KwaiTagDataModule
from radartag.models import RadarConfig
from radartag.module import RadarModule
from radartag.synthetic import SyntheticKwaiConfig

SWITCHES = ("use_follow", "use_topic", "bidirectional_topic", "updater", "attention", "reducer", "num_layers",
            "video_emb_layer", "combine_norm", "adv_layers")  # fmt: skip


def _shipped(name: str) -> dict:
    raw = yaml.safe_load(open(resolve_config(name, "radartag")))["model"]["config"]
    return {k: raw[k] for k in SWITCHES}


def _repro_variants() -> dict:
    spec = importlib.util.spec_from_file_location("radartag_repro_grad", Path(__file__).parents[1] / "repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


SETTINGS = {
    **{f"config {name}": _shipped(name) for name in shipped_configs("radartag")},
    **{f"repro {name}": kw for name, kw in _repro_variants().items()},
    # official Table 3 rows (configs/recommendation/ourgnn/)
    "wo_gated": dict(updater="sum", adv_layers=1),
    "wo_follow": dict(use_follow=False, video_emb_layer=0, reducer="mean", combine_norm=True),
    "wo_topic": dict(use_topic=False, reducer="mean"),
    "wo_topic_follow": dict(use_follow=False, use_topic=False, video_emb_layer=0, reducer="mean", combine_norm=True),
    # every single switch
    **{f"reducer {r}": dict(reducer=r) for r in ("aan", "common_unique", "common", "mean", "lmf", "self_attention")},
    **{f"reducer {r}, w/o topic": dict(reducer=r, use_topic=False) for r in ("aan", "lmf")},
    "attention mutual": dict(attention="mutual"),
    "updater sum": dict(updater="sum"),
    "bidirectional_topic": dict(bidirectional_topic=True),
    "w/o follow, aan": dict(use_follow=False, video_emb_layer=0),
    "w/o follow, mutual, sum": dict(use_follow=False, video_emb_layer=0, attention="mutual", updater="sum"),
    "video_emb_layer 0 with follow": dict(video_emb_layer=0),
    "video_emb_layer 1 with follow": dict(video_emb_layer=1),
    "one layer": dict(num_layers=1, video_emb_layer=1),
    "adv_layers 0": dict(adv_layers=0),
    "adv_layers 1, common_unique": dict(adv_layers=1, reducer="common_unique"),
    "adv_layers 1, mean": dict(adv_layers=1, reducer="mean"),
    "combine_norm on, lmf": dict(combine_norm=True, reducer="lmf"),
    "combine_norm off, aan": dict(combine_norm=False),
}


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """One training batch per depth from a tiny synthetic vertical, with every relation (r1, r1', r2, r3) sampled;
    a model ignores the relations it does not use."""
    root = tmp_path_factory.mktemp("radartag_grad") / "data"
    demo = SyntheticKwaiConfig(num_users=12, num_parents=2, leaves_per_parent=3, feature_dim=8, seed=0)
    out = {}
    for layers in (1, 2):
        dm = KwaiTagDataModule(str(root), "g", num_layers=layers, bidirectional_topic=True, fanout=3, batch_size=16,
                               generate_demo_data=True, demo=demo)  # fmt: skip
        dm.prepare_data()
        torch.manual_seed(0)
        out[layers] = (next(iter(dm.train_dataloader())), dm.num_tags)
    for batch, _ in out.values():
        assert all(e.shape[1] > 0 for _, edges in batch.blocks for e in edges.values())
    return out


def _grads(module: RadarModule, batch) -> dict[str, bool]:
    module.zero_grad(set_to_none=True)
    with repeated_index_reads() as repeated:  # a node on several edges: its gradients summed in a fixed order
        loss = module.training_step(batch, 0)
    assert repeated == []
    loss.backward()
    return {n: p.grad is not None for n, p in module.named_parameters()}


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_trainable_parameter_gets_a_gradient(setting, batches, monkeypatch):
    kw = SETTINGS[setting]
    batch, num_tags = batches[kw.get("num_layers", 2)]
    cfg = RadarConfig(**{**kw, "video_dim": 8, "tag_dim": 8, "num_tags": num_tags, "hidden_dim": 8, "num_heads": 2})
    torch.manual_seed(0)
    module = RadarModule(cfg, adv_total_step=10).train()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    got = _grads(module, batch)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert sorted(n for n in trainable if not got[n]) == []
    # the optimizer holds exactly the trainable parameters
    opt = module.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in module.parameters() if p.requires_grad
    }
    # nothing is frozen that the step would use: unfrozen, the frozen parameters still take no gradient
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    for p in module.parameters():
        p.requires_grad_(True)
    got = _grads(module, batch)
    assert {n for n, g in got.items() if not g} == frozen
