"""SHE-Net cost: training step (encode + pairwise syntax-guided similarity + loss + backward) and evaluation
similarity (chunked, texts × videos), for the full model and the meanP baseline.

On CUDA: CLIP ViT-B/32 size (random weights; timing does not depend on them), 12 frames of 224², 32-token captions
with 4 verb / 8 noun / 8 adjective slots, training batch 128 (spec §3.10) under bf16 autocast, evaluation of 1000
texts × 1000 videos (MSR-VTT 1k-A size). On CPU: a tiny CLIP, 4 frames of 32², batch 8, 64 × 64 evaluation.

    python benchmarks/shenet.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

# `python benchmarks/shenet.py` puts benchmarks/ first on sys.path, where this file would shadow the shenet package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402
from shenet.losses import SHENetContrastiveLoss  # noqa: E402
from shenet.models import SHENet, SHENetConfig, TextFeatures, VideoFeatures  # noqa: E402


def text_batch(B: int, L: int, device, g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 49000, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 49406, 49407

    def pool(n):
        return torch.softmax(torch.randn(B, n, L, generator=g), -1)

    batch = {
        "text_input_ids": ids,
        "text_verb_pool": pool(4),
        "text_noun_pool": pool(8),
        "text_adj_pool": pool(8),
        "text_verb_mask": torch.rand(B, 4, generator=g) > 0.5,
        "text_noun_mask": torch.rand(B, 8, generator=g) > 0.4,
        "text_adj_mask": torch.rand(B, 8, generator=g) > 0.6,
        "text_noun_parent": torch.randint(-1, 4, (B, 8), generator=g),
        "text_adj_parent": torch.randint(-1, 8, (B, 8), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    a = p.parse_args()
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    if cuda:
        base = dict(clip_model="ViT-B-32", random_init=True, max_frames=12)
        B, T, S, L, N_eval, warmup, iters = 128, 12, 224, 32, 1000, 2, 5
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        torch.set_num_threads(1)
        base = dict(clip_model="custom", random_init=True, max_frames=4)
        B, T, S, L, N_eval, warmup, iters = 8, 4, 32, 16, 64, 1, 3
        autocast = contextlib.nullcontext()
    for case, switches in (("full", {}), ("meanP", dict(guide_visual=False, guide_similarity=False))):
        bench_case(case, SHENetConfig(**base, **switches), device, B, T, S, L, N_eval, warmup, iters, autocast, g)
        if cuda:
            torch.cuda.empty_cache()


def bench_case(case, config, device, B, T, S, L, N_eval, warmup, iters, autocast, g) -> None:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = SHENet(config).to(device)
    loss_fn = SHENetContrastiveLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    batch = text_batch(B, L, device, g)
    video = torch.randn(B, T, 3, S, S, generator=g).to(device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)

    def train_step():
        with autocast:
            t = model.encode_text(batch)
            v = model.encode_video(video, mask)
            loss = loss_fn(t, v, model.similarity, model.logit_scale)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    emit({"bench": "shenet", "case": f"train_step_{case}", "batch": B, **measure(train_step, B, device, warmup, iters)})

    # evaluation: random unit features of the right sizes (encoding cost is the train step's forward)
    D, P = model.embed_dim, (S // (32 if cuda else 16)) ** 2

    def n(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1).half()

    text = TextFeatures(
        n(N_eval, D),
        n(N_eval, 4, D),
        n(N_eval, 8, D),
        n(N_eval, 4, D),
        n(N_eval, 8, D),
        torch.rand(N_eval, 4, generator=g) > 0.5,
        torch.rand(N_eval, 8, generator=g) > 0.4,
        torch.randint(-1, 4, (N_eval, 8), generator=g),
    )
    vids = VideoFeatures(n(N_eval, D), n(N_eval, T, D), n(N_eval, T, P, D), torch.ones(N_eval, T, dtype=torch.bool))
    model.eval()

    def evaluate():
        with autocast:
            model.similarity_matrix(text, vids, text_chunk=32, video_chunk=256 if cuda else 64, device=device)

    emit(
        {
            "bench": "shenet",
            "case": f"eval_similarity_{case}",
            "batch": N_eval,
            **measure(evaluate, N_eval, device, 1, 2 if cuda else 1),
        }
    )


if __name__ == "__main__":
    main()
