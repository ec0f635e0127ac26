"""kevsr's claims in miniature on synthetic digit "videos" (spec §8c). Run: ``python packages/kevsr/repro.py``.

Data (``kevsr.synthetic.write_digits_dataset``): 800 train / 200 val / 300 test videos of N_f = 6 noisy sklearn
digit frames, hierarchy low/mid/high → ten digit words, a 32-d synthetic KG, keywords from the real extraction
routine; generated once with generator seed 0 into runs/repro_data/kevsr (again when ``DIGITS_VERSION`` or the
arguments change) and shared by every model seed. d = 64, 3 seeds, 8 epochs of AdamW 3e-3 (fixed; no model
selection on test). Claims:

1. ``Ours-S2`` beats ``Ours-S2 w/o-kw`` (random shared keywords) on level-2 F1 and RP@90% (gated: F1).
2. ``Ours-S2`` beats ``Ours-S2 w/o-know`` (frame mean instead of the keyword fusion) (reported).
3. The full model evaluated with its temporal stream is not worse than ``streams: temporal`` (MMBT-like), and
   gains when the temporal inputs are noisy (reported; the noisy run needs ``--noisy``). ``--diagnose SEED ...``
   runs only the diagnostics of the full model's collapse on the VALIDATION split (repro_diagnostics.json;
   ``--only NAME ...`` runs a subset of them and writes repro_diagnostics_<first NAME>.json).
4. Label scalability: train with digit 9 never positive; on 9-videos of the test split the S2 stream ranks
   "nine" with a mean reciprocal rank above the variant whose label vectors are random learnable ones (gated).
   Gated protocol (``in_training``, the spec's wording "train with digit 9 never positive but with its KG label
   vector present"): "nine" stays a label during training, a negative for every training video. Also reported
   (``appended``, the paper's "a new label is added without retraining"): "nine" is not among the trained labels;
   after training its KG vector (or, for the random variant, a random vector) is appended to the level-2 label
   table (``LabelMatchingHead.score``).
Writes packages/kevsr/repro_results.json; exits 1 when a gate fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from kevsr.data import KEVSRDataModule
from kevsr.metrics import micro_f1, rp_at_accuracy
from kevsr.models import KEVSRConfig
from kevsr.module import KEVSRModule

HERE = Path(__file__).resolve().parent
OUT = HERE / "repro_results.json"
DATA = HERE.parent.parent / "runs" / "repro_data" / "kevsr"
BASE = KEVSRConfig(
    dim=64,
    f2d_dim=64,
    f3d_dim=64,
    text_dim=32,
    region_dim=64,
    kg_dim=32,
    num_frames=6,
    num_regions=5,
    num_keywords=10,
    num_level1=3,
    num_level2=10,
    dropout=0.1,
    temporal_layers=1,
    temporal_heads=4,
    region_layers=1,
    region_heads=4,
)
VARIANTS = {
    "s2": (dict(), dict(streams="nontemporal")),
    "s2_wo_kw": (dict(keyword_source="random_shared"), dict(streams="nontemporal")),
    "s2_wo_know": (dict(nt_fusion="mean"), dict(streams="nontemporal")),
    "full": (dict(), dict(streams="both")),  # the spec's mutual distillation (distill_stop_grad: none)
    "full_stopgrad_nt": (dict(), dict(streams="both", distill_stop_grad="nt")),  # S1 distilled from S2 only
    "full_stopgrad_t": (dict(), dict(streams="both", distill_stop_grad="t")),  # S1 shielded (demo setting)
    "temporal": (dict(), dict(streams="temporal")),
}


def load(name: str, **gen) -> tuple[KEVSRDataModule, dict[str, dict]]:
    """Generate (once per generator version and arguments) and read every split into memory. Every model seed
    uses the same data, generator seed 0."""
    from kevsr.synthetic import ensure_generated

    root = ensure_generated(DATA / name, DATA / name / "kg.txt.gz", "digits", seed=0, owned=True, **gen)
    dm = KEVSRDataModule(str(root), str(root / "kg.txt.gz"), num_regions=5, num_keywords=10, kg_dim=32, num_workers=0)
    dm.setup(None)
    splits = {}
    for split, ds in dm.datasets.items():
        items = [ds[i] for i in range(len(ds))]
        splits[split] = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "video_id"}
    return dm, splits


def train(
    module: KEVSRModule,
    data: dict,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch: int = 32,
    warmup: float = 0.0,
    distill_ramp_epochs: float = 0.0,
    distill_start_epoch: int = 0,
    on_epoch=None,  # noqa: ANN001 (callable(epoch) for --diagnose)
) -> KEVSRModule:
    """AdamW, constant ``lr`` (optionally a linear warm-up over the fraction ``warmup`` of the steps; β^distill
    = 0 for the first ``distill_start_epoch`` epochs, then a linear ramp from 0 to its value over
    ``distill_ramp_epochs``: --diagnose only)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    n = len(data["f2d"])
    per_epoch = -(-n // batch)
    warm_steps = max(int(warmup * epochs * per_epoch), 1)
    beta = module.hparams.beta_distill
    step = 0
    for epoch in range(epochs):
        module.train()
        for idx in torch.randperm(n).split(batch):
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warm_steps)
            on_step = step - distill_start_epoch * per_epoch  # steps since the distillation was switched on
            if distill_start_epoch > 0 or distill_ramp_epochs > 0:
                ramp = min(1.0, on_step / (distill_ramp_epochs * per_epoch)) if distill_ramp_epochs > 0 else 1.0
                module.hparams.beta_distill = beta * ramp if on_step >= 0 else 0.0
            loss = module.compute_losses({k: v[idx] for k, v in data.items()})["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if on_epoch is not None:
            module.eval()
            on_epoch(epoch)
    module.hparams.beta_distill = beta
    return module.eval()


def build(dm: KEVSRDataModule, cfg_kw: dict, mod_kw: dict, seed: int) -> KEVSRModule:
    torch.manual_seed(seed)
    module = KEVSRModule(replace(BASE, **cfg_kw), **mod_kw)
    h = dm.hierarchy
    module.model.set_hierarchy(h.parent_index)
    if module.model.nontemporal is not None:
        for level, head in ((1, module.model.nontemporal.head1), (2, module.model.nontemporal.head2)):
            head.set_label_vectors(*h.label_vectors(dm.kg, level, BASE.kg_dim))
    return module


@torch.no_grad()
def scores(module: KEVSRModule, data: dict, stream: str) -> torch.Tensor:
    out = module.model.forward_temporal(data) if stream == "t" else module.model.forward_nontemporal(data)
    return out["level2"]


def evaluate(s: torch.Tensor, target: torch.Tensor) -> dict:
    return {"f1": float(micro_f1(s, target)), "rp90": float(rp_at_accuracy(s, target, 0.9))}


def mrr(s: torch.Tensor, target: torch.Tensor, label: int) -> float:
    rows = target[:, label] > 0
    rank = (s[rows] > s[rows][:, label : label + 1]).sum(dim=1) + 1  # rank of `label` among the 10 scores
    return float((1.0 / rank.float()).mean())


def label_diagnostics(
    s: torch.Tensor, target: torch.Tensor, s_train: torch.Tensor, train_target: torch.Tensor, label: int
) -> dict:
    """Why claim 4's MRR is what it is (reported only). ``auc``: P(score of ``label`` on a test video that has
    it > on one that has not), i.e. does the label's score carry the signal at all; ``last``: fraction of the
    label's test videos where it is ranked last; ``train_gap``: mean training score of ``label`` minus the mean
    training score of the other labels where they are negatives (the bias the training put on it); ``mrr_debiased``:
    MRR after subtracting each label's mean training score (a diagnostic, not the claim's protocol)."""
    rows = target[:, label] > 0
    pos, neg = s[rows, label], s[~rows, label]
    rank = (s[rows] > s[rows][:, label : label + 1]).sum(dim=1) + 1
    pad = s.shape[1] - train_target.shape[1]  # the appended protocol trains without ``label``
    train_target = torch.cat([train_target, train_target.new_zeros(len(train_target), pad)], dim=1)
    others = torch.arange(s.shape[1]) != label
    neg_train = s_train[:, others][train_target[:, others] == 0]
    bias = s_train.mean(0)
    return {
        "auc": float((pos[:, None] > neg[None, :]).float().mean()),
        "last": float((rank == s.shape[1]).float().mean()),
        "train_gap": float(s_train[:, label].mean() - neg_train.mean()),
        "mrr_debiased": mrr(s - bias, target, label),
    }


def unseen_label_run(
    dm: KEVSRDataModule, data: dict, train9: dict, label: int, protocol: str, kg_labels: bool, epochs: int, seed: int
) -> tuple[float, dict]:
    """Claim 4, one seed: MRR of level-2 label ``label`` (the last one) on the test videos that have it, and the
    :func:`label_diagnostics`."""
    h = dm.hierarchy
    vectors, found = h.label_vectors(dm.kg, 2, BASE.kg_dim)  # (10, G)
    if not kg_labels:  # every label gets a random (KG-scale) learnable vector instead
        found = torch.zeros_like(found)
        vectors = torch.randn(vectors.shape, generator=torch.Generator().manual_seed(1000 + seed))
    if protocol == "in_training":
        module = build(dm, {}, dict(streams="nontemporal"), seed)
        if not kg_labels:
            for head in (module.model.nontemporal.head1, module.model.nontemporal.head2):
                head.has_kg.zero_()
            module.model.nontemporal.head1.learned.data.copy_(torch.randn_like(module.model.nontemporal.head1.learned))
            module.model.nontemporal.head2.learned.data.copy_(vectors)
        module = train(module, data["train"], epochs, seed)
        s, s_train = scores(module, data["test"], "nt"), scores(module, data["train"], "nt")
        test2, train2 = data["test"]["target2"], data["train"]["target2"]
        return mrr(s, test2, label), label_diagnostics(s, test2, s_train, train2, label)
    # appended: train on the other labels only, then add the new label's vector to the table
    torch.manual_seed(seed)
    module = KEVSRModule(replace(BASE, num_level2=label), streams="nontemporal")
    module.model.set_hierarchy(h.parent_index[:label])
    stream = module.model.nontemporal
    v1, f1 = h.label_vectors(dm.kg, 1, BASE.kg_dim)
    if not kg_labels:
        f1 = torch.zeros_like(f1)
        stream.head1.learned.data.copy_(torch.randn_like(stream.head1.learned))
    stream.head1.set_label_vectors(v1, f1)
    stream.head2.set_label_vectors(vectors[:label], found[:label])
    if not kg_labels:
        stream.head2.learned.data.copy_(vectors[:label])
    module = train(module, train9, epochs, seed)

    @torch.no_grad()
    def appended(split: dict) -> torch.Tensor:
        e_nt = stream.video_embedding(split)  # (N, D)
        table = torch.cat([stream.head2.label_embeddings(), vectors[label:]])  # (10, G): the new label appended
        return stream.head2.score(e_nt, table) + stream.head1(e_nt)[:, h.parent_index]  # refined, spec §3.3c

    s, s_train = appended(data["test"]), appended(train9)
    return mrr(s, data["test"]["target2"], label), label_diagnostics(
        s, data["test"]["target2"], s_train, train9["target2"], label
    )


class SquaredDistillation(torch.nn.Module):
    """--diagnose only (not the spec): β1 mean_v ‖s^t_1 − s^nt_1‖² + β2 mean_v ‖s^t_2 − s^nt_2‖² (smooth at 0)."""

    def forward(self, t: dict, nt: dict) -> torch.Tensor:
        return sum(((t[k] - nt[k]) ** 2).sum(dim=1).mean() for k in ("level1", "level2"))


class ProbabilityDistillation(torch.nn.Module):
    """--diagnose only (not the spec): the spec's mean Euclidean norm per level, on sigmoid(score) instead of the raw
    scores, so the distance is bounded (≤ √L) and saturated labels stop pulling (mutual, β1 = β2 = 1, ε = 1e-8)."""

    def forward(self, t: dict, nt: dict) -> torch.Tensor:
        return sum(
            torch.sqrt(((t[k].float().sigmoid() - nt[k].float().sigmoid()) ** 2).sum(dim=1) + 1e-8).mean()
            for k in ("level1", "level2")
        )


@torch.no_grad()
def cls_spread(module: KEVSRModule, data: dict) -> float:
    """Mean over dimensions of the across-video std of S1's [CLS] output e^t (0 = input-independent)."""
    stream = module.model.temporal
    f_g = stream.refine(data["f2d"], data["f3d"], data["text"])  # (N, T, D)
    tokens = torch.cat([stream.cls.expand(len(f_g), -1, -1), f_g], dim=1) + stream.pos[:, : f_g.shape[1] + 1]
    return float(stream.encoder(tokens)[:, 0].std(dim=0).mean())


@torch.no_grad()
def score_agreement(module: KEVSRModule, data: dict) -> dict:
    """Level-2 refined scores of both streams on ``data``: each stream's across-video spread (mean over labels of
    the std over videos), the correlation of the two streams' video-centred scores (their input-dependent parts),
    and the mean Euclidean distance between them (the distillation term, level 2)."""
    t, nt = scores(module, data, "t"), scores(module, data, "nt")
    tc, ntc = t - t.mean(0), nt - nt.mean(0)
    return {
        "s1_score_spread": float(t.std(dim=0).mean()),
        "s2_score_spread": float(nt.std(dim=0).mean()),
        "stream_corr": float((tc * ntc).sum() / (tc.norm() * ntc.norm() + 1e-12)),
        "distance_l2": float((t - nt).norm(dim=1).mean()),
    }


def gradient_probe(module: KEVSRModule, data: dict, n: int = 64) -> dict:
    """On the first ``n`` training videos (eval mode): per-video norm of ∂J/∂s^t_2 for S1's CE and for the
    distillation, and the norm of each term's gradient on S1's parameters (and their cosine)."""
    batch = {k: v[:n] for k, v in data.items()}
    out = module.model(batch)
    s2 = out["t"]["level2"]
    ce = module.loss_t(out["t"], batch["target1"], batch["target2"])
    dist = module.loss_distill(out["t"], out["nt"])
    params = list(module.model.temporal.parameters())
    res = {}
    flat = {}
    for name, term in (("ce", ce), ("distill", dist)):
        g_s = torch.autograd.grad(term, s2, retain_graph=True)[0] * n  # undo the mean over videos
        g_p = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        flat[name] = torch.cat([g.flatten() for g in g_p if g is not None])
        res[f"score_grad_per_video_{name}"] = float(g_s.norm(dim=1).mean())
        res[f"s1_param_grad_{name}"] = float(flat[name].norm())
    res["s1_param_grad_cos"] = float(torch.nn.functional.cosine_similarity(flat["ce"], flat["distill"], dim=0))
    return res


DIAGNOSE = {  # name: (module kwargs, train kwargs, epochs, distillation loss class; None = the spec's)
    "temporal": (dict(streams="temporal"), {}, 8, None),
    "full": (dict(streams="both"), {}, 8, None),
    "full_stopgrad_nt": (dict(streams="both", distill_stop_grad="nt"), {}, 8, None),
    "full_stopgrad_t": (dict(streams="both", distill_stop_grad="t"), {}, 8, None),
    "full_init_std_0.02": (dict(streams="both", config_kw=dict(init_std=0.02)), {}, 8, None),
    "full_squared_distance": (dict(streams="both"), {}, 8, SquaredDistillation),
    "full_probability_distance": (dict(streams="both"), {}, 8, ProbabilityDistillation),
    "full_distill_ramp_2_epochs": (dict(streams="both"), dict(distill_ramp_epochs=2.0), 8, None),
    "full_lr_1e-3": (dict(streams="both"), dict(lr=1e-3), 8, None),
    "full_spec_recipe_lr_1e-4_warmup_30_epochs": (dict(streams="both"), dict(lr=1e-4, warmup=0.05), 30, None),
    "full_beta_distill_0.1": (dict(streams="both", beta_distill=0.1), {}, 8, None),
    "full_distill_start_epoch_3": (dict(streams="both"), dict(distill_start_epoch=3), 8, None),
    "full_distill_start_epoch_4": (dict(streams="both"), dict(distill_start_epoch=4), 8, None),
    "full_distill_start_epoch_4_ramp_2_epochs": (
        dict(streams="both"),
        dict(distill_start_epoch=4, distill_ramp_epochs=2.0),
        8,
        None,
    ),
}
TRACKED = (
    "full",
    "full_distill_start_epoch_3",
    "full_distill_start_epoch_4",
    "full_distill_start_epoch_4_ramp_2_epochs",
)  # per-epoch rows in --diagnose


def diagnose(seeds: list[int], log: logging.Logger, only: list[str] | None = None) -> dict:
    """Claim 3's collapse on the VALIDATION split (``--diagnose``): the settings of :data:`DIAGNOSE`, 1 run per
    seed; the spec's ``full`` run also records per-epoch S1/S2 F1, the spread of S1's [CLS] output and the
    :func:`gradient_probe`, then trains 4 more epochs without distillation (does S1 recover?)."""
    dm, data = load("clean")
    train_split, val = data["train"], data["val"]
    out: dict = {"split": "val", "seeds": seeds, "settings": {}}
    for name, (mod_kw, train_kw, epochs, distill_loss) in DIAGNOSE.items():
        if only and name not in only:
            continue
        mod_kw = dict(mod_kw)
        cfg_kw = mod_kw.pop("config_kw", {})
        per_seed = []
        for seed in seeds:
            module = build(dm, cfg_kw, mod_kw, seed)
            if distill_loss is not None:
                module.loss_distill = distill_loss()
            track: list = []

            def on_epoch(epoch: int, module: KEVSRModule = module, track: list = track) -> None:
                with torch.no_grad():
                    row = {"epoch": epoch, "s1_f1": evaluate(scores(module, val, "t"), val["target2"])["f1"]}
                    row["s2_f1"] = evaluate(scores(module, val, "nt"), val["target2"])["f1"]
                    row["s1_cls_spread"] = cls_spread(module, val)
                    row.update(score_agreement(module, val))
                row.update(gradient_probe(module, train_split))
                track.append(row)

            if name in TRACKED:
                module.eval()
                on_epoch(-1)  # at init
            module = train(
                module, train_split, epochs, seed, on_epoch=on_epoch if name in TRACKED else None, **train_kw
            )
            run = {}
            for stream in ("t", "nt"):
                if (module.model.temporal if stream == "t" else module.model.nontemporal) is not None:
                    run[f"{'s1' if stream == 't' else 's2'}_f1"] = evaluate(
                        scores(module, val, stream), val["target2"]
                    )["f1"]
            if module.model.temporal is not None:
                run["s1_cls_spread"] = cls_spread(module, val)
            if name in TRACKED:
                run["per_epoch"] = track
            if name == "full":
                module.hparams.beta_distill = 0.0
                module = train(module, train_split, 4, seed + 1)
                run["after_4_epochs_without_distillation"] = {
                    "s1_f1": evaluate(scores(module, val, "t"), val["target2"])["f1"],
                    "s1_cls_spread": cls_spread(module, val),
                }
            per_seed.append(run)
            log.info("diagnose %-42s seed %d %s", name, seed, {k: v for k, v in run.items() if k != "per_epoch"})
        out["settings"][name] = per_seed
    return out


def ms(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": xs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch: checks the script runs")
    p.add_argument("--noisy", action="store_true", help="also run claim 3's noisy-temporal-input comparison")
    p.add_argument(
        "--diagnose",
        type=int,
        nargs="+",
        metavar="SEED",
        help="only run claim 3's collapse diagnostics on the validation split with these seeds "
        "(writes repro_diagnostics.json)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="with --diagnose: only these settings of DIAGNOSE (writes repro_diagnostics_<first name>.json)",
    )
    p.add_argument(
        "--refine-hidden-dropout",
        choices=("on", "off"),
        default="on",
        help="model.config.refine_hidden_dropout (dropout after the frame refinement MLP's hidden layer); off: the "
        "model of the result files written before that dropout was added",
    )
    p.add_argument(
        "--out",
        help="results file (default: packages/kevsr/repro_results.json; with --diagnose repro_diagnostics*.json)",
    )
    a = p.parse_args(argv)
    global BASE
    BASE = replace(BASE, refine_hidden_dropout=a.refine_hidden_dropout == "on")
    seeds, epochs = ([0], 1) if a.smoke else ([0, 1, 2], 8)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("kevsr.repro")
    torch.set_num_threads(1)
    t0 = time.time()
    if a.diagnose:
        diag = diagnose(a.diagnose, log, a.only)
        diag["refine_hidden_dropout"] = BASE.refine_hidden_dropout
        diag["seconds"] = time.time() - t0
        name = f"repro_diagnostics_{a.only[0]}.json" if a.only else "repro_diagnostics.json"
        Path(a.out or HERE / name).write_text(json.dumps(diag, indent=1))
        return 0
    res: dict = {"seeds": seeds, "epochs": epochs, "refine_hidden_dropout": BASE.refine_hidden_dropout, "level2": {}}

    dm, data = load("clean")
    for name, (cfg_kw, mod_kw) in VARIANTS.items():
        runs = []
        for seed in seeds:
            module = train(build(dm, cfg_kw, mod_kw, seed), data["train"], epochs, seed)
            stream = "nt" if mod_kw["streams"] == "nontemporal" else "t"
            runs.append(evaluate(scores(module, data["test"], stream), data["test"]["target2"]))
        res["level2"][name] = {k: ms([r[k] for r in runs]) for k in ("f1", "rp90")}
        log.info(
            "%-10s F1 %.3f  RP@90 %.3f  (%.0f s)",
            name,
            res["level2"][name]["f1"]["mean"],
            res["level2"][name]["rp90"]["mean"],
            time.time() - t0,
        )

    res["noisy_temporal"] = {}
    for name in ("full", "full_stopgrad_t", "temporal") if a.noisy else ():
        dm_noisy, noisy = load("noisy_temporal", temporal_noise=1.0)
        cfg_kw, mod_kw = VARIANTS[name]
        runs = [
            evaluate(
                scores(train(build(dm_noisy, cfg_kw, mod_kw, s), noisy["train"], epochs, s), noisy["test"], "t"),
                noisy["test"]["target2"],
            )
            for s in seeds
        ]
        res["noisy_temporal"][name] = {k: ms([r[k] for r in runs]) for k in ("f1", "rp90")}
        log.info("noisy %-16s F1 %.3f", name, res["noisy_temporal"][name]["f1"]["mean"])

    dm9, data9 = load("never_nine", never_positive_in_train=(9,))
    nine = dm9.hierarchy.level2.index("nine")
    assert nine == BASE.num_level2 - 1, "the appended label must be the last one"
    train9 = dict(data9["train"], target2=data9["train"]["target2"][:, :nine])  # "nine" is not a trained label
    res["unseen_nine_mrr"], res["unseen_nine_diagnostics"] = {}, {}
    for protocol in ("appended", "in_training"):
        res["unseen_nine_mrr"][protocol], res["unseen_nine_diagnostics"][protocol] = {}, {}
        for name, kg_labels in (("kg_label_vectors", True), ("random_label_vectors", False)):
            runs, diags = [], []
            for seed in seeds:
                value, diag = unseen_label_run(dm9, data9, train9, nine, protocol, kg_labels, epochs, seed)
                runs.append(value)
                diags.append(diag)
            res["unseen_nine_mrr"][protocol][name] = ms(runs)
            res["unseen_nine_diagnostics"][protocol][name] = {k: ms([d[k] for d in diags]) for k in diags[0]}
            log.info(
                "unseen 'nine' MRR %-11s %-22s %.3f  (%s)",
                protocol,
                name,
                statistics.mean(runs),
                ", ".join(f"{k} {statistics.mean(d[k] for d in diags):.3f}" for k in diags[0]),
            )

    l2 = res["level2"]
    gate1_f1 = l2["s2"]["f1"]["mean"] > l2["s2_wo_kw"]["f1"]["mean"]
    gate1_rp90 = l2["s2"]["rp90"]["mean"] > l2["s2_wo_kw"]["rp90"]["mean"]
    gate1 = gate1_f1 and gate1_rp90  # spec §8c claim 1: on level-2 F1 and RP@90%
    u = res["unseen_nine_mrr"]
    gate4 = u["in_training"]["kg_label_vectors"]["mean"] > u["in_training"]["random_label_vectors"]["mean"]
    res["claims"] = {
        "1_s2_beats_wo_kw_f1": gate1_f1,
        "1_s2_beats_wo_kw_rp90": gate1_rp90,
        "1_f1_gain_points": 100 * (l2["s2"]["f1"]["mean"] - l2["s2_wo_kw"]["f1"]["mean"]),
        "2_s2_beats_wo_know_f1": l2["s2"]["f1"]["mean"] > l2["s2_wo_know"]["f1"]["mean"],
        "3_full_t_not_worse_than_temporal_f1": l2["full"]["f1"]["mean"] >= l2["temporal"]["f1"]["mean"],
        "3_full_stopgrad_nt_not_worse_than_temporal_f1": (
            l2["full_stopgrad_nt"]["f1"]["mean"] >= l2["temporal"]["f1"]["mean"]
        ),
        "3_noisy_full_gain_f1": (
            res["noisy_temporal"]["full"]["f1"]["mean"] - res["noisy_temporal"]["temporal"]["f1"]["mean"]
            if a.noisy
            else None
        ),
        "3_noisy_full_stopgrad_t_gain_f1": (
            res["noisy_temporal"]["full_stopgrad_t"]["f1"]["mean"] - res["noisy_temporal"]["temporal"]["f1"]["mean"]
            if a.noisy
            else None
        ),
        "4_unseen_label_mrr_above_random": gate4,
        "4_appended_protocol_mrr_above_random": (
            u["appended"]["kg_label_vectors"]["mean"] > u["appended"]["random_label_vectors"]["mean"]
        ),
    }
    res["gates"] = {"claim1_f1_and_rp90": gate1, "claim4_mrr": gate4}
    res["seconds"] = time.time() - t0
    if not a.smoke:
        Path(a.out or OUT).write_text(json.dumps(res, indent=1))
    log.info("%s", json.dumps(res["claims"]))
    return 0 if gate1 and gate4 else 1


if __name__ == "__main__":
    sys.exit(main())
