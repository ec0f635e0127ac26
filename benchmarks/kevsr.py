"""kevsr cost: one training step of the full two-stream model (both streams, all losses, backward, AdamW) and
inference of the temporal stream S1 alone (what deployment runs), plus the S2-only training step.

On CUDA: the paper's sizes (d = 768, N_f = 12, N_r = 10, N_k = 10, 2048/1024/768/2048-d features, 300-d KG,
6 + 320 labels, batch 32). On CPU: d = 64, N_f = 6, N_r = 5, N_k = 5, small feature widths, batch 8.

    python benchmarks/kevsr.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python benchmarks/kevsr.py` puts benchmarks/ first on sys.path, where this file would shadow the kevsr package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from kevsr.models import KEVSRConfig  # noqa: E402
from kevsr.module import KEVSRModule  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402


def make_batch(cfg: KEVSRConfig, b: int, device: torch.device, g: torch.Generator) -> dict[str, torch.Tensor]:
    t, r, k = cfg.num_frames, cfg.num_regions, cfg.num_keywords
    batch = {
        "f2d": torch.randn(b, t, cfg.f2d_dim, generator=g),
        "f3d": torch.randn(b, t, cfg.f3d_dim, generator=g),
        "text": torch.randn(b, cfg.text_dim, generator=g),
        "regions": torch.randn(b, t, r, cfg.region_dim, generator=g),
        "region_mask": torch.rand(b, t, r, generator=g) < 0.8,
        "keywords": torch.randn(b, k, cfg.kg_dim, generator=g),
        "keyword_mask": torch.rand(b, k, generator=g) < 0.7,
        "target1": (torch.rand(b, cfg.num_level1, generator=g) < 0.2).float(),
        "target2": (torch.rand(b, cfg.num_level2, generator=g) < 0.01).float(),
    }
    return {key: v.to(device) for key, v in batch.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    a = p.parse_args()
    device = pick_device(a.device)
    if device.type == "cuda":
        cfg, b, iters, warmup = KEVSRConfig(), 32, 20, 5
    else:
        cfg = KEVSRConfig(
            dim=64,
            f2d_dim=64,
            f3d_dim=32,
            text_dim=48,
            region_dim=64,
            kg_dim=32,
            num_frames=6,
            num_regions=5,
            num_keywords=5,
            num_level1=3,
            num_level2=20,
            temporal_heads=4,
            region_heads=4,
        )
        b, iters, warmup = 8, 3, 1
    g = torch.Generator().manual_seed(0)
    batch = make_batch(cfg, b, device, g)
    for streams in ("both", "nontemporal"):
        module = KEVSRModule(cfg, streams=streams).to(device).train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step(module=module, opt=opt) -> None:
            loss = module.compute_losses(batch)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        emit(
            {
                "bench": "kevsr",
                "case": f"train_step_{streams}",
                "batch": b,
                "dim": cfg.dim,
                **measure(step, b, device, warmup=warmup, iters=iters),
            }
        )
    module = KEVSRModule(cfg, streams="temporal").to(device).eval()

    @torch.no_grad()
    def infer() -> None:
        module.model.forward_temporal(batch)

    emit(
        {
            "bench": "kevsr",
            "case": "inference_temporal_stream",
            "batch": b,
            "dim": cfg.dim,
            **measure(infer, b, device, warmup=warmup, iters=iters),
        }
    )


if __name__ == "__main__":
    main()
