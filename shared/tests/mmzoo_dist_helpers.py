"""Module-level functions run in spawned processes by test_distributed.py."""

import torch
import torch.nn.functional as F

from mmzoo.distributed import gather_with_grad, rank_offset_labels


def make_problem(seed: int = 0, n: int = 8, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d, d, generator=g))
        lin.bias.copy_(torch.randn(d, generator=g))
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g)
    return lin, x, y


def clip_loss(a: torch.Tensor, b: torch.Tensor, all_b: torch.Tensor, labels: torch.Tensor, all_a: torch.Tensor):
    """Symmetric InfoNCE of local rows against gathered columns."""
    return 0.5 * (F.cross_entropy(a @ all_b.T, labels) + F.cross_entropy(b @ all_a.T, labels))


def single_process(seed: int = 0):
    lin, x, y = make_problem(seed)
    a, b = lin(x), y * 1.0
    loss = clip_loss(a, b, b, torch.arange(len(x)), a)
    loss.backward()
    return loss.detach(), lin.weight.grad.clone()


def ddp_rank(rank: int, world: int, seed: int = 0):
    import torch.distributed as dist

    lin, x, y = make_problem(seed)
    n = len(x) // world
    xs, ys = x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]
    a, b = lin(xs), ys * 1.0
    loss = clip_loss(a, b, gather_with_grad(b), rank_offset_labels(n), gather_with_grad(a))
    loss.backward()
    grad = lin.weight.grad.clone()
    dist.all_reduce(grad)  # what DDP does: average parameter gradients over ranks
    grad /= world
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total / world, grad


def uneven_rank(rank: int, world: int):
    x = torch.zeros(3 + rank, 2)
    try:
        gather_with_grad(x)
    except ValueError as err:
        return str(err)
    return "no error"


def indexed_mean_rank(rank: int, world: int):
    """Rank 1 adds nothing; rank 0 adds three values, one of them twice (a padding repeat)."""
    from mmzoo.metrics import IndexedMean

    m = IndexedMean()
    if rank == 0:
        m.update(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([4, 7, 9]))
        m.update(torch.tensor([1.0]), torch.tensor([4]))
    return m.compute().item()


def uneven_rows(rank: int, n: int):
    """Rank ``rank``'s rows for the uneven gather: a float16 (n, 2), a bool (n,) and an int64 (n, 3) tensor."""
    base = torch.arange(n, dtype=torch.float32) + 10 * rank
    return [torch.stack([base, -base], 1).half(), base.long() % 2 == 0, torch.stack([base.long()] * 3, 1)]


def gather_uneven_rank(rank: int, world: int, counts: list[int], bad_rank: int | None = None):
    """Gather ``counts[rank]`` rows per rank; ``bad_rank`` passes a float32 first tensor (other bytes per row)."""
    from mmzoo.distributed import gather_uneven_rows

    tensors = uneven_rows(rank, counts[rank])
    if rank == bad_rank:
        tensors[0] = tensors[0].float()
    try:
        gathered, got_counts = gather_uneven_rows(tensors)
    except ValueError as err:
        return str(err)
    return gathered, got_counts


def stuck_rank(rank: int, world: int):
    """Rank 0 never ends (as a rank waiting in a collective the others skip); the others return at once."""
    import time

    if rank == 0:
        time.sleep(3600)
    return rank
