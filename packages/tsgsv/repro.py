"""Spec §8c in miniature: does long-range, query-specific memory (the compressed long memory) and the TwinNet help?

Synthetic streaming task (tsgsv.synthetic, spec §8c): K = 8 event classes; only the first 2 frames of an event
are class-specific (onset), the rest is a shared "ongoing activity" pattern, so deciding p_sem deep inside an
event needs the onset seen up to 50 frames earlier — beyond the short memory M_s = 8 — among distractor onsets.

Variants (h = 64, M_s = 8, M_l = M_f = 64, 300 train / 102 test annotations):
  full         language-guided compressor [16, 16] + TwinNet (KD, λ = 0.2)
  short_only   ablation A: no long memory (one learned null token), no twin
  no_twin      full without the twin branch (λ = 0, no twin loss)
  full_2tok    language-guided compressor 64 → 2 tokens + twin
  tokenlearner ablation B: query-agnostic TokenLearner 64 → 2 tokens + twin

Diagnostics (not run by default, never part of the gate):
  no_compressor  full with compressor "none": the decoder cross-attends to all M_l frames
  oracle_memory  no twin; the long memory is replaced by one hand-made token, the latest onset frame in it

Gate (asserted): mcAP(full) ≥ mcAP(short_only) + 0.05 and R@1,IoU=0.5(full) > R@1,IoU=0.5(short_only), on the
mean over seeds. full vs no_twin and full_2tok vs tokenlearner are reported, not asserted. mcAP uses ρ = 0 (strict
moment). Nothing is tuned on the test split: the generator and the training recipe are fixed in this file.

    python packages/tsgsv/repro.py                 # 3 seeds, all variants -> packages/tsgsv/repro_results.json
    python packages/tsgsv/repro.py --variants full short_only            # the gate only -> repro_results_partial.json
    python packages/tsgsv/repro.py --seeds 0 --variants full short_only --eval-split val   # 1-seed diagnostic
    python packages/tsgsv/repro.py --oracle        # no training: what a window of 1 / 8 / 72 frames can reveal

The gate's two variants run first, seed by seed. While running, the results so far are rewritten after every run
into ``<out>.running.json``; ``repro_results.json`` is written only by a complete default run (every variant, seeds
0 1 2, 10 epochs, test split); any other selection writes ``repro_results_partial.json`` unless ``--out`` is given.
Every epoch line also prints the first compressor stage's selection entropy H(A)/ln(M_l) (1.0 = uniform selection,
i.e. each compressed token is the plain mean of the long memory) and its mean gates, measured on one training batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from tsgsv import module as tsgsv_module
from tsgsv.data import TSGVEvalDataset, TSGVTrainDataset
from tsgsv.metrics import GroundingEvalConfig, StreamingGroundingMetrics, calibrated_average_precision, frame_labels
from tsgsv.models import StreamingTSGV, TSGSVConfig
from tsgsv.module import TSGSVModule
from tsgsv.synthetic import SyntheticStreamConfig, synthetic_prototypes, write_synthetic_dataset

FILE = "synthetic_features_{split}.hdf5"
VARIANTS: dict[str, dict] = {
    "full": dict(compressor="language_guided", compressor_tokens=[16, 16], future_usage="twin"),
    "short_only": dict(use_long_memory=False, future_usage="none"),
    "no_twin": dict(compressor="language_guided", compressor_tokens=[16, 16], future_usage="none"),
    "full_2tok": dict(compressor="language_guided", compressor_tokens=[2], future_usage="twin"),
    "tokenlearner": dict(compressor="token_learner", compressor_tokens=[2], future_usage="twin"),
}
# Diagnostics (never in the default run, not part of the gate): is the compressor the bottleneck?
DIAGNOSTIC_VARIANTS: dict[str, dict] = {
    "no_compressor": dict(compressor="none", future_usage="twin"),  # decoder cross-attends to all M_l frames
    "oracle_memory": dict(compressor="none", future_usage="none"),  # see OracleMemoryTSGV
}


class OracleMemoryTSGV(StreamingTSGV):
    """Diagnostic model: a perfect, hand-made "compressor". The long memory is reduced to one token, the projected
    frame of the latest event onset in it (each raw frame labelled by its nearest generator prototype), or a zero
    token when it holds no onset. Everything else is the causal model (no twin)."""

    def __init__(self, config: TSGSVConfig, prototypes: torch.Tensor, num_onsets: int):
        super().__init__(config)
        self.register_buffer("prototypes", prototypes, persistent=False)  # (K + 2, d_v): o_1..o_K, a, b
        self.num_onsets = num_onsets
        self._latest: torch.Tensor | None = None

    def forward(self, short, short_mask, long, long_mask, *args, **kwargs):
        nearest = (long @ self.prototypes.T).argmax(-1)  # (B, M_l)
        onset = (nearest < self.num_onsets) & ~long_mask
        position = torch.arange(long.shape[1], device=long.device).expand_as(nearest)
        self._latest = torch.where(onset, position, torch.full_like(position, -1)).max(1).values  # (B,)
        return super().forward(short, short_mask, long, long_mask, *args, **kwargs)

    def compress(self, memory: torch.Tensor, query_tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(memory.shape[0], device=memory.device)
        token = memory[rows, self._latest.clamp(min=0)] * (self._latest >= 0).unsqueeze(-1).to(memory.dtype)
        return token.unsqueeze(1)  # (B, 1, h)


def window_oracle(root: Path, split: str, windows: list[int]) -> dict:
    """What a causal model seeing the last W frames can know (no training; needs ``events_<split>.json``).

    Per annotation and frame t: background -> 0; inside an event whose onset (first frame) is < W frames back -> 1 if
    it is the queried event else 0; deeper inside an event (onset out of sight, frames class-agnostic) -> 0.5.
    Returns mcAP (ρ = 0) per W and how far back the onset lies for the positive frames."""
    anns = json.loads((root / f"{split}.json").read_text())
    events = json.loads((root / f"events_{split}.json").read_text())
    caps: dict[int, list[float]] = {w: [] for w in windows}
    back: list[int] = []
    for video, item in anns.items():
        n, d = item["duration_frame"], item["duration"]
        for (ts, te) in item["timestamps"]:
            labels = frame_labels(ts, te, d, n, 0.0)
            first = round(ts / d * (n - 1))
            target = next(i for i, (a, _, _) in enumerate(events[video]) if a == first)
            for w in windows:
                scores = torch.zeros(n)
                for i, (a, b, _) in enumerate(events[video]):
                    t = torch.arange(a, b)
                    scores[a:b] = torch.where(t - a < w, torch.tensor(float(i == target)), torch.tensor(0.5))
                caps[w].append(calibrated_average_precision(scores, labels))
            a, b, _ = events[video][target]
            back += list(range(b - a))
    back_t = torch.tensor(back, dtype=torch.float32)
    return {
        "mcAP": {str(w): statistics.mean(v) for w, v in caps.items()},
        "positive_frames": len(back), "onset_back_mean": float(back_t.mean()),
        "onset_back_max": int(back_t.max()), "frac_onset_beyond_short_memory": float((back_t >= 8).float().mean()),
    }


@torch.no_grad()
def selection_stats(model, batch: dict[str, torch.Tensor]) -> str:
    """Entropy of the first compressor stage's selection maps over the M_l frames, as a fraction of ln(M_l) (1.0 =
    uniform: every token is the plain mean of the long memory), and the mean gates, on one training batch."""
    stage = model.compressors[0] if model.config.use_long_memory else None
    if stage is None or not hasattr(stage, "visual_mlp"):
        return ""
    was_training = model.training
    model.eval()
    query_tokens, _ = model.encode_sentence(batch["sentence"], batch["sentence_length"])
    x = model.pos(model.video_projection(batch["long"], batch["long_mask"]))
    sel = stage.selection(x, query_tokens) if hasattr(stage, "selection") else {
        "a_v": stage.visual_mlp(x).transpose(1, 2).softmax(-1)}  # fmt: skip
    model.train(was_training)

    def rel_entropy(a: torch.Tensor) -> float:
        return float(-(a.clamp_min(1e-12).log() * a).sum(-1).mean() / math.log(a.shape[-1]))

    out = f"  H(A_v)/lnT {rel_entropy(sel['a_v']):.3f}"
    if "a_q" in sel:
        out += f"  H(A_q)/lnT {rel_entropy(sel['a_q']):.3f}  g_v {float(sel['g_v'].mean()):+.3f}"
        out += f"  g_q {float(sel['g_q'].mean()):+.3f}"
    return out


@contextlib.contextmanager
def long_memory_zeroed():
    """Probe ``no_long``: inside this context the test windows of ``TSGSVModule.stream_scores`` get a zeroed long
    memory (the short memory is untouched)."""
    original = tsgsv_module.eval_windows

    def zeroed(video, times, short_memory, long_memory):
        w = original(video, times, short_memory, long_memory)
        w["long"] = torch.zeros_like(w["long"])
        return w

    tsgsv_module.eval_windows = zeroed
    try:
        yield
    finally:
        tsgsv_module.eval_windows = original


def run_variant(
    name: str, root: Path, seed: int, epochs: int, device: torch.device, split: str = "test",
    probes: tuple[str, ...] = (),
) -> dict[str, float]:
    torch.manual_seed(seed)
    cfg = TSGSVConfig(video_dim=32, text_dim=32, hidden_dim=64, ffn_dim=128, num_heads=4, dropout=0.1,
                      short_memory=8, long_memory=64, future_memory=64, gru_layers=1, gru_dropout=0.0,
                      num_decoder_layers=2, **{**VARIANTS, **DIAGNOSTIC_VARIANTS}[name])  # fmt: skip
    eval_cfg = GroundingEvalConfig(map_label_extension=0.0)
    module = TSGSVModule(cfg, eval_cfg, lr=1e-3, kd_weight=0.2, eval_window_batch=1024)
    if name == "oracle_memory":
        world = synthetic_prototypes(SyntheticStreamConfig(world_seed=1234 + seed))
        protos = torch.tensor(np.concatenate([world["onset"], world["activity"][None], world["background"][None]]))
        module.model = OracleMemoryTSGV(cfg, protos.float(), len(world["onset"]))
    module = module.to(device)
    train = TSGVTrainDataset(root, "train", FILE, short_memory=8, long_memory=64, future_memory=64, preload=True)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=5e-4)
    steps = epochs * ((len(train) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps + epochs, pct_start=0.1)
    use_future = cfg.future_usage == "twin"
    for epoch in range(epochs):
        module.train()
        train.rechunk(seed * 1000 + epoch)
        total, count = 0.0, 0
        order = torch.Generator().manual_seed(seed * 1000 + epoch)
        for batch in DataLoader(train, batch_size=64, shuffle=True, generator=order):
            b = {k: v.to(device) for k, v in batch.items()}
            out = module.model(b["short"], b["short_mask"], b["long"], b["long_mask"], b["sentence"],
                               b["sentence_length"], b["future"] if use_future else None,
                               b["future_mask"] if use_future else None)  # fmt: skip
            terms = module.loss(out, b["labels"], b["short_mask"])
            loss = terms["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 20.0)
            opt.step()
            sched.step()
            total, count = total + float(terms["loss_main"].detach()), count + 1
        print(f"  seed {seed} {name} epoch {epoch}: main-head train loss {total / max(count, 1):.4f}"
              + selection_stats(module.model, b), flush=True)  # fmt: skip
    module.eval()
    test = TSGVEvalDataset(root, split, FILE)

    def evaluate(probe: str | None = None) -> dict[str, float]:
        metric = StreamingGroundingMetrics(eval_cfg)
        for i in range(len(test)):
            item = test[i]
            if probe == "wrong_query":  # the next annotation's sentence: same video, another event and class
                other = test[(i + 1) % len(test)]
                item = {**item, "sentence": other["sentence"], "sentence_length": other["sentence_length"]}
            with long_memory_zeroed() if probe == "no_long" else contextlib.nullcontext():
                scores = module.stream_scores(item["video"].to(device), item["sentence"].to(device),
                                              item["sentence_length"].to(device))  # fmt: skip
            metric.update([scores.cpu()], [item["duration"]], [item["target"]], [item["num_frames"]])
        return {k: float(v) for k, v in metric.compute().items()}

    result = evaluate()
    for probe in probes:
        r = evaluate(probe)
        result.update({f"{probe}/{k}": v for k, v in r.items()})
        print(f"  seed {seed} {name} probe {probe}: mcAP {r['mcAP']:.4f}  R@1,IoU=0.5 {r['R@1,IoU=0.5']:.4f}"
              f"  (unprobed: {result['mcAP']:.4f}, {result['R@1,IoU=0.5']:.4f})", flush=True)  # fmt: skip
    return result


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict]:
    """Mean ± population std over seeds of the reported metrics, per variant (variants with no run are left out)."""
    summary = {}
    for v, rs in runs.items():
        if not rs:
            continue
        summary[v] = {}
        for key in ("mcAP", "mAP", "R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5"):
            vals = [r[key] for r in rs]
            summary[v][key] = {"mean": statistics.mean(vals), "std": statistics.pstdev(vals), "runs": vals}
    return summary


def gate_passed(summary: dict[str, dict]) -> bool | None:
    """The spec §8c gate on the means over seeds; None when full or short_only did not run."""
    if "full" not in summary or "short_only" not in summary:
        return None
    f, a = summary["full"], summary["short_only"]
    return bool(f["mcAP"]["mean"] >= a["mcAP"]["mean"] + 0.05 and f["R@1,IoU=0.5"]["mean"] > a["R@1,IoU=0.5"]["mean"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS) + list(DIAGNOSTIC_VARIANTS),
                   help="variants to run (default: the five of the repro; no_compressor and oracle_memory are "
                   "diagnostics)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per run (spec §8c: ~10)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--oracle", action="store_true",
                   help="no training: print what a window of W = 1, M_s, M_s + M_l frames can reveal (mcAP of an oracle)")
    p.add_argument("--probes", nargs="*", default=[], choices=["no_long", "wrong_query"],
                   help="also score each trained model with its long memory zeroed (no_long) and with the sentence of "
                   "another annotation of the same video (wrong_query); printed and stored as '<probe>/<metric>'")
    p.add_argument("--eval-split", default="test", choices=["test", "val"],
                   help="split the metrics are computed on; use val (10 videos, 30 annotations) for diagnostics")
    p.add_argument("--out", default=None,
                   help="result JSON (default: repro_results.json beside this file for the complete default run — all "
                   "variants, seeds 0 1 2, 10 epochs, test split — else repro_results_partial.json)")
    args = p.parse_args(argv)
    default_run = (args.variants == list(VARIANTS) and args.seeds == [0, 1, 2] and args.epochs == 10
                   and args.eval_split == "test")  # fmt: skip
    here = Path(__file__).parent
    out = Path(args.out) if args.out else here / ("repro_results.json" if default_run else "repro_results_partial.json")
    # results are rewritten after every run into <out>.running.json; <out> itself is written only when all runs ended
    running = out.with_name(out.stem + ".running.json")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny models: one intra-op thread is fastest, and robust on shared machines
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    seeds_done: dict[str, list[int]] = {v: [] for v in args.variants}
    # The gate's two variants run first (seed by seed), then the reported-only ablations, so a run cut short still
    # holds the gate on the seeds it finished. Results are written after every run ("complete": false until the end).
    gate_first = [v for v in ("full", "short_only") if v in args.variants]
    order = [(s, v) for s in args.seeds for v in gate_first]
    order += [(s, v) for s in args.seeds for v in args.variants if v not in gate_first]
    t0 = time.time()

    def write(complete: bool) -> dict:
        summary = summarize(runs)
        result = {
            "task": "spec §8c synthetic streaming grounding (mcAP with rho = 0)",
            "command": "python packages/tsgsv/repro.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seeds": args.seeds, "seeds_done": seeds_done, "epochs": args.epochs, "eval_split": args.eval_split,
            "device": str(device),
            "seconds": round(time.time() - t0, 1), "complete": complete,
            "gate": "mcAP(full) >= mcAP(short_only) + 0.05 and R@1,IoU=0.5(full) > R@1,IoU=0.5(short_only)",
            "gate_passed": gate_passed(summary), "results": summary,
        }  # fmt: skip
        (out if complete else running).write_text(json.dumps(result, indent=1))
        if complete:
            running.unlink(missing_ok=True)
        return result

    with tempfile.TemporaryDirectory() as tmp:
        roots = {
            seed: write_synthetic_dataset(
                Path(tmp) / f"data_{seed}",
                SyntheticStreamConfig(videos_per_split=(100, 10, 34), queries_per_video=3, video_feature_file=FILE,
                                      seed=seed, world_seed=1234 + seed, write_events=True),
            )  # fmt: skip
            for seed in args.seeds
        }
        if args.oracle:
            for seed in args.seeds:
                print(f"seed {seed} {args.eval_split}: " + json.dumps(window_oracle(roots[seed], args.eval_split, [1, 8, 72])))
            return 0
        for seed, v in order:
            r = run_variant(v, roots[seed], seed, args.epochs, device, args.eval_split, tuple(args.probes))
            runs[v].append(r)
            seeds_done[v].append(seed)
            print(f"seed {seed} {v:13s} mcAP {r['mcAP']:.4f}  R@1,IoU=0.5 {r['R@1,IoU=0.5']:.4f}  "
                  f"R@5,IoU=0.5 {r['R@5,IoU=0.5']:.4f}  ({time.time() - t0:.0f}s)", flush=True)
            write(complete=False)
    result = write(complete=True)
    for v, s in result["results"].items():
        print(f"{v:13s} mcAP {s['mcAP']['mean']:.4f} ± {s['mcAP']['std']:.4f}   "
              f"R@1,IoU=0.5 {s['R@1,IoU=0.5']['mean']:.4f} ± {s['R@1,IoU=0.5']['std']:.4f}")  # fmt: skip
    gate = result["gate_passed"]
    print(f"gate passed: {gate}")
    return 0 if gate in (True, None) else 1


if __name__ == "__main__":
    sys.exit(main())
