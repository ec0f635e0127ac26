"""SNP-S3 benchmark: pre-training step (all six losses), retrieval fine-tuning step, level-2 cross-encoder pairs/s.

Paper size on CUDA (random bert-base-sized BERT, VideoSwin VIOLET layout, 224x224, T=4 pre-training / T=16
fine-tuning, per-GPU batch 16 / 4 = the official global 128 / 32 over 8 GPUs); a tiny model on CPU (< 2 min).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

# `python benchmarks/snps3.py` puts benchmarks/ first on sys.path, where this file would shadow the snps3 package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402
from snps3.models import SNPS3Config  # noqa: E402
from snps3.module import SNPS3Module  # noqa: E402


def make_config(paper: bool) -> SNPS3Config:
    if paper:
        return SNPS3Config(bert=None, visual_encoder="video_swin")  # bert-base sizes, VideoSwin (random weights)
    return SNPS3Config(
        bert=None,
        vocab_size=512,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        visual_encoder="tiny_cnn",
    )


def make_batch(b: int, t: int, size: int, length: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 2000 else 104, vocab, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = torch.full_like(ids, -1)
    labels[:, 2] = ids[:, 2]
    mids = ids.clone()
    mids[:, 2] = 103
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mlm_input_ids": mids,
        "mlm_labels": labels,
        "neg_input_ids": ids.roll(1, 0),
        "neg_attention_mask": torch.ones_like(ids),
        "word_significant": torch.zeros_like(ids, dtype=torch.bool).index_fill_(1, torch.tensor([2, 3]), True),
        "frames": torch.randn(b, t, 3, size, size, generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def make_step(module: SNPS3Module, opt: torch.optim.Optimizer, batch: dict, task: str, autocast):
    """One optimisation step of ``task`` on a fixed batch."""

    def step() -> None:
        with autocast:
            terms = (
                module.pretrain_losses(batch, True)[0] if task == "pretrain" else module.retrieval_losses(batch, True)
            )
            loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    device = pick_device()
    paper = device.type == "cuda"
    cfg = make_config(paper)
    size, length = (224, 30) if paper else (64, 16)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=paper)
    for case, task, b, t in (
        ("pretrain_step", "pretrain", 16 if paper else 8, 4 if paper else 2),
        ("retrieval_step", "retrieval", 4 if paper else 8, 16 if paper else 4),
    ):
        random.seed(0)
        module = SNPS3Module(cfg, task=task, moco_queue_size=16384 if paper else 256).to(device)
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        batch = make_batch(b, t, size, length, module.model.vocab_size, device)

        step = make_step(module, opt, batch, task, autocast)
        emit(
            {
                "bench": "snps3",
                "case": case,
                "batch": b,
                "frames": t,
                "size": size,
                **measure(step, items_per_call=b, device=device, warmup=2, iters=5 if paper else 3),
            }
        )
        del module, opt, step
    module = SNPS3Module(cfg, task="retrieval", with_moco=False).to(device).eval()
    pairs = 256 if paper else 64
    ids = make_batch(pairs, 1, 32, length, module.model.vocab_size, device)["input_ids"]
    visual = torch.randn(pairs, 16 if paper else 4, module.model.hidden_size, device=device)

    @torch.no_grad()
    def level2():
        with autocast:
            module.model.sim_score(module.model.cross(ids, torch.ones_like(ids), visual).pooled)

    emit(
        {
            "bench": "snps3",
            "case": "level2_pairs",
            "batch": pairs,
            **measure(level2, items_per_call=pairs, device=device, warmup=2, iters=5),
        }
    )


if __name__ == "__main__":
    main()
