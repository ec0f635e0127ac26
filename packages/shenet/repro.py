"""Spec §8c in miniature: does syntax guidance help when the evidence is localised in one cell and some frames?

A tiny CLIP is trained from scratch on the digits task (shenet.synthetic) with identical budgets for
(i) full SHE-Net, (ii) no syntax-guided similarity (S = S1, with the text-conditioned video feature of
``sentence_guidance`` so that the guided visual representation remains), (iii) no syntax-guided visual
representation, (iv) both off (CLIP4Clip meanP); 3 seeds each. Evaluation: text→video R@1 on a held-out gallery of
200 videos (50 groups of 4 hard negatives differing in one of digit / adjective / action; digit images disjoint from
training). Gate: mean R@1 of (i) exceeds (iv) by at least GATE points (the spec's suggested margin, fixed before any
run). Results: packages/shenet/repro_results.json.

    python packages/shenet/repro.py [--steps 300] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from shenet.data import DigitsDataset, RetrievalCollate
from shenet.hierarchy import ParserConfig, build_parser
from shenet.losses import SHENetContrastiveLoss
from shenet.metrics import retrieval_metrics
from shenet.models import SHENet, SHENetConfig
from shenet.optim import BertAdam, param_groups, warmup_cosine
from shenet.tokenization import TextEncoder

GATE = 5.0
VARIANTS = {
    "full": dict(guide_visual=True, guide_similarity=True),
    "no_guided_similarity": dict(guide_visual=True, guide_similarity=False, sentence_guidance=True),
    "no_guided_visual": dict(guide_visual=False, guide_similarity=True),
    "meanP_baseline": dict(guide_visual=False, guide_similarity=False),
}
TINY = dict(clip_model="custom", random_init=True, custom_embed_dim=32, custom_image_size=32, custom_patch_size=16,
            custom_vision_width=64, custom_vision_layers=2, custom_vision_head_width=32, custom_text_width=64,
            custom_text_layers=2, custom_text_heads=2, custom_context_length=32, max_frames=4, tau_frame=0.05,
            tau_patch=0.05)


def batches(dataset, collate, batch_size, steps, seed):
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(len(dataset), generator=g).tolist()
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([dataset[i] for i in order[s:s + batch_size]])
            done += 1
            if done == steps:
                return


def run(variant: str, seed: int, train, test, collate, args) -> float:
    torch.manual_seed(seed)
    model = SHENet(SHENetConfig(**TINY, **VARIANTS[variant]))
    loss_fn = SHENetContrastiveLoss()
    opt = BertAdam(param_groups(model.named_parameters(), args.lr, 1.0, 0.0), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, args.steps, 0.1))
    model.train()
    for batch in batches(train, collate, args.batch_size, args.steps, seed):
        text = model.encode_text(batch)
        video = model.encode_video(batch["video"], batch["video_mask"])
        loss = loss_fn(text, video, model.similarity, model.logit_scale)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        b = collate([test[i] for i in range(len(test))])  # caption i belongs to video i
        text = model.encode_text(b)
        video = model.encode_video(b["video"], b["video_mask"])
        scores = model.similarity_matrix(text, video, text_chunk=50, video_chunk=200)
    return float(retrieval_metrics(scores, torch.arange(len(test)))["t2v_R@1"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num_train", type=int, default=2048)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "repro_results.json"))
    args = ap.parse_args(argv)
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    collate = RetrievalCollate(enc)
    results: dict[str, dict] = {}
    t0 = time.time()
    for variant in args.variants:
        r1 = []
        for seed in args.seeds:
            train = DigitsDataset("train", args.num_train, seed=seed, image_size=32)
            test = DigitsDataset("test", 200, seed=0, image_size=32)  # the same held-out gallery for every run
            r1.append(run(variant, seed, train, test, collate, args))
            print(f"{variant} seed {seed}: t2v R@1 = {r1[-1]:.1f}  ({time.time() - t0:.0f} s)", flush=True)
        results[variant] = {"t2v_R@1": r1, "mean": statistics.mean(r1),
                            "std": statistics.stdev(r1) if len(r1) > 1 else 0.0}
    passed = None
    if "full" in results and "meanP_baseline" in results:
        margin = results["full"]["mean"] - results["meanP_baseline"]["mean"]
        passed = margin >= GATE
        results["gate"] = {"full_minus_meanP": margin, "required": GATE, "passed": passed}
    results["settings"] = vars(args) | {"model": TINY, "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(results, indent=1))
    for k, v in results.items():
        if "mean" in v:
            print(f"{k:24s} t2v R@1 {v['mean']:.1f} ± {v['std']:.1f}")
    if passed is not None:
        print(f"gate: full - meanP = {results['gate']['full_minus_meanP']:.1f} (>= {GATE}): "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
