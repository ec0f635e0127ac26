"""Where retrieval evaluation keeps the video token sequences that ITM re-ranking reads.

Re-ranking needs, for every candidate pair, the whole token sequence of its video (``T'·(1+C)`` tokens of width D):
N_v × T'·(1+C) × D values, ≈ 48 GB in float32 for ActivityNet val_1. :class:`VideoTokenStore` keeps this process's
share of them in host memory (page-locked when CUDA is available, so copies to the GPU run asynchronously) and
:meth:`VideoTokenStore.fetch` moves only the rows a re-ranking chunk needs to the device. Each process keeps the
videos it encoded; :meth:`rtqvl.models.rtq.RTQModel.rerank` scores each pair on the process that holds its video.

:func:`retrieval_eval_memory` gives the byte counts of this layout (the README's memory figures come from it).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["STORE_LOCATIONS", "VideoTokenStore", "retrieval_eval_memory", "slab_rows"]

StoreLocation = Literal["pinned", "cpu", "device"]
STORE_LOCATIONS = ("pinned", "cpu", "device")


SLAB_BYTES = 1 << 30


def _pow2ceil(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def slab_rows(stored_rows: int, pending_rows: int, row_bytes: int, slab_bytes: int = SLAB_BYTES) -> int:
    """Rows of the next host slab: ``pow2ceil(min(slab_bytes, max(pending, stored, 1) · row_bytes)) // row_bytes``.

    Slabs grow geometrically up to ``slab_bytes`` and each spans a power-of-two byte count: PyTorch's pinned-memory
    allocator rounds every request up to a power of two, so one pinned tensor per batch could waste up to half of
    it (an ActivityNet batch of 8 videos, 77.5 MB, would take 134 MB), while a slab wastes less than one row."""
    want = min(slab_bytes, max(pending_rows, stored_rows, 1) * row_bytes)
    return max(1, _pow2ceil(want) // row_bytes)


class VideoTokenStore:
    """This process's evaluation video token sequences, appended batch by batch (rows in append order).

    Args:
        location: ``pinned`` — host memory, page-locked when CUDA is available (plain host memory otherwise);
            ``cpu`` — plain host memory; ``device`` — kept where the tokens were computed (the model's device;
            the whole share stays on the accelerator).
        slab_bytes: largest host slab (a power of two).

    Tokens keep their dtype. In host memory they are copied into slabs (see :func:`slab_rows`), so host memory
    never holds a second, concatenated copy; a device → page-locked copy is asynchronous and is waited for before
    the first read.
    """

    def __init__(self, location: StoreLocation = "pinned", slab_bytes: int = SLAB_BYTES):
        if location not in STORE_LOCATIONS:
            raise ValueError(f"model.eval_token_store={location!r}: expected one of {STORE_LOCATIONS}")
        self.location = location
        self.pin = location == "pinned" and torch.cuda.is_available()
        self.slab_bytes = slab_bytes
        self.parts: list[torch.Tensor] = []  # slabs (host) or batches (device); rows in order
        self._starts: list[int] = []
        self._rows = 0
        self._pending = False

    def __len__(self) -> int:
        return self._rows

    @property
    def allocated_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts)

    def _new_slab(self, like: torch.Tensor, pending: int) -> None:
        row_bytes = like[0].numel() * like.element_size()
        rows = slab_rows(self._rows, pending, row_bytes, self.slab_bytes)
        self.parts.append(torch.empty((rows, *like.shape[1:]), dtype=like.dtype, pin_memory=self.pin))
        self._starts.append(self._rows)

    def append(self, tokens: torch.Tensor) -> torch.Tensor:
        """Store a batch (B, M, D); returns the rows it got (B,) (int64, host)."""
        tokens = tokens.detach()
        n = tokens.shape[0]
        rows = torch.arange(self._rows, self._rows + n)
        if self.location == "device":
            self.parts.append(tokens)
            self._starts.append(self._rows)
            self._rows += n
            return rows
        non_blocking = self.pin and tokens.is_cuda
        done = 0
        while done < n:
            free = 0
            if self.parts:
                free = self._starts[-1] + self.parts[-1].shape[0] - self._rows
            if free == 0:
                self._new_slab(tokens, n - done)
                continue
            take = min(free, n - done)
            at = self._rows - self._starts[-1]
            self.parts[-1][at : at + take].copy_(tokens[done : done + take], non_blocking=non_blocking)
            self._rows += take
            done += take
        self._pending |= non_blocking
        return rows

    def _sync(self) -> None:
        if self._pending:  # device → page-locked copies were queued without waiting
            torch.cuda.synchronize()
            self._pending = False

    def fetch(self, rows: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """Rows ``rows`` (n,) of the store as one (n, M, D) tensor on ``device`` (only these rows are copied)."""
        self._sync()
        rows = rows.detach().to("cpu", torch.long)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self._rows):
            raise IndexError(f"VideoTokenStore.fetch: rows outside [0, {self._rows})")
        first = self.parts[0]
        out = torch.empty((rows.numel(), *first.shape[1:]), dtype=first.dtype, device=first.device, pin_memory=self.pin)
        part = torch.bucketize(rows, torch.tensor(self._starts), right=True) - 1
        for p in torch.unique(part).tolist():
            sel = (part == p).nonzero().view(-1)
            local = rows[sel] - self._starts[p]
            out[sel.to(first.device)] = self.parts[p].index_select(0, local.to(first.device))
        return out.to(device, non_blocking=self.pin)


def retrieval_eval_memory(
    num_texts: int,
    num_videos: int,
    tokens_per_video: int,
    width: int,
    world_size: int = 1,
    eval_batch_size: int = 8,
    k_test: int = 128,
    chunk: int = 128,
    bytes_per_value: int = 4,
) -> dict[str, float]:
    """Memory of retrieval evaluation's video tokens and score matrices, in GB (1e9 bytes), per process.

    One evaluation item per video (with all its captions; the video's tokens are stored once),
    ``ceil(num_videos / world_size)`` items per process (the DistributedSampler's padded share) in batches of
    ``eval_batch_size``.

    * ``host_tokens``: the items' token sequences in this process's store (host memory with ``pinned`` / ``cpu``);
      ``host_allocated``: the slabs holding them (:func:`slab_rows`, the same policy as the store).
    * ``device_tokens``: the most video tokens on the accelerator at once while re-ranking: a chunk of ``chunk``
      pairs with their videos' sequences plus the ≤ ``chunk`` distinct videos fetched for it.
    * ``device_itm_kv``: keys and values of one cross-attention layer for one chunk (the largest ITM activation;
      halve for a 16-bit autocast).
    * ``device_scores``: the cosine and the two re-ranked matrices (float32) plus the candidate-pair index arrays
      (≤ 92 bytes per pair), on every process.
    * ``device_tokens_previous``: what the previous layout kept on every accelerator (the tokens of all gathered
      items, then one per text; the de-duplication copy briefly doubled it).
    The model and the encoders' own activations come on top.
    """
    row = tokens_per_video * width * bytes_per_value
    items = math.ceil(num_videos / world_size)
    stored, free, allocated = 0, 0, 0
    for start in range(0, items, eval_batch_size):
        n = min(eval_batch_size, items - start)
        while n:
            if free == 0:
                free = slab_rows(stored, n, row)
                allocated += free * row
            take = min(free, n)
            stored, free, n = stored + take, free - take, n - take
    pairs = num_texts * min(k_test, num_videos) + num_videos * min(k_test, num_texts)
    gb = 1e9
    return {
        "host_tokens_GB": items * row / gb,
        "host_allocated_GB": allocated / gb,
        "device_tokens_GB": 2 * chunk * row / gb,
        "device_itm_kv_GB": 2 * chunk * row / gb,
        "device_scores_GB": (3 * num_texts * num_videos * 4 + 92 * pairs) / gb,
        "device_tokens_previous_GB": num_texts * row / gb,
    }
