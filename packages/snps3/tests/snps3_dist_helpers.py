"""Module-level functions run in spawned processes by test_losses.py (2-process equivalence of gathered losses)."""

import torch
import torch.distributed as dist

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


def losses(lin, words, clips, text):
    v = torch.nn.functional.normalize(lin(clips), dim=-1)
    t = torch.nn.functional.normalize(lin(text), dim=-1)
    return LVWMLoss()(lin(words), v) + MILNCELoss()(t, v)


def single_process():
    lin, words, clips, text = make_problem()
    loss = losses(lin, words, clips, text)
    loss.backward()
    return loss.detach(), lin.weight.grad.clone()


def two_rank(rank: int, world: int):
    lin, words, clips, text = make_problem()
    n = words.shape[0] // world
    sl = slice(rank * n, (rank + 1) * n)
    loss = losses(lin, words[sl], clips[sl], text[sl])
    loss.backward()
    grad = lin.weight.grad.clone()
    dist.all_reduce(grad)
    return loss.detach(), grad / world  # DDP averages parameter gradients over ranks
