"""Spec §8c in miniature: does syntax guidance help when the evidence is localised in one cell and some frames?

A tiny CLIP is trained from scratch on the digits task (shenet.synthetic) with identical budgets for
(i) full SHE-Net, (ii) no syntax-guided similarity (S = S1, with the text-conditioned video feature of
``sentence_guidance`` so that the guided visual representation remains; without it this row would equal (iv)),
(iii) no syntax-guided visual representation, (iv) both off (CLIP4Clip meanP); 3 seeds each. Evaluation: text→video
R@1 on a held-out gallery of 200 videos (50 groups of 4 hard negatives differing in one of digit / adjective /
action; digit images disjoint from training). Gate: mean test R@1 of (i) exceeds (iv) by at least GATE points (the
spec's suggested margin, fixed before any run).

Also recorded (never used to choose anything on the test split): the group accuracy (is the caption's own video
ranked first among its group of 4; chance 25), the same metrics on the separate val gallery (used to pick the step
budget), the R@1 on 200 training videos (does the model fit its training data), and the oracle R@1 of each
gallery: many gallery videos satisfy a caption (a distractor cell of another video can show exactly the captioned
digit, attribute and action), so even a perfect matcher that breaks ties at random gets only ~17 test R@1, ~11 if
it cannot see frame order (appears / vanishes differ only in order, and both meanP and the softmax pooling of spec
§3.5 are frame-order invariant).

CLIP's 49408-row token embedding stays at its random initialisation in every variant (``--train_token_embedding``
trains it): its dense optimiser step cost more CPU time than the rest of the model, and the task uses ~20 words.

Results: packages/shenet/repro_results.json.

    python packages/shenet/repro.py [--steps 300] [--seeds 0 1 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
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
from shenet.synthetic import make_split, oracle_recall_at_1
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


def group_accuracy(scores: torch.Tensor) -> float:
    """Percent of queries whose own video scores highest within its group of 4 (the video and its three hard
    negatives, consecutive in the gallery; chance 25)."""
    n = scores.shape[0] // 4 * 4
    g = scores[:n, :n].reshape(n // 4, 4, n // 4, 4)
    within = g[torch.arange(n // 4), :, torch.arange(n // 4), :]  # (groups, 4 queries, 4 videos)
    return float((within.argmax(-1) == torch.arange(4)).float().mean() * 100)


@torch.no_grad()
def evaluate(model, dataset, collate, groups: bool) -> dict[str, float]:
    """t2v R@1/R@5 of caption i against all videos (caption i belongs to video i), and the group accuracy."""
    model.eval()
    b = collate([dataset[i] for i in range(len(dataset))])
    text = model.encode_text(b)
    video = model.encode_video(b["video"], b["video_mask"])
    scores = model.similarity_matrix(text, video, text_chunk=50, video_chunk=len(dataset))
    m = retrieval_metrics(scores, torch.arange(len(dataset)))
    out = {"R@1": float(m["t2v_R@1"]), "R@5": float(m["t2v_R@5"])}
    if groups:
        out["group_acc"] = group_accuracy(scores)
    return out


@functools.lru_cache(maxsize=1)
def train_data(seed: int, num_train: int):
    """Training videos of one seed and the first 200 of them as a train-set probe."""
    train = DigitsDataset("train", num_train, seed=seed, image_size=32)
    return train, torch.utils.data.Subset(train, range(min(200, num_train)))


@functools.lru_cache(maxsize=1)
def galleries():
    """The fixed val and test galleries (the same for every run)."""
    return DigitsDataset("val", 200, seed=0, image_size=32), DigitsDataset("test", 200, seed=0, image_size=32)


def run(task: tuple[str, int, argparse.Namespace]) -> tuple[str, int, dict]:
    """Train one variant with one seed; returns its test, val and train-probe metrics."""
    variant, seed, args = task
    torch.set_num_threads(args.threads)
    t0 = time.time()
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    collate = RetrievalCollate(enc)
    train, probe = train_data(seed, args.num_train)
    val, test = galleries()
    torch.manual_seed(seed)
    model = SHENet(SHENetConfig(**TINY, **VARIANTS[variant]))
    if not args.train_token_embedding:
        model.clip.token_embedding.requires_grad_(False)  # see the module docstring
    loss_fn = SHENetContrastiveLoss()
    opt = BertAdam(param_groups(model.named_parameters(), args.lr, 1.0, 0.0), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, args.steps, 0.1))
    model.train()
    losses = []
    for batch in batches(train, collate, args.batch_size, args.steps, seed):
        text = model.encode_text(batch)
        video = model.encode_video(batch["video"], batch["video_mask"])
        loss = loss_fn(text, video, model.similarity, model.logit_scale)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    out = {"test": evaluate(model, test, collate, True), "val": evaluate(model, val, collate, True),
           "train_probe": evaluate(model, probe, collate, False),
           "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(time.time() - t0, 1)}
    return variant, seed, out


def summary(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num_train", type=int, default=2048)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--train_token_embedding", action="store_true",
                    help="also train CLIP's 49408-row token embedding (slow on a CPU)")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "repro_results.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    tasks = [(v, s, args) for s in args.seeds for v in args.variants]  # seed-major: each worker reuses its data
    per_run: dict[str, dict[int, dict]] = {v: {} for v in args.variants}
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    for variant, seed, out in (pool.imap_unordered(run, tasks) if pool else map(run, tasks)):
        per_run[variant][seed] = out
        print(f"{variant} seed {seed}: test t2v R@1 {out['test']['R@1']:.1f} (group acc {out['test']['group_acc']:.1f})"
              f", val R@1 {out['val']['R@1']:.1f}, train-probe R@1 {out['train_probe']['R@1']:.1f}, "
              f"loss {out['final_loss']:.3f}  ({time.time() - t0:.0f} s)", flush=True)
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(per_run, indent=1))  # survives a kill
    if pool:
        pool.close()
        pool.join()
    test_specs = make_split("test", 200, 0)
    val_specs = make_split("val", 200, 0)
    results: dict[str, dict] = {
        "ceiling": {  # properties of the galleries, not of any model
            "test_oracle_R@1": oracle_recall_at_1(test_specs),
            "test_oracle_R@1_order_blind": oracle_recall_at_1(test_specs, order_blind=True),
            "val_oracle_R@1": oracle_recall_at_1(val_specs),
            "val_oracle_R@1_order_blind": oracle_recall_at_1(val_specs, order_blind=True),
            "chance_R@1": 100 / 200, "chance_group_acc": 25.0},
    }
    for variant, runs in per_run.items():
        seeds = sorted(runs)
        results[variant] = {
            "seeds": seeds,
            "t2v_R@1": [runs[s]["test"]["R@1"] for s in seeds],  # the gate's numbers
            "mean": statistics.mean(runs[s]["test"]["R@1"] for s in seeds),
            "std": statistics.stdev(runs[s]["test"]["R@1"] for s in seeds) if len(seeds) > 1 else 0.0,
            "test_R@5": summary([runs[s]["test"]["R@5"] for s in seeds]),
            "test_group_acc": summary([runs[s]["test"]["group_acc"] for s in seeds]),
            "val_R@1": summary([runs[s]["val"]["R@1"] for s in seeds]),
            "val_group_acc": summary([runs[s]["val"]["group_acc"] for s in seeds]),
            "train_probe_R@1": summary([runs[s]["train_probe"]["R@1"] for s in seeds]),
            "final_train_loss": summary([runs[s]["final_loss"] for s in seeds]),
        }
    passed = None
    if "full" in per_run and "meanP_baseline" in per_run:
        margin = results["full"]["mean"] - results["meanP_baseline"]["mean"]
        passed = margin >= GATE
        results["gate"] = {"full_minus_meanP": margin, "required": GATE, "passed": passed}
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results["settings"] = settings | {"model": TINY, "seconds": round(time.time() - t0, 1),
                                      "command": "python packages/shenet/repro.py " + " ".join(argv or sys.argv[1:])}
    Path(args.out).write_text(json.dumps(results, indent=1))
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    c = results["ceiling"]
    print(f"test gallery: chance R@1 0.5, oracle R@1 {c['test_oracle_R@1']:.1f} "
          f"({c['test_oracle_R@1_order_blind']:.1f} for frame-order-blind models)")
    for k in per_run:
        v = results[k]
        print(f"{k:24s} test t2v R@1 {v['mean']:.1f} ± {v['std']:.1f}   group acc {v['test_group_acc']['mean']:.1f}"
              f"   train-probe R@1 {v['train_probe_R@1']['mean']:.1f}")
    if passed is not None:
        print(f"gate: full - meanP = {results['gate']['full_minus_meanP']:.1f} (>= {GATE}): "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
