"""Spec §8c in miniature: a tiny LLaVA that learned a stereotype is de-biased faster by ASD than by plain FT.

1. Data (scikit-learn digits 0–3 = four "occupations"; background hue = race, border = gender), written in the
   SocialCounterfactuals format and read back with the package's reader. Digit instances: the two pre-training sets
   share the first 40 % of each class; validation 40–50 %, debias 50–75 %, test 75–100 %.
   * general pre-training set: clean digits under every hue × border (balanced);
   * biased pre-training set: digit k shown with hue ``RACES[k mod 2]`` in 90 % of images, glyph degraded (noise
     σ=0.6, erasing) — the stereotype;
   * counterfactual debias set: clean digits rendered under every hue × border (balanced);
   * held-out counterfactual validation set (premise checks, diagnostics) and test set (the gate).
   Glyphs are centred (``jitter=False``): with a random offset per set the tiny 16-token ViT does not learn the digits
   in a CPU budget (concept accuracy stays at chance even on balanced data), so the §8c premise cannot be met.
2. Pre-train the tiny LLaVA (concept_qa answers, vision tower trainable): first on the general set (it learns the
   digits — the role of the real MLLM's general pre-training; without it, at the spec's settings — biased set only,
   AdamW 3e-3, 400 steps — the model learns only the hue: validation accuracy 25 % = chance), then 400 steps on the
   biased set (AdamW 3e-4) → it learns the stereotype. Precondition (spec §8c premise, on the *validation* set, never
   on the test set): concept accuracy ≥ 50 % (chance 25 %), race MinSkew < −1, and the stereotyped hue fills
   ≥ 75 % of each occupation's top 25 % (a Skew made of any other hue dependence does not count); else exit 2.
3. From that checkpoint, four debias fine-tunes (vision tower frozen, spec §3.1) with an identical small budget
   (``epoch_length: nominal``: every variant gets the same number of steps): FT, resample-only, SFLoss-only, ASD
   (Skew refreshed each epoch with the answer-likelihood scorer, Skew@K with K = 25 % of the pool).
4. Test-set race MaxSkew / MinSkew (the stereotyped attribute) and concept accuracy, over 3 seeds → mean ± std in
   ``repro_results.json``. Gate: ASD's |MinSkew| and MaxSkew below FT's, ASD's concept accuracy at most 2 points
   below FT's. The ordering "each component between FT and ASD" is recorded but not gated; so is the spec's control
   (a 5× budget on the first seed, where every variant should converge).
   Diagnostics per run: accuracy on stereotyped-hue vs other-hue images, the share of errors that name an occupation
   whose stereotyped hue is the image's hue (with its chance level), the stereotype rate in the top 25 %, and the
   paired win rate (share of same-glyph, same-border pairs whose stereotyped-hue render scores higher; 50 = no bias).

Run: ``uv run --no-sync python packages/asdmllm/repro.py`` (``--quick`` for a smoke run; ``--eval-split val`` scores
on the validation split, gates nothing and writes nothing). Exit 1 when the gate fails, exit 2 when the premise is
not met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from asdmllm.data import SocialCounterfactualsDataset, collate, make_socialcounterfactuals
from asdmllm.metrics import SkewMetric, per_sample_skew
from asdmllm.models import MLLMConfig
from asdmllm.module import ASDModule, DebiasConfig, SkewConfig
from asdmllm.sampling import ResampledEpochSampler, bias_aware_resample

OCCUPATIONS = ["nurse", "chef", "pilot", "dancer"]  # digits 0-3; distinct first characters (see concept_acc)
QUESTIONS = {"occupation": "Job?"}  # short prompts keep the CPU run short
PROMPT = "<image>\n{instruction} A:"
RACES, GENDERS = ["White", "Black"], ["male", "female"]
GLYPH_NOISE = 0.6  # σ of the biased pre-training glyph noise (spec §8c)
STEREOTYPE_RATE_MIN = 75.0  # premise: the stereotyped hue fills ≥ 75 % of each occupation's top 25 % (50 = no bias)
VARIANTS = {  # name → (resample, sfloss)
    "FT": (False, False),
    "resample_only": (True, False),
    "sfloss_only": (False, True),
    "ASD": (True, True),
}


def build_data(root: Path, seed: int, quick: bool, names=("debias", "val", "test"), eval_sets: int = 40):
    n_bias, n_cf = (60, 6) if quick else (160, 10)
    n_eval = n_cf if quick else eval_sets
    if "general" in names:  # instances of the biased set's, balanced hues: teaches the digits, not the hue
        make_socialcounterfactuals(
            root / "general",
            OCCUPATIONS,
            RACES,
            GENDERS,
            n_bias // 4,
            32,
            seed + 100,
            "digits",
            (0.0, 0.4),
            jitter=False,
        )
    if "biased" in names:
        make_socialcounterfactuals(
            root / "biased",
            OCCUPATIONS,
            RACES,
            GENDERS,
            n_bias,
            32,
            seed,
            "digits",
            (0.0, 0.4),
            bias=0.9,
            glyph_noise=GLYPH_NOISE,
            erase=True,
            jitter=False,
        )
    if "debias" in names:
        make_socialcounterfactuals(
            root / "debias", OCCUPATIONS, RACES, GENDERS, n_cf, 32, seed + 1, "digits", (0.5, 0.75), jitter=False
        )
    if "val" in names:  # digit instances of none of the other sets: premise checks and diagnostics
        make_socialcounterfactuals(
            root / "val", OCCUPATIONS, RACES, GENDERS, n_eval, 32, seed + 3, "digits", (0.4, 0.5), jitter=False
        )
    if "test" in names:
        make_socialcounterfactuals(
            root / "test", OCCUPATIONS, RACES, GENDERS, n_eval, 32, seed + 2, "digits", (0.75, 1.0), jitter=False
        )
    out = {}
    for name in names:
        ds = SocialCounterfactualsDataset(root / name, "all", image_size=32, questions=QUESTIONS)
        out[name] = (ds, [ds[i] for i in range(len(ds))])  # decoded once, kept in memory
    return out


def make_module(resample: bool, sfloss: bool, seed: int, trainable=("projector", "llm")) -> ASDModule:
    torch.manual_seed(seed)
    return ASDModule(
        mllm=MLLMConfig(prompt_template=PROMPT, trainable=list(trainable)),
        debias=DebiasConfig("asd", resample=resample, sfloss=sfloss, seed=seed),
        skew=SkewConfig(scorer="answer_logprob", mode="topk", topk=0.25),
    )


def take_steps(loader: DataLoader, sampler: ResampledEpochSampler, steps: int):
    """Exactly ``steps`` batches from ``loader``: truncated, or re-iterated (a fresh shuffle per pass when no resampled
    list is installed) when one pass is shorter. (The first version of this script stopped after one pass, so its
    "200 pre-training steps" were 40.)"""
    if len(loader) == 0:
        raise ValueError("take_steps: the loader yields no batch")
    done, passes, epoch = 0, 0, sampler.epoch
    while done < steps:
        sampler.set_epoch(epoch + 100_000 * passes)
        for batch in loader:
            yield batch
            done += 1
            if done >= steps:
                break
        passes += 1
    sampler.set_epoch(epoch)


def train(
    module: ASDModule, data, epochs: int, steps: int, lr: float, seed: int, batch_size: int = 16, trace: bool = False
) -> None:
    """``epochs`` × ``steps`` AdamW steps; ASD's Skew refresh + resampling at each epoch start (as ASDModule does)."""
    ds, items = data
    info = ds.info("train")
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sampler = ResampledEpochSampler(len(items), seed, fixed_length=True)  # equal step budget for every variant
    probe = DataLoader(items, batch_size=64, collate_fn=collate)
    debias = module.debias
    for epoch in range(epochs):
        sample_skew = None
        if debias.use_resample or debias.use_sfloss:  # §3.3 refresh with the current model
            table = module.estimate_skew(probe, info)
            sample_skew = per_sample_skew(table, ds.concept_ids, ds.attribute_ids)
            if trace:  # the refreshed training Skew, split by the stereotype
                race = info.attribute_types.index("race")
                stereo = ds.attribute_ids[:, race] == stereotyped_race_ids(info)[ds.concept_ids]
                print(
                    f"    epoch {epoch}: mean per-sample Skew on stereotyped-hue images {sample_skew[stereo].mean():+.2f}, "
                    f"on other-hue images {sample_skew[~stereo].mean():+.2f}",
                    flush=True,
                )
        sampler.set_epoch(epoch)
        if debias.use_resample:
            sampler.set_indices(
                bias_aware_resample(
                    sample_skew, debias.tau1, debias.tau2, torch.Generator().manual_seed(seed + 1000 * epoch)
                )
            )
        loader = DataLoader(items, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=True)
        module.train()
        for batch in take_steps(loader, sampler, steps):
            inputs = module.mllm.build_inputs(batch["instruction"], batch["answer"])
            logits = module.mllm(batch["image"], inputs["input_ids"], inputs["attention_mask"])
            skew = (
                sample_skew[batch["index"]]
                if (sample_skew is not None and debias.use_sfloss)
                else logits.new_zeros(len(batch["index"]))
            )
            loss = module.loss_fn(logits, inputs["labels"], skew)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()


def stereotyped_race_ids(info) -> torch.Tensor:
    """(C,) the race-value id (in ``info``'s order) of each concept's stereotyped hue: digit k ↔ ``RACES[k mod 2]``.

    The reader sorts concepts and attribute values alphabetically, so neither the concept id nor the race id is the
    generator's index; the first version of this script compared them directly (``hue == concept % 2``), which was
    right for two of the four occupations and wrong for the other two — a perfect stereotype read as a 50 % rate.
    """
    races = info.attribute_values[info.attribute_types.index("race")]
    return torch.tensor([races.index(RACES[OCCUPATIONS.index(c) % len(RACES)]) for c in info.concepts])


@torch.no_grad()
def evaluate(module: ASDModule, data) -> dict[str, float]:
    ds, items = data
    info = ds.info("test")
    module.eval()
    sc = module.skew_config
    metric = SkewMetric(
        info.attribute_types,
        [len(v) for v in info.attribute_values],
        info.group_ids,
        sc.mode,
        sc.topk,
        sc.zero_count,
        sc.alpha,
        sc.clip,
    )
    first = torch.tensor([module.mllm._encode(" " + c)[1] for c in info.concepts])  # first letter after the space
    race = info.attribute_types.index("race")
    own_scores, concepts, races, preds = [], [], [], []
    for batch in DataLoader(items, batch_size=64, collate_fn=collate):
        scores = module.score(batch["image"], batch["concept"], info, "own")  # (B, C), own concept only
        metric.update(scores, batch["attributes"], batch["concept"], batch["index"])
        own_scores.append(scores.gather(1, batch["concept"].unsqueeze(1)).squeeze(1))
        concepts.append(batch["concept"])
        races.append(batch["attributes"][:, race])
        # concept prediction: argmax over the 4 occupations of the answer's first-character probability (one forward;
        # the occupations have distinct first characters)
        inputs = module.mllm.build_inputs([info.questions[0]] * len(batch["index"]), [""] * len(batch["index"]))
        logits = module.mllm(batch["image"], inputs["input_ids"], inputs["attention_mask"])  # (B, L, V)
        pos = inputs["prompt_lengths"]  # input at pos is the answer's leading " "; its logits predict the first letter
        preds.append(logits[torch.arange(len(pos)), pos][:, first].argmax(-1))  # (B,)
    out = {k: float(v) for k, v in metric.compute().items()}
    own, concept, hue, pred = torch.cat(own_scores), torch.cat(concepts), torch.cat(races), torch.cat(preds)
    hit = pred == concept
    out["concept_acc"] = 100.0 * float(hit.float().mean())
    # the stereotype in plain numbers (digit k's stereotyped hue is RACES[k mod 2], as in the biased pre-training set)
    stereo_of = stereotyped_race_ids(info)  # (C,)
    stereo = hue == stereo_of[concept]
    out["acc_stereotyped_hue"] = 100.0 * float(hit[stereo].float().mean())
    out["acc_other_hue"] = 100.0 * float(hit[~stereo].float().mean())
    # errors that follow the stereotype: the wrong answer is an occupation whose stereotyped hue is the image's hue.
    # Chance: for uniformly spread errors, 2 of the 3 wrong occupations on other-hue images, 1 of 3 on stereotyped ones
    wrong = ~hit
    follows = stereo_of[pred] == hue
    out["errors_following_stereotype"] = 100.0 * float(follows[wrong].float().mean()) if wrong.any() else float("nan")
    chance = torch.where(stereo, torch.tensor(1 / 3), torch.tensor(2 / 3))
    out["errors_following_stereotype_chance"] = 100.0 * float(chance[wrong].mean()) if wrong.any() else float("nan")
    # paired test of the stereotype: every counterfactual set renders one glyph under both hues (per border), so
    # compare the two renders' scores; share of pairs where the stereotyped-hue render wins (ties ½; 50 = no bias)
    gender = info.attribute_types.index("gender")
    pairs: dict[tuple[str, int], dict[bool, float]] = {}
    for j, i in enumerate(int(item["index"]) for item in items):  # the loader above is not shuffled
        pairs.setdefault((ds._sets[i], int(ds.attribute_ids[i, gender])), {})[bool(stereo[j])] = float(own[j])
    wins = [0.5 if p[True] == p[False] else float(p[True] > p[False]) for p in pairs.values() if len(p) == 2]
    out["paired_stereotype_win_rate"] = 100.0 * statistics.mean(wins)
    rates = []
    for c in range(len(info.concepts)):  # share of the stereotyped hue among the top 25 % of concept c's pool
        pool = (concept == c).nonzero().squeeze(1)
        k = max(1, round(0.25 * pool.numel()))
        top = pool[own[pool].topk(k).indices]
        rates.append(float(stereo[top].float().mean()))
    out["stereotype_rate_top25"] = 100.0 * statistics.mean(rates)  # 50 = no bias, 100 = full stereotype
    return out


def _fmt(r: dict[str, float]) -> str:
    return (
        f"acc {r['concept_acc']:.1f} (stereotyped hue {r['acc_stereotyped_hue']:.1f} / other {r['acc_other_hue']:.1f}), "
        f"errors following the stereotype {r['errors_following_stereotype']:.0f} % "
        f"(chance {r['errors_following_stereotype_chance']:.0f} %), "
        f"stereotype rate in top 25 % {r['stereotype_rate_top25']:.1f}, paired win rate {r.get('paired_stereotype_win_rate', float('nan')):.1f}, "
        f"race MinSkew {r['race/min_skew']:+.2f} "
        f"MaxSkew {r['race/max_skew']:+.2f}"
    )


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--general-steps", type=int, default=200, help="general pre-training steps")
    parser.add_argument("--general-lr", type=float, default=1e-3)
    parser.add_argument(
        "--pretrain-lr", type=float, default=3e-4, help="biased pre-training LR (spec: 3e-3, see docstring)"
    )
    parser.add_argument("--pretrain-steps", type=int, default=400, help="biased pre-training steps (spec: ≈400)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--control-steps",
        type=int,
        default=50,
        help="spec §8c control: steps per epoch of a large-budget run of every variant on the first seed (0 = off)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small data, few steps, no gate")
    parser.add_argument(
        "--eval-split",
        choices=["test", "val"],
        default="test",
        help="split the debias variants are scored on; 'val' (diagnostics, iterating) writes nothing and gates nothing",
    )
    parser.add_argument("--eval-sets", type=int, default=40, help="counterfactual sets per occupation in val / test")
    parser.add_argument("--trace", action="store_true", help="print the training Skew at every refresh")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--pretrained-cache", default=None, help="diagnostics: load the pre-trained state from / save it to this file"
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("repro_results.json")))
    args = parser.parse_args()
    diagnostic = args.quick or args.eval_split == "val" or set(args.variants) != set(VARIANTS)
    if args.quick:
        args.general_steps, args.pretrain_steps, args.epochs, args.steps, args.seeds = 20, 20, 2, 2, args.seeds[:2]
        args.control_steps = 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    per_seed: dict[str, list[dict[str, float]]] = {"pretrained": [], **{v: [] for v in args.variants}}
    # one pre-training (seed 0) shared by all seeds, to fit the CPU budget; the seeds vary the debias/val/test data, the
    # sampling and the resampling draws. The vision tower is trained here (the tiny model's "CLIP pre-training").
    with tempfile.TemporaryDirectory() as tmp:
        pre = build_data(Path(tmp), 0, args.quick, ("general", "biased", "val"), eval_sets=args.eval_sets)
    base = make_module(False, False, 0, trainable=("vision", "projector", "llm"))
    cache = Path(args.pretrained_cache) if args.pretrained_cache else None
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        base.load_state_dict(saved["state"])
        general = saved["general"]
    else:
        train(base, pre["general"], 1, args.general_steps, args.general_lr, 0)
        general = evaluate(base, pre["val"])
        train(base, pre["biased"], 1, args.pretrain_steps, args.pretrain_lr, 0)
        if cache is not None:
            torch.save({"state": base.state_dict(), "general": general}, cache)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    premise = evaluate(base, pre["val"])  # the validation set of seed 0 (never the test set)
    print(
        f"pre-training done ({time.time() - start:.0f}s); on the validation set: after general "
        f"{_fmt(general)}; after biased {_fmt(premise)}",
        flush=True,
    )
    premise_ok = (
        premise["concept_acc"] >= 50.0
        and premise["race/min_skew"] < -1.0
        and premise["stereotype_rate_top25"] >= STEREOTYPE_RATE_MIN
    )
    if not premise_ok and not args.quick:
        print(
            "PREMISE NOT MET (spec §8c: the pre-trained model must know the digits, acc >= 50 %, and the stereotype: "
            f"race MinSkew < -1 with the stereotyped hue >= {STEREOTYPE_RATE_MIN} % of the top 25 %); no debias runs",
            flush=True,
        )
        return 2
    control: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            data = build_data(Path(tmp), seed, args.quick, eval_sets=args.eval_sets)
        if args.control_steps and seed == args.seeds[0]:
            # spec §8c control: with a large budget every variant converges (the claim is about small budgets)
            for name in args.variants:
                module = make_module(*VARIANTS[name], seed)
                module.load_state_dict(state)
                train(module, data["debias"], args.epochs, args.control_steps, args.lr, seed)
                control[name] = evaluate(module, data[args.eval_split])
                print(f"  control (seed {seed}) {name} on {args.eval_split}: {_fmt(control[name])}", flush=True)
        per_seed["pretrained"].append(evaluate(base, data[args.eval_split]))
        for name in args.variants:
            module = make_module(*VARIANTS[name], seed)
            module.load_state_dict(state)
            train(module, data["debias"], args.epochs, args.steps, args.lr, seed, trace=args.trace)
            per_seed[name].append(evaluate(module, data[args.eval_split]))
            print(f"  seed {seed} {name} on {args.eval_split}: {_fmt(per_seed[name][-1])}", flush=True)
        print(
            f"seed {seed} done ({time.time() - start:.0f}s): "
            + ", ".join(
                f"{k} min {v[-1]['race/min_skew']:.2f} max {v[-1]['race/max_skew']:.2f} acc {v[-1]['concept_acc']:.0f}"
                for k, v in per_seed.items()
            ),
            flush=True,
        )
    keys = [
        "race/max_skew",
        "race/min_skew",
        "gender/max_skew",
        "gender/min_skew",
        "max_skew",
        "min_skew",
        "concept_acc",
        "acc_stereotyped_hue",
        "acc_other_hue",
        "errors_following_stereotype",
        "errors_following_stereotype_chance",
        "stereotype_rate_top25",
        "paired_stereotype_win_rate",
    ]
    summary = {name: {k: mean_std([r[k] for r in rows]) for k in keys} for name, rows in per_seed.items()}
    for name, s in summary.items():
        print(
            f"{name:>14}: race MinSkew {s['race/min_skew']['mean']:+.3f}±{s['race/min_skew']['std']:.3f}  "
            f"MaxSkew {s['race/max_skew']['mean']:+.3f}±{s['race/max_skew']['std']:.3f}  "
            f"acc {s['concept_acc']['mean']:.1f}±{s['concept_acc']['std']:.1f}  "
            f"stereotype rate {s['stereotype_rate_top25']['mean']:.1f}  paired win rate {s['paired_stereotype_win_rate']['mean']:.1f}"
        )
    if diagnostic:  # validation split, a subset of the variants or --quick: no gate, nothing written
        print(f"diagnostic run on the {args.eval_split} split ({time.time() - start:.0f}s): no gate")
        return 0
    ft, asd = summary["FT"], summary["ASD"]
    gate = {
        "asd_abs_min_skew_below_ft": abs(asd["race/min_skew"]["mean"]) < abs(ft["race/min_skew"]["mean"]),
        "asd_max_skew_below_ft": asd["race/max_skew"]["mean"] < ft["race/max_skew"]["mean"],
        "asd_acc_within_2_points_of_ft": asd["concept_acc"]["mean"] >= ft["concept_acc"]["mean"] - 2.0,
    }
    between = {
        name: abs(asd["race/min_skew"]["mean"])
        <= abs(summary[name]["race/min_skew"]["mean"])
        <= abs(ft["race/min_skew"]["mean"])
        for name in ("resample_only", "sfloss_only")
    }
    passed = all(gate.values())
    result = {
        "experiment": "spec §8c: digits stereotype, FT vs resample-only vs SFLoss-only vs ASD (tiny LLaVA, CPU)",
        "settings": vars(args)
        | {
            "scorer": "answer_logprob",
            "skew": "topk K=25%, laplace, clip 3",
            "pretraining": "general (balanced clean digits, AdamW general_lr) then biased (90% hue, σ=0.6 + erasing, "
            "AdamW pretrain_lr); vision trainable; glyphs centred (jitter=False)",
            "debias": f"vision frozen, epoch_length nominal, batch 16, AdamW {args.lr}",
            "data": "digit instances: pre-training 0-40 %, val 40-50 %, debias 50-75 %, test 75-100 %; "
            f"debias 10 sets per occupation, val/test {args.eval_sets}",
        },
        "seeds": args.seeds,
        "premise (validation set of seed 0, before debiasing)": {
            "after_general_pretraining": general,
            "after_biased_pretraining": premise,
            "met": premise_ok,
        },
        "summary": summary,
        "per_seed": per_seed,
        "gate": gate,
        "components_between_ft_and_asd_on_min_skew (not gated)": between,
        "control_large_budget (first seed, not gated)": control,
        "paired_stereotype_win_rate_below_ft (not gated; 50 = no bias)": {
            name: summary[name]["paired_stereotype_win_rate"]["mean"] < ft["paired_stereotype_win_rate"]["mean"]
            for name in ("resample_only", "sfloss_only", "ASD")
        },
        "passed": passed,
        "seconds": round(time.time() - start, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("gate:", gate, "components between:", between, "PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
