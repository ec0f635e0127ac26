"""Paths that only matter on several GPUs (DDP / FSDP), checked on one CPU process with stand-ins."""

import warnings
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies.strategy import _ForwardRedirection
from torch import nn
from torch.utils.data import DataLoader

from asdmllm.data import SocialCounterfactualsDataset, collate, make_socialcounterfactuals
from asdmllm.metrics import SkewMetric
from asdmllm.module import ASDModule, SkewConfig


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = make_socialcounterfactuals(
        tmp_path_factory.mktemp("sc"), ["nurse", "chef"], ["White", "Black"], ["male", "female"], 3, 32
    )
    return SocialCounterfactualsDataset(root, "all", image_size=32)


class _ShardedWrapper(nn.Module):
    """Stands in for an FSDP root: the wrapped module's parameters are usable only inside this forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.inside = False

    def forward(self, *args):
        self.calls += 1
        self.inside = True
        try:
            return self.inner(*args)
        finally:
            self.inside = False


def test_skew_refresh_runs_inside_the_sharded_wrapper(tiny_set):
    """Under ``strategy: fsdp`` the per-epoch Skew refresh runs in an epoch hook, outside training_step: calling the
    model directly would see only this rank's parameter shards. It must go through the wrapper's forward."""
    torch.manual_seed(0)
    module = ASDModule(skew=SkewConfig(scorer="answer_logprob"))
    loader = DataLoader(tiny_set, batch_size=8, collate_fn=collate)
    info = tiny_set.info("socialcounterfactuals")
    direct = module.estimate_skew(loader, info)

    wrapper = _ShardedWrapper(module)
    original_score = module.score

    def guarded_score(*args):
        assert wrapper.inside, "the model was called outside the sharded wrapper's forward"
        return original_score(*args)

    module.score = guarded_score
    strategy = SimpleNamespace(model=wrapper, _forward_redirection=_ForwardRedirection())
    module._trainer = SimpleNamespace(strategy=strategy, precision_plugin=SimpleNamespace(forward_context=nullcontext))
    routed = module.estimate_skew(loader, info)
    assert wrapper.calls == len(loader)
    torch.testing.assert_close(routed, direct, equal_nan=True)


def test_logged_eval_metrics_are_on_the_module_device(tiny_set):
    """``self.log(..., sync_dist=True)`` all-reduces on the value's device; NCCL has no CPU backend, so the bias
    metrics (ranked on the CPU) must be moved to the module's device before they are logged."""
    module = ASDModule()
    info = tiny_set.info("socialcounterfactuals")
    metric = SkewMetric(info.attribute_types, [len(v) for v in info.attribute_values], info.group_ids)
    n = len(tiny_set)
    metric.update(torch.rand(n, len(info.concepts)), tiny_set.attribute_ids, tiny_set.concept_ids, torch.arange(n))
    acc, loss = torch.nn.ModuleList([SimpleMean()]), torch.nn.ModuleList([SimpleMean()])
    module._infos["val"] = [info]
    module.skew_metrics["val"] = nn.ModuleList([metric])
    module.acc_metrics["val"], module.loss_metrics["val"] = acc, loss
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    module._device = torch.device("meta")  # any device other than the CPU the metrics were computed on
    module._eval_epoch_end("val")
    assert "val/bias/socialcounterfactuals/race/max_skew" in logged and "val/concept_acc" in logged
    assert {v.device.type for v in logged.values()} == {"meta"}


class SimpleMean(nn.Module):
    """A MeanMetric stand-in with one update."""

    update_count = 1

    def compute(self):
        return torch.tensor(0.5)

    def reset(self):
        pass


def test_fairface_pools_use_k_1000_by_default():
    """Spec §3.2: FairFace pools (the whole validation set per concept) use K = 1000, the counterfactual pools K =
    25 % of the pool."""
    from asdmllm.data import EvalSetInfo

    sc = EvalSetInfo("socialcounterfactuals", ["nurse"], ["occupation"], ["q"], ["race"], [["A", "B"]])
    ff = EvalSetInfo("fairface", ["nurse"], ["occupation"], ["q"], ["race"], [["A", "B"]])
    dm = SimpleNamespace(eval_sets=lambda key: [sc, ff])
    module = ASDModule()
    module._trainer = SimpleNamespace(datamodule=dm)
    module.setup("test")
    assert [m.topk for m in module.skew_metrics["test"]] == [0.25, 1000]
    module = ASDModule(skew=SkewConfig(fairface_topk=None))
    module._trainer = SimpleNamespace(datamodule=dm)
    module.setup("test")
    assert [m.topk for m in module.skew_metrics["test"]] == [0.25, 0.25]
    with pytest.raises(ValueError, match="fairface_topk"):
        SkewConfig(fairface_topk=2.5)


def test_empty_training_batch_raises_under_ddp_instead_of_hanging():
    module = ASDModule()
    module._trainer = SimpleNamespace(world_size=2, global_rank=1)
    with pytest.raises(RuntimeError, match="cannot skip a step under DDP"):
        module.training_step(collate([None, None]), 3)


def test_warns_when_resampled_run_outlives_the_lr_schedule(tiny_set):
    module = ASDModule()
    module.log = lambda *a, **k: None
    module._trainer = SimpleNamespace(world_size=1, global_step=7)
    batch = collate([tiny_set[i] for i in range(2)])
    module._schedule_total = 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        module.training_step(batch, 0)  # inside the schedule: silent
    module._trainer.global_step = 10
    with pytest.warns(UserWarning, match="past the LR schedule"):
        module.training_step(batch, 1)
