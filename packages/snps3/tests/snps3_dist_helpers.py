"""Module-level functions run in spawned processes by test_losses.py (2-process equivalence of gathered losses)."""

import torch
import torch.distributed as dist
from mmzoo.testing import sync_dist_logger
from torchmetrics import Metric

from snps3.losses import LVWMLoss, MILNCELoss


def make_problem(seed: int = 0, b: int = 4, t: int = 3, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d, d, generator=g) * 0.5)
        lin.bias.copy_(torch.randn(d, generator=g) * 0.1)
    words = torch.randn(b, 3, d, generator=g)
    clips = torch.randn(b, t, d, generator=g)
    text = torch.randn(b, d, generator=g)
    return lin, words, clips, text


def losses(lin, words, clips, text, reduction="mean"):
    v = torch.nn.functional.normalize(lin(clips), dim=-1)
    t = torch.nn.functional.normalize(lin(text), dim=-1)
    return LVWMLoss()(lin(words), v, reduction) + MILNCELoss()(t, v, reduction)


def single_process():
    lin, words, clips, text = make_problem()
    loss = losses(lin, words, clips, text)
    loss.backward()
    with torch.no_grad():
        per_sample = losses(lin, words, clips, text, "none")  # (4,)
    return loss.detach(), lin.weight.grad.clone(), per_sample


def two_rank(rank: int, world: int):
    lin, words, clips, text = make_problem()
    n = words.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    loss = losses(lin, words[sl], clips[sl], text[sl])
    loss.backward()
    grad = lin.weight.grad.clone()
    dist.all_reduce(grad)
    with torch.no_grad():
        per_sample = losses(lin, words[sl], clips[sl], text[sl], "none")  # (2,) this rank's samples' terms
    return loss.detach(), grad / world, per_sample  # DDP averages parameter gradients over ranks


# ---------------------------------------------------------------------------------------- evaluation under DDP
# (test_distributed_eval.py) the epoch-end metrics of a fixed tiny model over a DistributedSampler's shards, or over
# explicit per-rank item lists, compared there with one process over the same items.


def _strategy():
    def all_gather(t, group=None, sync_grads=False):  # Lightning's strategy.all_gather: a new leading rank dim
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t.contiguous())
        return torch.stack(out)

    def reduce(t, reduce_op="sum"):
        dist.all_reduce(t)
        return t

    from types import SimpleNamespace

    return SimpleNamespace(all_gather=all_gather, reduce=reduce)


def evaluate(root: str, task: str, items: list[int] | None = None, rank: int = 0, world: int = 1) -> dict:
    """What ``SNPS3Module`` logs after testing ``task`` on the synthetic test split: one process over ``items`` (all
    when None), or with ``items=None`` and world > 1 this rank's share of a padding ``DistributedSampler``. The logger
    mimics Lightning's ``sync_dist`` with one all-reduce per logged value, so ranks that log differently fail.

    ``pretrain`` (WebVid format, BERT masking, one item per batch) runs the terms whose value for an item does not
    depend on the other items of its batch: L1 with MoCo (queue negatives only), MLM, ITM (the item's own negative
    caption) and L2 on its one-item batch; LVWM, whose negatives are the gathered batch, is off."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from snps3.data import SNPS3DataModule, collate
    from snps3.models import SNPS3Config
    from snps3.module import SNPS3Module

    dataset = {"qa": "msrvtt_qa", "retrieval": "msrvtt_7k", "pretrain": "webvid"}[task]
    dm = SNPS3DataModule(
        root,
        dataset,
        tokenizer="vocab.txt",
        num_frames=2,
        max_text_len=16,
        masking="mlm" if task == "pretrain" else "none",
        significant_words=None,
        crop_size=32,
        eval_short_side=32,
        randaugment=False,
        num_answers=18,
        answer_list="msrvtt_qa_antmmf/answers.json",
    )
    dm.setup("test")
    ds = dm.datasets["test"]
    config = SNPS3Config(
        bert=None,
        vocab_size=209,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        visual_encoder="tiny_cnn",
        tiny_cnn_channels=8,
        num_answers=18,
    )
    torch.manual_seed(0)
    if task == "pretrain":
        module = SNPS3Module(config=config, task=task, moco_queue_size=8, use_lvwm=False).eval()
    else:
        module = SNPS3Module(config=config, task=task, with_moco=False, eval_pair_batch=7).eval()
    module._trainer = SimpleNamespace(world_size=world, datamodule=dm, strategy=_strategy() if world > 1 else None)
    sync_log, logged = sync_dist_logger(world)
    metric_objects = {}

    def log(name, value, **kw):
        if isinstance(value, Metric):  # Lightning computes a logged metric object at the end of the epoch
            metric_objects[name] = value
            return
        sync_log(name, value)

    module.log = log
    if items is None and world > 1:
        loader = DataLoader(
            ds, batch_size=1, sampler=DistributedSampler(ds, world, rank, shuffle=False), collate_fn=collate
        )
    else:
        subset = Subset(ds, list(range(len(ds))) if items is None else items)
        loader = DataLoader(subset, batch_size=1, collate_fn=collate)
    module.on_test_epoch_start()
    with torch.no_grad():
        for batch_idx, batch in enumerate(loader):
            module.test_step(batch, batch_idx)
    module.on_test_epoch_end()
    for name, metric in metric_objects.items():
        logged[name] = metric.compute().to(torch.float64)
    return logged


EVALUATED_TASKS = ("qa", "retrieval", "pretrain")


def two_rank_evaluation(rank: int, world: int, root: str) -> dict:
    """Padded repeats (5 test items over 2 ranks: item 0 twice) and a rank without any item (all on rank 0), for
    every task of :data:`EVALUATED_TASKS`."""
    import os
    import threading

    watchdog = threading.Timer(240, os._exit, (3,))  # a rank stuck in a collective fails the test, never hangs it
    watchdog.daemon = True
    watchdog.start()
    torch.set_num_threads(1)  # two ranks on a 2-core CPU: one thread each
    out = {}
    for task in EVALUATED_TASKS:
        out[task, "padded"] = evaluate(root, task, None, rank, world)
        out[task, "rank_without_items"] = evaluate(root, task, [0, 1, 2, 3, 4] if rank == 0 else [], rank, world)
    watchdog.cancel()
    return out
