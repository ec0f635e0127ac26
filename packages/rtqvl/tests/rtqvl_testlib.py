"""Test helpers: tiny model configs (spec §8a) and synthetic data in the official formats (spec §8b)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtqvl.losses import ITCLoss
from rtqvl.models import RTQConfig, TextConfig, VisionConfig


def tiny_vision(**over) -> VisionConfig:
    kw = dict(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        mlp_dim=128,
        num_frames=4,
        num_segments=2,
        cluster_block=2,
        temporal_block=3,
    )
    kw.update(over)
    return VisionConfig(**kw)


def tiny_config(task: str = "retrieval", **over) -> RTQConfig:
    vision = over.pop("vision", tiny_vision())
    text = TextConfig(vocab_path="tiny", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, dropout=0.0)
    kw = dict(
        task=task,
        vision=vision,
        text=text,
        embed_dim=32,
        queue_size=16,
        k_test=4,
        max_text_len=16,
        max_caption_len=16,
        num_beams=2,
        gen_max_len=6,
        gen_min_len=2,
    )
    kw.update(over)
    return RTQConfig(**kw)


def itc_inputs(world: int, b: int = 4, e: int = 8, q: int = 8):
    g = torch.Generator().manual_seed(0)
    n = world * b
    w = torch.randn(e, e, generator=g)
    x_v, x_t = torch.randn(n, e, generator=g), torch.randn(n, e, generator=g)
    v_m = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    t_m = F.normalize(torch.randn(n, e, generator=g), dim=-1)
    idx = torch.tensor([i // 2 for i in range(n)])
    vq = F.normalize(torch.randn(e, q, generator=g), dim=0)
    tq = F.normalize(torch.randn(e, q, generator=g), dim=0)
    iq = torch.full((1, q), -100)
    return w, x_v, x_t, v_m, t_m, idx, vq, tq, iq


def itc_loss_and_grad(w, x_v, x_t, v_m, t_m, idx, vq, tq, iq, rows):
    w = w.clone().requires_grad_(True)
    v = F.normalize(x_v[rows] @ w, dim=-1)
    t = F.normalize(x_t[rows] @ w, dim=-1)
    loss, gathered = ITCLoss()(v, t, v_m[rows], t_m[rows], idx[rows], vq, tq, iq, 0.07, 0.4)
    loss.backward()
    return loss.detach(), w.grad, gathered


def itc_worker(rank: int, world: int):
    inputs = itc_inputs(world)
    b = inputs[1].shape[0] // world
    rows = torch.arange(rank * b, (rank + 1) * b)
    loss, grad, gathered = itc_loss_and_grad(*inputs, rows)
    return loss, grad, gathered
