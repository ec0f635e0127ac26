"""Why might the spec's mutual Euclidean self-distillation (§3.4) train at the paper's size when it collapses the
digits miniature? Run: ``python packages/kevsr/distill_scale.py`` (CPU, about a minute idle). Evidence only: it
gates nothing and changes nothing in the package. Writes ``packages/kevsr/repro_distill_scale.json``.

Part A, per-video gradients on S1's refined scores (the package's own loss functions, no model): at the
miniature's label counts (3 + 10) and the paper's (6 + 320, Koubei), for 1 or 2 annotated paths per video,
with both streams' scores drawn independently (``uninformative``: partner uninformative about the video, as at
random initialisation) or both informative (``informative``: positives at +m, negatives at −m, plus independent
noise). Reported per video, both levels together: the norm of the CE's gradient, of the distillation's (√2: one
unit vector per level, whatever the scores), the part of each on the video's positive labels, and the
distillation's component along the CE's direction.

Part B, a two-stream toy with FROZEN informative inputs (a stand-in for the paper's frozen pre-trained features,
not the paper's model): each stream is an MLP head (GELU, hidden 64) on its own noisy view of a label prototype,
hierarchical refined scores (level-2 + parent's level-1), trained with the package's multi-label CE for both
streams plus β^distill × the package's self-distillation (mutual), AdamW 3e-3, batch 32, 8 epochs, ~40 training
videos per level-2 label, input noise set so that one stream alone reaches a validation F1 of about 0.6–0.7
(``TOY_NOISE``, chosen on the toy's validation split with β^distill = 0). β^distill ∈ {0, 1} at 10 and at 320 level-2 labels, 2 seeds; reported: stream 1's
validation micro F1 (level 2, score > 0), the across-video spread of its scores and the correlation of the two
streams' video-centred scores.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from kevsr.losses import hierarchical_multilabel_loss, self_distillation_loss

HERE = Path(__file__).resolve().parent
OUT = HERE / "repro_distill_scale.json"
SIZES = {"miniature": (3, 10), "paper": (6, 320)}  # (|L1|, |L2|)
TOY_NOISE = {"miniature": 3.0, "paper": 1.5}  # per-dimension input noise: single-stream val F1 ≈ 0.6–0.7 at β = 0


def targets(n: int, l1: int, l2: int, paths: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``paths`` distinct random level-2 labels per video and their parents (parent of q = q mod l1)."""
    t2 = torch.zeros(n, l2)
    for v in range(n):
        t2[v, torch.randperm(l2, generator=g)[:paths]] = 1
    parent = torch.arange(l2) % l1
    t1 = torch.zeros(n, l1).index_add_(1, parent, t2).clamp(max=1)
    return t1, t2


def score_gradients(l1: int, l2: int, paths: int, regime: str, sigma: float, n: int = 512, seed: int = 0) -> dict:
    """Part A: per-video gradient norms on S1's scores of the CE and of the distillation (means over videos)."""
    g = torch.Generator().manual_seed(seed)
    t1, t2 = targets(n, l1, l2, paths, g)
    margin = 2.0 if regime == "informative" else 0.0

    def draw(t: torch.Tensor) -> torch.Tensor:
        return margin * (2 * t - 1) + sigma * torch.randn(t.shape, generator=g)

    s1, s2, n1, n2 = draw(t1), draw(t2), draw(t1), draw(t2)
    s1.requires_grad_(True)
    s2.requires_grad_(True)
    ce = hierarchical_multilabel_loss(s1, s2, t1, t2, 1.0, 1.0)
    dist = self_distillation_loss(s1, s2, n1, n2, 1.0, 1.0, "nt")
    grads = {}
    for name, term in (("ce", ce), ("distill", dist)):
        a, b = torch.autograd.grad(term, (s1, s2))
        grads[name] = torch.cat([a, b], dim=1) * n  # undo the mean over videos
    pos = torch.cat([t1, t2], dim=1).bool()
    ce_dir = grads["ce"] / grads["ce"].norm(dim=1, keepdim=True)
    res = {}
    for name, gr in grads.items():
        res[f"{name}_norm"] = float(gr.norm(dim=1).mean())
        res[f"{name}_on_positives"] = float((gr * pos).norm(dim=1).mean())
        res[f"{name}_per_label_rms"] = float(gr.pow(2).mean(dim=1).sqrt().mean())
    res["distill_along_ce_direction"] = float((grads["distill"] * ce_dir).sum(dim=1).abs().mean())
    res["ce_over_distill_on_positives"] = res["ce_on_positives"] / res["distill_on_positives"]
    return res


class Head(nn.Module):
    """One toy stream: MLP on a frozen feature, basic scores per level, refined level-2 = own + parent's."""

    def __init__(self, dim: int, l1: int, l2: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, l1 + l2))
        self.l1 = l1
        self.register_buffer("parent", torch.arange(l2) % l1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.mlp(x)
        s1 = s[:, : self.l1]
        return s1, s[:, self.l1 :] + s1[:, self.parent]


def toy_run(l1: int, l2: int, beta: float, seed: int, epochs: int = 8, dim: int = 64, noise: float = 1.0) -> dict:
    """Part B: one run of the two-stream toy; stream 1's validation metrics."""
    g = torch.Generator().manual_seed(seed)
    n_train, n_val = 40 * l2, 10 * l2
    t1, t2 = targets(n_train + n_val, l1, l2, 1, g)
    label = t2.argmax(dim=1)
    views = []
    for _ in range(2):  # two streams, two independent views (prototypes and noise) of the same label
        proto = torch.randn(l2, dim, generator=g)
        views.append(proto[label] + noise * torch.randn(len(label), dim, generator=g))
    torch.manual_seed(seed)
    heads = nn.ModuleList([Head(dim, l1, l2), Head(dim, l1, l2)])
    opt = torch.optim.AdamW(heads.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(epochs):
        for idx in torch.randperm(n_train, generator=g).split(32):
            (a1, a2), (b1, b2) = heads[0](views[0][idx]), heads[1](views[1][idx])
            loss = hierarchical_multilabel_loss(a1, a2, t1[idx], t2[idx], 1.0, 1.0)
            loss = loss + hierarchical_multilabel_loss(b1, b2, t1[idx], t2[idx], 1.0, 1.0)
            if beta:
                loss = loss + beta * self_distillation_loss(a1, a2, b1, b2, 1.0, 1.0, "none")
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        val = slice(n_train, None)
        s = heads[0](views[0][val])[1]
        o = heads[1](views[1][val])[1]
        y = t2[val].bool()
        pred = s > 0
        tp = float((pred & y).sum())
        f1 = 2 * tp / max(float(pred.sum() + y.sum()), 1.0)
        sc, oc = s - s.mean(0), o - o.mean(0)
        return {
            "s1_f1": f1,
            "s1_top1_acc": float((s.argmax(1) == y.float().argmax(1)).float().mean()),
            "s1_score_spread": float(s.std(dim=0).mean()),
            "stream_corr": float((sc * oc).sum() / (sc.norm() * oc.norm() + 1e-12)),
        }


def main() -> int:
    torch.set_num_threads(1)
    t0 = time.time()
    res: dict = {"part_a_score_gradients": {}, "part_b_toy": {}}
    for size, (l1, l2) in SIZES.items():
        for paths in (1, 2):
            for regime, sigma in (("uninformative", 0.1), ("uninformative", 5.0), ("informative", 1.0)):
                key = f"{size} ({l1}+{l2} labels), {paths} path(s), {regime}, sigma {sigma}"
                res["part_a_score_gradients"][key] = r = score_gradients(l1, l2, paths, regime, sigma)
                print(key, {k: round(v, 3) for k, v in r.items()}, flush=True)
    for size, (l1, l2) in SIZES.items():
        for beta in (0.0, 1.0):
            runs = [toy_run(l1, l2, beta, seed, noise=TOY_NOISE[size]) for seed in (0, 1)]
            key = f"{size} ({l1}+{l2} labels), beta_distill {beta:g}"
            res["part_b_toy"][key] = {k: statistics.mean(r[k] for r in runs) for k in runs[0]} | {"runs": runs}
            print(key, {k: round(v, 3) for k, v in res["part_b_toy"][key].items() if k != "runs"}, flush=True)
    res["seconds"] = time.time() - t0
    OUT.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
