"""Every trainable parameter takes part in the training loss, in every shipped config and ablation switch.

DDP with ``find_unused_parameters=False`` (Lightning's default) stops at the second step when a parameter that
requires a gradient gets none, so a setting must not leave a trainable parameter outside the loss.
"""

import importlib.resources

import pytest
import torch
import yaml
from mmzoo.cli import shipped_configs
from mmzoo.testing import repeated_index_reads

from shenet.data import DigitsDataset, RetrievalCollate
from shenet.hierarchy import ParserConfig, build_parser
from shenet.models import SHENetConfig
from shenet.module import SHENetModule
from shenet.optim import param_groups
from shenet.tokenization import TextEncoder

# architecture keys of a shipped config that the tiny random CLIP replaces (no checkpoint is loaded)
_CLIP_KEYS = {"clip_model", "pretrained", "random_init", "quick_gelu", "max_frames"}
_CLIP_KEYS |= {k for k in SHENetConfig.__dataclass_fields__ if k.startswith("custom_")}
_TINY_CLIP = dict(clip_model="custom", random_init=True, max_frames=4, temporal_layers=1, temporal_heads=2)
# every learnable extra switched on: the gates, the temperatures and the level weights
_LEARNABLE = dict(text_enhance="gated", learnable_tau=True, sim_weighting="learned")


def _shipped(name: str) -> tuple[dict, float]:
    text = (importlib.resources.files("shenet.configs") / f"{name}.yaml").read_text()
    model = yaml.safe_load(text)["model"]
    cfg = {k: v for k, v in model["config"].items() if k not in _CLIP_KEYS and k not in _TINY_CLIP}
    return cfg, float(model.get("aux_weight", 0.0))


def _cases():
    cases = [pytest.param(*_shipped(name), id=f"config-{name}") for name in shipped_configs("shenet")]
    for gv in (True, False):
        for gs in (True, False):
            for sg in (True, False):
                for pooling in ("softmax", "max"):
                    cfg = dict(_LEARNABLE, guide_visual=gv, guide_similarity=gs, sentence_guidance=sg)
                    cfg["guided_pooling"] = pooling
                    cases.append(pytest.param(cfg, 0.0, id=f"gv{gv:d}-gs{gs:d}-sg{sg:d}-{pooling}"))
    for levels in (["sentence"], ["sentence", "verb"], ["sentence", "noun"], ["sentence", "verb", "noun"]):
        for extra in (["adj"], []) if levels != ["sentence", "verb", "noun"] else ([],):
            lv = levels + extra
            cases.append(pytest.param(dict(_LEARNABLE, levels=lv), 0.0, id="levels-" + "-".join(lv)))
    for nt in ("root", "uniform"):
        cases.append(pytest.param(dict(_LEARNABLE, noun_temporal=nt), 0.0, id=f"noun_temporal-{nt}"))
    for enhance in ("none", "mean"):
        cases.append(pytest.param(dict(_LEARNABLE, text_enhance=enhance), 0.0, id=f"text_enhance-{enhance}"))
    cases.append(pytest.param(dict(_LEARNABLE, temporal="seqTransf"), 0.0, id="seqTransf"))
    cases.append(pytest.param(dict(_LEARNABLE, temporal="seqTransf"), 0.5, id="seqTransf-aux"))
    cases.append(pytest.param(dict(_LEARNABLE, guide_similarity=False), 0.5, id="aux-no_guided_similarity"))
    return cases


@pytest.fixture(scope="module")
def batch():
    ds = DigitsDataset("train", num_videos=4, seed=0, image_size=32)
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    return RetrievalCollate(enc)([ds[i] for i in range(4)])


@pytest.mark.parametrize(("switches", "aux_weight"), _cases())
def test_every_trainable_parameter_gets_a_gradient(switches, aux_weight, batch):
    torch.manual_seed(0)
    module = SHENetModule(SHENetConfig(**_TINY_CLIP, **switches), aux_weight=aux_weight)
    module.log = lambda *args, **kwargs: None  # no trainer attached
    frozen = {id(p) for p in module.model.unused_parameters()}
    assert all(not p.requires_grad for p in module.model.unused_parameters())
    for p in module.model.unused_parameters():
        p.requires_grad_(True)  # for this pass only: the frozen set must be exactly the parameters the loss misses
    with repeated_index_reads() as repeated:  # gradients of repeated rows summed in a fixed order (runs repeat)
        loss = module.training_step(batch, 0)
    assert repeated == []
    loss.backward()
    missing = [n for n, p in module.named_parameters() if id(p) not in frozen and p.grad is None]
    assert not missing, f"trainable parameters without a gradient: {missing}"
    reached = [n for n, p in module.named_parameters() if id(p) in frozen and p.grad is not None]
    assert not reached, f"frozen parameters that the loss reaches: {reached}"
    for p in module.model.unused_parameters():
        p.requires_grad_(False)
    # what the optimiser is handed is exactly the trainable set
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    hp = module.hparams
    handed = [id(p) for g in param_groups(module.model.named_parameters(), hp.lr, hp.coef_lr, 0.2) for p in g["params"]]
    assert set(handed) == trainable
