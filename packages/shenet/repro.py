"""Spec §8c in miniature: does syntax guidance help when the evidence is localised in one cell and some frames?

A tiny CLIP is trained from scratch on the digits task (shenet.synthetic) with identical budgets for
(i) full SHE-Net, (ii) no syntax-guided similarity (S = S1, with the text-conditioned video feature of
``sentence_guidance`` so that the guided visual representation remains; without it this row would equal (iv)),
(iii) no syntax-guided visual representation, (iv) both off (CLIP4Clip meanP); 3 seeds each. Evaluation: text→video
R@1 on a held-out gallery of 200 videos (50 groups of 4 hard negatives differing in one of digit / adjective /
action; digit images disjoint from training). Gate: mean test R@1 of (i) exceeds (iv) by at least GATE points (the
spec's suggested margin, fixed before any run).

Protocol (fixed before the confirmation run on seeds 100-102, see README "Miniature reproduction"): each run trains
for at most ``--steps`` = 600 steps (the warm-up + cosine schedule spans them), scores the separate val gallery every
``--eval_every`` = 50 steps, and keeps the checkpoint with the best val R@1 (ties: val group accuracy, then the
earliest step). Only that checkpoint is scored on the test gallery and enters the gate; the last step's test numbers
are recorded beside it (``test_last_*``) for comparison and are never used to choose anything. ``--skip_test`` runs
never touch the test gallery (the diagnostic runs of the README).

Also recorded: the group accuracy (is the caption's own video ranked first among its group of 4; chance 25), the
R@1 on 200 training videos at the chosen checkpoint (does the model fit its training data), and the oracle R@1 of
each gallery: many gallery videos satisfy a caption (a distractor cell of another video can show exactly the
captioned digit, attribute and action), so even a perfect matcher that breaks ties at random gets only ~17 test
R@1, ~11 if it cannot see frame order (appears / vanishes differ only in order, and both meanP and the softmax
pooling of spec §3.5 are frame-order invariant). Per run, ``curves`` holds every val evaluation together with the
training diagnostics averaged since the previous one: loss, logit scale, the gradient norm reaching each feature
level (sentence, verb and noun nodes, video, frame and patch features) and each tower, and each similarity level's
batch margin (mean positive minus mean negative score). The curves go to ``<out>_curves.json`` beside the results.

CLIP's 49408-row token embedding stays at its random initialisation in every variant (``--train_token_embedding``
trains it): its dense optimiser step cost more CPU time than the rest of the model, and the task uses ~20 words.

Results: packages/shenet/repro_results.json. ``--device cuda`` runs the same protocol on a GPU.

    python packages/shenet/repro.py [--steps 600] [--eval_every 50] [--seeds 100 101 102] [--workers 2]
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
TINY = dict(
    clip_model="custom",
    random_init=True,
    custom_embed_dim=32,
    custom_image_size=32,
    custom_patch_size=16,
    custom_vision_width=64,
    custom_vision_layers=2,
    custom_vision_head_width=32,
    custom_text_width=64,
    custom_text_layers=2,
    custom_text_heads=2,
    custom_context_length=32,
    max_frames=4,
    tau_frame=0.05,
    tau_patch=0.05,
)


def batches(dataset, collate, batch_size, steps, seed):
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(len(dataset), generator=g).tolist()
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([dataset[i] for i in order[s : s + batch_size]])
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


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, dataset, collate, groups: bool) -> dict[str, float]:
    """t2v R@1/R@5 of caption i against all videos (caption i belongs to video i), and the group accuracy."""
    model.eval()
    b = to_device(collate([dataset[i] for i in range(len(dataset))]), next(model.parameters()).device)
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


def _norm(t: torch.Tensor | None) -> float:
    return 0.0 if t is None or t.grad is None else float(t.grad.norm())


BRANCHES = {  # parameter-name prefixes of the towers, for the gradient diagnostics
    "visual": ("clip.visual.",),
    "text": ("clip.transformer.", "clip.ln_final.", "clip.text_projection", "clip.positional_embedding"),
    "logit_scale": ("clip.logit_scale",),
}


def train_step(model, loss_fn, batch, opt) -> dict[str, float]:
    """One optimiser step; returns the loss and the diagnostics of spec §8c's bug hunt: gradient norms reaching each
    feature level (sentence, verb and noun nodes; video, frame and patch features) and each tower, and the batch
    margin (mean diagonal minus mean off-diagonal) of every similarity level."""
    text = model.encode_text(batch)
    video = model.encode_video(batch["video"], batch["video_mask"])
    for t in (text.sentence, text.verbs, text.nouns, video.video, video.frames, video.patches):
        t.retain_grad()
    loss = loss_fn(text, video, model.similarity, model.logit_scale)["loss"]
    opt.zero_grad()
    loss.backward()
    named = dict(model.named_parameters())
    d = {"loss": loss.item(), "logit_scale": float(model.logit_scale.detach())}
    for key, t in (
        ("sentence", text.sentence),
        ("verb_nodes", text.verbs),
        ("noun_nodes", text.nouns),
        ("video", video.video),
        ("frames", video.frames),
        ("patches", video.patches),
    ):
        d[f"grad_{key}"] = _norm(t)
    for branch, prefixes in BRANCHES.items():
        sq = [p.grad.pow(2).sum() for n, p in named.items() if n.startswith(prefixes) and p.grad is not None]
        d[f"grad_{branch}"] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    with torch.no_grad():
        levels = model.similarity(text, video)
        eye = torch.eye(len(text), dtype=torch.bool, device=text.sentence.device)
        for key, S in levels.items():
            d[f"margin_{key}"] = float(S[eye].mean() - S[~eye].mean())
    opt.step()
    return d


def run(task: tuple[str, int, argparse.Namespace]) -> tuple[str, int, dict]:
    """Train one variant with one seed for up to ``--steps`` steps, scoring the val gallery every ``--eval_every``
    steps; the checkpoint with the best val R@1 (ties: best val group accuracy, then the earliest) is the run's result
    and the only one scored on the test gallery (plus the last step's, recorded for the history in the README)."""
    variant, seed, args = task
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.time()
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    collate = RetrievalCollate(enc)
    train, probe = train_data(seed, args.num_train)
    val, test = galleries()
    torch.manual_seed(seed)
    model = SHENet(SHENetConfig(**TINY, **VARIANTS[variant])).to(device)
    if not args.train_token_embedding:
        model.clip.token_embedding.requires_grad_(False)  # see the module docstring
    loss_fn = SHENetContrastiveLoss()
    opt = BertAdam(param_groups(model.named_parameters(), args.lr, 1.0, 0.0), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, args.steps, 0.1))
    every = args.eval_every if args.eval_every > 0 else args.steps
    curve: list[dict] = []  # one entry per evaluation: step, val metrics, training diagnostics averaged since the last
    window: list[dict] = []
    best, best_key, best_state = None, None, None
    model.train()
    for step, batch in enumerate(batches(train, collate, args.batch_size, args.steps, seed), start=1):
        window.append(train_step(model, loss_fn, to_device(batch, device), opt))
        sched.step()
        if step % every == 0 or step == args.steps:
            point = {"step": step, **{k: statistics.mean(w[k] for w in window) for k in window[0]}}
            point["val"] = evaluate(model, val, collate, True)
            curve.append(point)
            window = []
            key = (point["val"]["R@1"], point["val"]["group_acc"])
            if best_key is None or key > best_key:
                best, best_key = step, key
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.train()
    out = {
        "final_loss": curve[-1]["loss"],
        "last_step": args.steps,
        "best_step": best,
        "val": next(c["val"] for c in curve if c["step"] == best),
        "curve": curve,
    }
    if not args.skip_test:
        out["test_last"] = evaluate(model, test, collate, True)
    model.load_state_dict(best_state)
    if not args.skip_test:
        out["test"] = evaluate(model, test, collate, True)
    out["train_probe"] = evaluate(model, probe, collate, False)
    out["seconds"] = round(time.time() - t0, 1)
    return variant, seed, out


def summary(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="maximum training steps (the lr schedule's length)")
    ap.add_argument(
        "--eval_every",
        type=int,
        default=50,
        help="score the val gallery every k steps and keep the best val checkpoint (0: last step only)",
    )
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--num_train", type=int, default=2048)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--train_token_embedding",
        action="store_true",
        help="also train CLIP's 49408-row token embedding (slow on a CPU)",
    )
    ap.add_argument(
        "--skip_test",
        action="store_true",
        help="diagnostic runs: never score the test gallery (val, train probe and curves only)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "repro_results.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    tasks = [(v, s, args) for s in args.seeds for v in args.variants]  # seed-major: each worker reuses its data
    per_run: dict[str, dict[int, dict]] = {v: {} for v in args.variants}
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    for variant, seed, out in pool.imap_unordered(run, tasks) if pool else map(run, tasks):
        per_run[variant][seed] = out
        test = (
            ""
            if args.skip_test
            else (f"test t2v R@1 {out['test']['R@1']:.1f} (group acc {out['test']['group_acc']:.1f}), ")
        )
        print(
            f"{variant} seed {seed}: best val step {out['best_step']}: {test}val R@1 {out['val']['R@1']:.1f} "
            f"(group acc {out['val']['group_acc']:.1f}), train-probe R@1 {out['train_probe']['R@1']:.1f}, "
            f"final loss {out['final_loss']:.3f}  ({time.time() - t0:.0f} s)",
            flush=True,
        )
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(per_run, indent=1))  # survives a kill
    if pool:
        pool.close()
        pool.join()
    test_specs = make_split("test", 200, 0)
    val_specs = make_split("val", 200, 0)
    results: dict[str, dict] = {
        "protocol": (
            f"train up to {args.steps} steps, score the val gallery every {args.eval_every} steps, report "
            "the test metrics of the checkpoint with the best val R@1 (ties: val group accuracy, then the "
            "earliest step); test_last_* are the last step's, recorded for comparison only"
        ),
        "ceiling": {  # properties of the galleries, not of any model
            "test_oracle_R@1": oracle_recall_at_1(test_specs),
            "test_oracle_R@1_order_blind": oracle_recall_at_1(test_specs, order_blind=True),
            "val_oracle_R@1": oracle_recall_at_1(val_specs),
            "val_oracle_R@1_order_blind": oracle_recall_at_1(val_specs, order_blind=True),
            "chance_R@1": 100 / 200,
            "chance_group_acc": 25.0,
        },
    }
    for variant, runs in per_run.items():
        seeds = sorted(runs)
        r: dict = {"seeds": seeds}
        if not args.skip_test:
            r |= {
                "t2v_R@1": [runs[s]["test"]["R@1"] for s in seeds],  # the gate's numbers
                "mean": statistics.mean(runs[s]["test"]["R@1"] for s in seeds),
                "std": statistics.stdev(runs[s]["test"]["R@1"] for s in seeds) if len(seeds) > 1 else 0.0,
                "test_R@5": summary([runs[s]["test"]["R@5"] for s in seeds]),
                "test_group_acc": summary([runs[s]["test"]["group_acc"] for s in seeds]),
                "test_last_R@1": summary([runs[s]["test_last"]["R@1"] for s in seeds]),
                "test_last_group_acc": summary([runs[s]["test_last"]["group_acc"] for s in seeds]),
            }
        r |= {
            "best_val_step": [runs[s]["best_step"] for s in seeds],
            "val_R@1": summary([runs[s]["val"]["R@1"] for s in seeds]),
            "val_group_acc": summary([runs[s]["val"]["group_acc"] for s in seeds]),
            "train_probe_R@1": summary([runs[s]["train_probe"]["R@1"] for s in seeds]),
            "final_train_loss": summary([runs[s]["final_loss"] for s in seeds]),
            "curves": {s: runs[s]["curve"] for s in seeds},
        }
        results[variant] = r
    passed = None
    if "full" in per_run and "meanP_baseline" in per_run and not args.skip_test:
        margin = results["full"]["mean"] - results["meanP_baseline"]["mean"]
        passed = margin >= GATE
        results["gate"] = {"full_minus_meanP": margin, "required": GATE, "passed": passed}
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results["settings"] = settings | {
        "model": TINY,
        "seconds": round(time.time() - t0, 1),
        "command": "python packages/shenet/repro.py " + " ".join(argv or sys.argv[1:]),
    }
    # the per-run curves go to a compact side file so the results file stays readable
    curves_path = Path(args.out).with_name(Path(args.out).stem + "_curves.json")
    curves = {k: results[k].pop("curves") for k in per_run}
    curves_path.write_text(json.dumps(curves, separators=(",", ":")))
    results["curves_file"] = curves_path.name
    Path(args.out).write_text(json.dumps(results, indent=1))
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)
    c = results["ceiling"]
    print(
        f"test gallery: chance R@1 0.5, oracle R@1 {c['test_oracle_R@1']:.1f} "
        f"({c['test_oracle_R@1_order_blind']:.1f} for frame-order-blind models)"
    )
    for k in per_run:
        v = results[k]
        test = (
            ""
            if args.skip_test
            else (f"test t2v R@1 {v['mean']:.1f} ± {v['std']:.1f}   group acc {v['test_group_acc']['mean']:.1f}   ")
        )
        print(
            f"{k:24s} {test}val R@1 {v['val_R@1']['mean']:.1f}   train-probe R@1 {v['train_probe_R@1']['mean']:.1f}"
            f"   best val steps {v['best_val_step']}"
        )
    if passed is not None:
        print(
            f"gate: full - meanP = {results['gate']['full_minus_meanP']:.1f} (>= {GATE}): "
            f"{'PASS' if passed else 'FAIL'}"
        )
    return 0 if passed in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
