"""torchmetrics building blocks for evaluation under several processes.

Lightning's default ``DistributedSampler`` pads the last evaluation round with repeated items, so a metric gathered
over ranks may hold an item twice; a metric that keeps each row with its dataset index can drop the repeats
(:func:`first_of_each_id`, :class:`IndexedMean`). And a rank may see no item at all (its shard was skipped as
corrupt, or there are fewer items than ranks): torchmetrics then replaces an empty list state by a 1-D float32
tensor before the all-gather of ``compute``, and for a state of another shape or dtype (2-D score rows, integer ids)
the gather fails or waits forever on the other ranks. :class:`ListStateMetric` sends an empty tensor of the right
shape and dtype instead, so such a rank takes part in the gather and adds nothing.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["IndexedMean", "ListStateMetric", "first_of_each_id"]


def first_of_each_id(ids: torch.Tensor) -> torch.Tensor:
    """Positions of the first row of every distinct id, in id order (a padding repeat's rows are identical)."""
    order = torch.argsort(ids, stable=True)
    ids_sorted = ids[order]
    first = torch.ones_like(ids_sorted, dtype=torch.bool)
    first[1:] = ids_sorted[1:] != ids_sorted[:-1]
    return order[first]


class ListStateMetric(Metric):
    """A metric whose states are lists of per-sample rows (``dist_reduce_fx="cat"``), safe on a rank without rows.

    A subclass sets ``self._row_specs = {state name: (row shape, dtype)}`` in ``__init__`` and reads a state as one
    tensor with :meth:`_rows` (a list before the sync, a tensor after it, empty when nothing was added).
    """

    _row_specs: dict[str, tuple[tuple[int, ...], torch.dtype]]

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        for name, (row, dtype) in self._row_specs.items():
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.empty((0, *row), dtype=dtype, device=self.device))
        if dist_sync_fn is None:
            super()._sync_dist(process_group=process_group)
        else:
            super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _rows(self, name: str) -> torch.Tensor:
        state = getattr(self, name)
        if isinstance(state, torch.Tensor):
            return state
        row, dtype = self._row_specs[name]
        return torch.cat(state) if state else torch.empty((0, *row), dtype=dtype, device=self.device)


class IndexedMean(ListStateMetric):
    """Mean of per-sample values over distinct sample ids, across batches and ranks.

    ``update(values (B,), ids (B,))``; ``compute()`` → the mean with each id counted once (a repeat added by a
    distributed sampler is dropped), NaN when no rank added anything.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._row_specs = {"values": ((), torch.float64), "ids": ((), torch.long)}
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        if values.ndim != 1 or values.shape != ids.shape:
            raise ValueError(f"IndexedMean: values {tuple(values.shape)} and ids {tuple(ids.shape)} must be (B,)")
        self.values.append(values.detach().to(torch.float64))
        self.ids.append(ids.long())

    def compute(self) -> torch.Tensor:
        values, ids = self._rows("values"), self._rows("ids")
        if values.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
        return values[first_of_each_id(ids)].mean()
