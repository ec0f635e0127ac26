"""All-gather with gradients for contrastive losses.

Under DDP each rank holds B samples. A contrastive loss scores its own B rows against all W·B columns:

    logits_r = x_r @ gather(y).T          # (B, W·B)
    labels_r = arange(B) + rank · B

``gather_with_grad`` is differentiable: its backward sums the incoming gradients over ranks (each rank's loss
touches every gathered column) and returns this rank's slice. Together with DDP's gradient averaging the
parameter gradients then equal those of one process computing the mean loss over the whole W·B batch.
Outside a process group every function here is the identity on one rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank_and_world",
    "gather_with_grad",
    "gather_no_grad",
    "gather_uneven_rows",
    "rank_offset_labels",
    "restore_output_capture",
]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _check_equal_shapes(x: torch.Tensor, caller: str) -> None:
    """Raise a clear error (naming ``caller``) instead of hanging when ranks hold tensors of different shapes."""
    world = dist.get_world_size()
    shape = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    ndims = torch.tensor([x.dim()], dtype=torch.long, device=x.device)
    all_ndims = [torch.zeros_like(ndims) for _ in range(world)]
    dist.all_gather(all_ndims, ndims)
    if len({int(n) for n in all_ndims}) != 1:
        raise ValueError(f"{caller}: ranks hold tensors of different ranks (ndim {[int(n) for n in all_ndims]})")
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    sizes = [tuple(int(v) for v in s) for s in shapes]
    if len(set(sizes)) != 1:
        mine = tuple(x.shape)
        other = next(s for s in sizes if s != mine) if any(s != mine for s in sizes) else sizes[0]
        raise ValueError(
            f"{caller}: this rank holds shape {mine} but another rank holds {other} (all: {sizes}). "
            "Gathers need equal shapes on every rank: use drop_last=True in the training DataLoader."
        )


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.batch = x.shape[0]
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)  # (W·B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # a copy: autograd may hand the same gradient tensor to another branch (``gathered + y`` gives both summands
        # one tensor), which an in-place all-reduce would change under it
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: torch.Tensor, check_shapes: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0 into (W·B, ...), differentiably.

    Args:
        x: this rank's tensor; every rank must hold the same shape.
        check_shapes: gather the shapes first and raise ``ValueError`` naming both sizes on a mismatch
            (one small extra collective; turn off only when shapes are guaranteed equal).
    """
    if not is_distributed():
        return x
    if check_shapes:
        _check_equal_shapes(x, "gather_with_grad")
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor, check_shapes: bool = True) -> torch.Tensor:
    """Concatenate ``x`` from every rank without gradients (queues, momentum features, evaluation)."""
    if not is_distributed():
        return x
    if check_shapes:
        _check_equal_shapes(x, "gather_no_grad")
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def gather_uneven_rows(
    tensors: Sequence[torch.Tensor], device: torch.device | str | None = None
) -> tuple[list[torch.Tensor], list[int]]:
    """Concatenate tensors over ranks, in rank order, when ranks hold different numbers of rows (evaluation
    records, a rank with none included).

    All tensors of one call share this rank's row count (their leading dimension) and may differ in dtype (bool and
    16-bit included) and row shape; every rank passes the same row shapes and dtypes (an empty rank passes
    ``(0, *row)`` tensors). Two tensor all-gathers: the row counts with each rank's bytes per row (a mismatch raises
    a ``ValueError`` on every rank instead of hanging), then the rows with their bytes packed side by side, padded
    to the largest count and cut back. ``device``: where the collectives run (the module's device under NCCL, which
    has no CPU tensors; default: the first tensor's). Returns the gathered tensors on ``device`` and every rank's
    row count; outside a process group, the tensors as they are and ``[rows]``.
    """
    if not tensors:
        raise ValueError("gather_uneven_rows: no tensors")
    n = tensors[0].shape[0]
    for t in tensors:
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(f"gather_uneven_rows: tensors with {tuple(t.shape)} and {n} rows")
    if not is_distributed():
        return list(tensors), [n]
    device = torch.device(device) if device is not None else tensors[0].device
    widths, packed = [], []
    for t in tensors:
        cols = math.prod(t.shape[1:])
        b = t.detach().to(device).contiguous().reshape(n, cols)
        b = b.view(torch.uint8) if cols else torch.empty(n, 0, dtype=torch.uint8, device=device)
        widths.append(b.shape[1])
        packed.append(b)
    data = torch.cat(packed, 1)  # (n, bytes per row)
    world = dist.get_world_size()
    meta = torch.tensor([n, data.shape[1]], dtype=torch.long, device=device)
    metas = [torch.zeros_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    counts = [int(m[0]) for m in metas]
    row_bytes = sorted({int(m[1]) for m in metas})
    if len(row_bytes) > 1:
        raise ValueError(
            f"gather_uneven_rows: ranks disagree on the bytes per row ({row_bytes}): shapes or dtypes differ"
        )
    buf = torch.zeros(max(counts), data.shape[1], dtype=torch.uint8, device=device)
    buf[:n] = data
    out = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(out, buf)
    rows = torch.cat([o[:c] for o, c in zip(out, counts, strict=True)])  # (Σ counts, bytes per row)
    del out, buf
    result, at = [], 0
    for t, w in zip(tensors, widths, strict=True):
        chunk = rows[:, at : at + w].contiguous()
        at += w
        x = chunk.view(t.dtype) if w else torch.empty(len(rows), 0, dtype=t.dtype, device=device)
        result.append(x.reshape(len(rows), *t.shape[1:]))
    return result, counts


def rank_offset_labels(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """Targets ``arange(B) + rank·B`` for a rank's B rows scored against the gathered W·B columns."""
    rank, _ = rank_and_world()
    return torch.arange(batch, device=device) + rank * batch


def restore_output_capture(module: torch.nn.Module) -> int:
    """Re-register the Hugging Face transformers models inside ``module`` for output capture; returns how many.

    transformers (≥ 5) keeps, per model class, which outputs its forward can capture (hidden states, attentions) in a
    process-wide registry that a model's ``__init__`` fills. A model built in one process and unpickled in another
    (Lightning's ``ddp_spawn`` strategy, ``torch.multiprocessing``) never ran ``__init__`` there, so a forward that
    asks for hidden states gets ``None`` (LLaVA's image features and DPT's depth backbone then fail). A LightningModule
    holding such models calls this in ``setup``, which runs in every process. Without transformers, or with a version
    that keeps no registry, it does nothing.
    """
    try:
        from transformers import PreTrainedModel
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return 0
    count = 0
    for m in module.modules():
        if isinstance(m, PreTrainedModel) and getattr(m, "_can_record_outputs", None) is not None:
            _CAN_RECORD_REGISTRY[m] = m._can_record_outputs
            count += 1
    return count
