# ruff: noqa: E402  (imports follow the sys.path fix below)
"""tsgsv benchmark: training step (with the TwinNet branch) and streaming inference (windows/s).

Paper size (ActivityNet config: h 1024, d_v 500, M 8/64/64, compressor [16, 16], batch 64 per GPU) on CUDA; a small
model on CPU (finishes in well under 2 minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# this file is named like the package: drop its own folder from the import path so `import tsgsv` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch
from mmzoo.bench import emit, measure, pick_device
from tsgsv.losses import TSGSVLoss
from tsgsv.models import StreamingTSGV, TSGSVConfig


def batch(cfg: TSGSVConfig, B: int, device: torch.device, future: bool) -> dict[str, torch.Tensor]:
    x = {
        "short": torch.randn(B, cfg.short_memory, cfg.video_dim, device=device),
        "short_mask": torch.zeros(B, cfg.short_memory, dtype=torch.bool, device=device),
        "long": torch.randn(B, cfg.long_memory, cfg.video_dim, device=device),
        "long_mask": torch.zeros(B, cfg.long_memory, dtype=torch.bool, device=device),
        "sentence": torch.randn(B, cfg.max_text_len, cfg.text_dim, device=device),
        "sentence_length": torch.randint(5, 21, (B,), device=device),
    }
    if future:
        x["future"] = torch.randn(B, cfg.future_memory, cfg.video_dim, device=device)
        x["future_mask"] = torch.zeros(B, cfg.future_memory, dtype=torch.bool, device=device)
    return x


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = pick_device(args.device)
    if device.type == "cuda":
        cfg, B, Bi = TSGSVConfig(), 64, 256  # ActivityNet config, per-GPU batch / val batch
    else:
        cfg = TSGSVConfig(video_dim=64, text_dim=64, hidden_dim=64, ffn_dim=128, num_heads=4, dropout=0.1,
                          long_memory=32, future_memory=32, gru_layers=1, compressor_tokens=[8, 4])  # fmt: skip
        B, Bi = 16, 64
    torch.manual_seed(0)
    model = StreamingTSGV(cfg).to(device)
    loss_fn = TSGSVLoss(cfg.hidden_dim, kd_weight=0.4).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train_batch = batch(cfg, B, device, True)
    labels = torch.rand(B, cfg.short_memory, 3, device=device)

    def train_step():
        out = model(**train_batch)
        loss = loss_fn(out, labels, train_batch["short_mask"])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    emit(
        {
            "bench": "tsgsv",
            "case": "train_step",
            "batch": B,
            "hidden": cfg.hidden_dim,
            **measure(train_step, B, device, 2, 5),
        }
    )
    model.eval()
    infer_batch = batch(cfg, Bi, device, False)

    @torch.no_grad()
    def infer():
        model(**infer_batch)

    emit(
        {
            "bench": "tsgsv",
            "case": "stream_windows",
            "batch": Bi,
            "hidden": cfg.hidden_dim,
            **measure(infer, Bi, device, 2, 5),
        }
    )


if __name__ == "__main__":
    main()
