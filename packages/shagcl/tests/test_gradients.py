"""Every trainable parameter receives a gradient from one training step, in every shipped config's model setting
and every ablation switch (DDP with ``find_unused_parameters=False`` stops at the second step otherwise)."""

import warnings
from importlib import resources

import pytest
import torch
import yaml
from mmzoo.testing import repeated_index_reads
from shagcl_testlib import synthetic_datamodule

from shagcl.data import collate_scene_graphs
from shagcl.models import SHAGCLConfig
from shagcl.module import SHAGCLModule

# tiny sizes replacing the paper sizes of the shipped configs (every switch of the config is kept)
TINY = dict(
    num_obj_classes=9,
    num_predicates=11,
    feature_dim=16,
    hidden_dim=16,
    num_heads=2,
    key_dim=8,
    ffn_dim=16,
    obj_layers=2,
    edge_layers=2,
    word_dim=8,
    word_embeddings="random",
    glove_path=None,
    box_head_checkpoint=None,
    roi_channels=8,
    roi_resolution=7,
    fpn_levels=4,
    rect_size=27,
    count_source="computed",
    group_min_count=1,
)


def _shipped_model_configs() -> dict[str, dict]:
    out = {}
    for path in sorted(resources.files("shagcl.configs").iterdir()):
        if path.name.endswith(".yaml"):
            out[path.name[: -len(".yaml")]] = yaml.safe_load(path.read_text())["model"]["config"]
    return out


SHIPPED = _shipped_model_configs()

# ablation switches, each on top of the vg150_predcls model setting
SWITCHES = [
    {"protocol": p, "encoder": e, "decoder": d}
    for p in ("predcls", "sgcls", "sgdet")
    for e in ("hybrid", "self", "cross")
    for d in ("gcl", "single")
]
SWITCHES += [
    {"kd_mode": m}
    for m in ("KL_logit_TopDown", "KL_logit_Neighbor", "KL_logit_BiDirection", "KL_logit_BottomUp", "None")
]
SWITCHES += [
    {"union_features": u, "use_rect_features": r, "trainable_box_head": b}
    for u in ("official", "simplified")
    for r in (True, False)
    for b in (True, False)
]
SWITCHES += [
    {"use_frequency_bias": False},
    {"use_frequency_bias": False, "decoder": "single"},
    {"resample": False},
    {"background_mode": "rand_choose"},
    {"background_mode": "all_include"},
    {"no_relation_restrain": False},
    {"kd_coefficient": 0.0},
    {"group_split": "average", "num_average_groups": 3},
]

# (settings, also check the multi-process step): the per-batch K_b check runs on the shipped configs only
CASES = [pytest.param({**cfg, **TINY}, True, id=name) for name, cfg in SHIPPED.items()]
CASES += [
    pytest.param({**SHIPPED["vg150_predcls"], **TINY, **s}, False, id="-".join(f"{k}={v}" for k, v in s.items()))
    for s in SWITCHES
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Per protocol: the datamodule's training statistics and one training batch (synthetic features carrying
    both the post-fc7 and the pooled inputs, so every feature path can run)."""
    root = tmp_path_factory.mktemp("grad_data")
    out = {}
    for protocol in ("predcls", "sgcls", "sgdet"):
        dm = synthetic_datamodule(root, protocol, pooled=True, pooled_channels=8)
        batch = collate_scene_graphs([dm.datasets["train"][i] for i in range(4)])
        assert 10 not in batch["pair_labels"]  # K_b < K: the last classifier gets no loss from this batch
        rare = dict(batch, pair_labels=batch["pair_labels"].clone())
        # the rarest predicate in the batch makes every classifier trainable in this step (K_b = K, spec §3.6.5)
        rare["pair_labels"][0] = 10
        out[protocol] = (dm.statistics(), batch, rare)
    return out


def _step(settings: dict, stats, batch: dict, several_processes: bool) -> tuple[SHAGCLModule, float]:
    """One training step's loss forward + backward; returns the module (gradients filled) and the loss."""
    torch.manual_seed(0)
    module = SHAGCLModule(SHAGCLConfig(**settings))
    module.build_from_statistics(stats)
    module.train()
    module._several_processes = lambda: several_processes
    torch.manual_seed(1)  # the same dropout and pair assignment in every call
    with warnings.catch_warnings(), repeated_index_reads() as repeated:
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = module.training_step(batch, 0)
    assert repeated == []  # an object in several pairs: its gradients summed in a fixed order
    loss.backward()
    return module, loss.item()


def _without_gradient(module: SHAGCLModule) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize(("settings", "check_ddp"), CASES)
def test_every_trainable_parameter_gets_a_gradient(settings, check_ddp, data):
    stats, batch, rare = data[settings["protocol"]]
    # one process, a batch in which every classifier is active: no module is built that the setting leaves unused
    module, _ = _step(settings, stats, rare, several_processes=False)
    assert not _without_gradient(module), f"trainable parameters without a gradient: {_without_gradient(module)}"
    optimised = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimised == {id(p) for p in module.parameters() if p.requires_grad}
    if not check_ddp:
        return
    # DDP: a batch without the rarest group (K_b < K) still reaches every parameter, with the same loss value
    module, loss = _step(settings, stats, batch, several_processes=True)
    assert not _without_gradient(module), f"DDP: parameters without a gradient: {_without_gradient(module)}"
    single, single_loss = _step(settings, stats, batch, several_processes=False)
    assert loss == single_loss
    for (name, p), q in zip(module.named_parameters(), single.parameters(), strict=True):
        expected = torch.zeros_like(p) if q.grad is None else q.grad
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=0, msg=name)
