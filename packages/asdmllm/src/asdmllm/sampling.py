"""Bias-aware data resampling (spec §3.4) and the epoch sampler that serves the resampled list."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from mmzoo.config import check_range
from torch.utils.data import Sampler

__all__ = ["bias_aware_resample", "ResampledEpochSampler"]


def bias_aware_resample(
    skew: torch.Tensor, tau1: float = 1.0, tau2: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One epoch's index list from the per-sample Skew (spec §3.4).

    Over a random permutation of the N training indices:
      * ``Skew(P_i) > 0`` (over-associated): dropped with probability ``Skew/(Skew+τ1)``, else kept once;
      * ``Skew(P_i) ≤ 0`` (under-associated): kept once, ``|Skew|`` is added to the accumulator AcmSkew, and while
        ``AcmSkew ≥ τ2`` one extra copy of the current sample is appended and τ2 subtracted.
    The list is then shuffled. Reconstruction: one accumulator for the whole pass, starting at 0.
    skew (N,) → indices (M,) long.
    """
    if skew.ndim != 1:
        raise ValueError(f"bias_aware_resample: skew must be (N,), got {tuple(skew.shape)}")
    check_range("model.debias.tau1", tau1, gt=0)
    check_range("model.debias.tau2", tau2, gt=0)
    if not bool(torch.isfinite(skew).all()):
        raise ValueError("bias_aware_resample: non-finite per-sample Skew")
    skew = skew.detach().double().cpu()
    n = skew.numel()
    order = torch.randperm(n, generator=generator)
    draws = torch.rand(n, generator=generator, dtype=torch.float64)
    out: list[int] = []
    acm = 0.0  # AcmSkew
    for j, i in enumerate(order.tolist()):
        s = float(skew[i])
        if s > 0:
            if draws[j] >= s / (s + tau1):  # keep with probability τ1/(s+τ1)
                out.append(i)
        else:
            out.append(i)
            acm += -s
            while acm >= tau2:  # up-sample the under-associated sample
                out.append(i)
                acm -= tau2
    indices = torch.tensor(out, dtype=torch.long)
    return indices[torch.randperm(indices.numel(), generator=generator)]


class ResampledEpochSampler(Sampler[int]):
    """Serves one epoch's index list: a seeded permutation (plain shuffling, the FT baseline) or the resampled list.

    :meth:`set_indices` installs the list built by :func:`bias_aware_resample`. Two epoch lengths
    (``model.debias.epoch_length``):

    * ``fixed_length=False`` (``resampled``, default, spec §3.4): the epoch is exactly the resampled list, so its
      length changes from epoch to epoch. ``len(sampler)`` follows the installed list; the trainer must rebuild the
      training loader each epoch *after* the list is installed (ASDModule sets
      ``reload_dataloaders_every_n_epochs=1`` and the DataModule builds the list in ``train_dataloader``).
    * ``fixed_length=True`` (``nominal``): the shuffled list is truncated or cycled to ``num_samples`` — resampling
      changes an epoch's composition, not its length (equal step budgets, e.g. the §8c experiment).

    With DDP Lightning wraps this sampler and shards its output; the list is identical on every rank (built from the
    same broadcast Skew table and a shared seed).
    """

    def __init__(self, num_samples: int, seed: int = 0, fixed_length: bool = False) -> None:
        if num_samples <= 0:
            raise ValueError("ResampledEpochSampler: empty training set")
        self.num_samples = num_samples
        self.seed = seed
        self.fixed_length = fixed_length
        self.epoch = 0
        self.indices: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_indices(self, indices: torch.Tensor | None) -> None:
        if indices is not None and (
            indices.numel() == 0 or int(indices.max()) >= self.num_samples or int(indices.min()) < 0
        ):
            raise ValueError(
                f"ResampledEpochSampler.set_indices: indices must be non-empty and in [0, {self.num_samples})"
            )
        self.indices = None if indices is None else indices.long().cpu()

    def __iter__(self) -> Iterator[int]:
        if self.indices is None:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            yield from torch.randperm(self.num_samples, generator=generator).tolist()
            return
        if not self.fixed_length:
            yield from self.indices.tolist()
            return
        reps = -(-self.num_samples // self.indices.numel())
        yield from self.indices.repeat(reps)[: self.num_samples].tolist()

    def __len__(self) -> int:
        if self.indices is None or self.fixed_length:
            return self.num_samples
        return int(self.indices.numel())
