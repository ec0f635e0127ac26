"""Module-level functions run in spawned gloo processes by test_distributed_eval.py: the evaluation of a fixed tiny
model over a DistributedSampler's shards, compared there with one process over the same items."""

import os
import threading
from types import SimpleNamespace

import torch
from mmzoo.testing import sync_dist_logger
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from asdmllm.data import SocialCounterfactualsDataset, collate
from asdmllm.module import ASDModule

NUM_ITEMS = 23  # not divisible by 2: the sampler pads rank 1 with a repeat of item 0


class CorruptOn(Dataset):
    """``dataset`` whose items in ``corrupt`` read as skipped (``None``, as under ``data.on_corrupt: skip``)."""

    def __init__(self, dataset: Dataset, corrupt: set[int]) -> None:
        self.dataset, self.corrupt = dataset, corrupt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return None if index in self.corrupt else self.dataset[index]


_MODULES: dict[str, ASDModule] = {}


def tiny_module() -> ASDModule:
    """The same randomly initialised tiny model in every process (built once per process)."""
    if "tiny" not in _MODULES:
        torch.manual_seed(0)
        _MODULES["tiny"] = ASDModule().eval()
    return _MODULES["tiny"]


def evaluate(root: str, items: list[int], rank: int = 0, world: int = 1, corrupt: frozenset = frozenset()) -> dict:
    """The metrics ``ASDModule`` logs after validating ``items`` of the tiny set: on one process (world 1), or on
    this rank's share of a padding ``DistributedSampler``. The logger mimics Lightning's ``sync_dist`` with one
    all-reduce per logged value, so ranks that log differently fail."""
    ds = SocialCounterfactualsDataset(root, "all", image_size=32)
    info = ds.info("socialcounterfactuals")
    module = tiny_module()
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(eval_sets=lambda key: [info]))
    module.setup("validate")
    subset = CorruptOn(Subset(ds, items), corrupt)
    sampler = DistributedSampler(subset, world, rank, shuffle=False) if world > 1 else None
    module.log, logged = sync_dist_logger(world)
    with torch.no_grad():
        for batch_idx, batch in enumerate(DataLoader(subset, batch_size=1, sampler=sampler, collate_fn=collate)):
            module.validation_step(batch, batch_idx)
    module.on_validation_epoch_end()
    return logged


def two_ranks(rank: int, world: int, root: str) -> dict:
    """Both evaluation defects on the same processes: padded repeats (23 items) and a rank whose whole shard is
    corrupt (22 items, rank 1 holds the odd positions and skips all of them)."""
    watchdog = threading.Timer(240, os._exit, (3,))  # a rank stuck in a collective fails the test, never hangs it
    watchdog.daemon = True
    watchdog.start()
    padded = evaluate(root, list(range(NUM_ITEMS)), rank, world)
    shard_corrupt = evaluate(root, list(range(22)), rank, world, corrupt=frozenset(range(1, 22, 2)))
    watchdog.cancel()
    return {"padded": padded, "shard_corrupt": shard_corrupt}
