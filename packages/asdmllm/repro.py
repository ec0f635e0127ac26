"""Spec §8c in miniature: a tiny LLaVA that learned a stereotype is de-biased faster by ASD than by plain FT.

1. Data (scikit-learn digits 0–3 = four "occupations"; background hue = race, border = gender), written in the
   SocialCounterfactuals format and read back with the package's reader. Digit instances: the two pre-training sets
   share the first 40 % of each class; validation 40–50 %, debias 50–75 %, test 75–100 %.
   * general pre-training set: clean digits under every hue × border (balanced);
   * biased pre-training set: digit k shown with hue ``RACES[k mod 2]`` in 90 % of images, glyph degraded (noise
     σ=0.6, erasing) — the stereotype;
   * counterfactual debias set: clean digits rendered under every hue × border (balanced), every digit instance of its
     range once (``--debias-set every_instance``, spec §8c, since round 7; before, 10 sets per occupation drew their
     glyphs with replacement: ``--debias-set sampled``);
   * held-out counterfactual validation set (premise checks, diagnostics) and test set (the gate). The test set
     renders every digit instance of its range once (``--test-set every_test_instance``, since round 6; before, 40 sets
     per occupation drew their glyphs with replacement, ≈ 26 distinct glyphs per occupation: ``--test-set sampled``).
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
   Noise (not gated): per seed a paired bootstrap of ASD − FT over the test images (digit instances resampled within
   each occupation; evaluation sampling only) beside the between-seed spread; ``--pool FILE ...`` pools the per-seed
   differences of several result files (mean and 95 % t-interval).

Run: ``uv run --no-sync python packages/asdmllm/repro.py`` (``--quick`` for a smoke run; ``--eval-split val`` scores
on the validation split, gates nothing and writes nothing). Exit 1 when the gate fails, exit 2 when the premise is
not met.
"""

from __future__ import annotations

import argparse
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

from asdmllm.data import SocialCounterfactualsDataset, collate, glyph_pools, make_socialcounterfactuals
from asdmllm.metrics import SkewMetric, max_min_skew, per_sample_skew, skew_table
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


# counterfactual splits per test-set protocol: split → (seed offset, digit-instance fraction, every instance once?).
# * "sampled" (up to round 5): the debias set draws 10 sets per occupation from 50–75 %, the test set draws
#   ``eval_sets`` sets per occupation with replacement from 75–100 % (≈ 26 distinct glyphs per occupation for 40 sets).
# * "every_test_instance" (default since round 6): the same debias set (identical training), the test set renders every
#   instance of 75–100 % once (45–46 glyphs per occupation, none repeated): only the evaluation changes.
# * "every_instance" (round 6, first try; not the default because it also changes the training data): the debias set
#   draws from 50–60 %, the test set renders every instance of 60–100 % once (71–74 per occupation).
# The validation split is the same in all three.
CF_SPLITS = {
    "sampled": {"debias": (1, (0.5, 0.75), False), "val": (3, (0.4, 0.5), False), "test": (2, (0.75, 1.0), False)},
    "every_test_instance": {
        "debias": (1, (0.5, 0.75), False),
        "val": (3, (0.4, 0.5), False),
        "test": (2, (0.75, 1.0), True),
    },
    "every_instance": {
        "debias": (1, (0.5, 0.6), False),
        "val": (3, (0.4, 0.5), False),
        "test": (2, (0.6, 1.0), True),
    },
}


def build_data(
    root: Path,
    seed: int,
    quick: bool,
    names=("debias", "val", "test"),
    eval_sets: int = 40,
    test_set: str = "every_test_instance",
    debias_set: str = "every_instance",
):
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
    # val: digit instances of none of the other sets (premise checks and diagnostics); test: the gate
    for name in ("debias", "val", "test"):
        if name in names:
            offset, fraction, each_once = CF_SPLITS[test_set][name]
            if name == "debias":  # spec §8c: "every clean digit image rendered in both hues"
                each_once = debias_set == "every_instance" and not quick
                n = 10**6 if each_once else n_cf
            else:
                n = 10**6 if each_once and not quick else n_eval  # each once: the whole pool
            make_socialcounterfactuals(
                root / name,
                OCCUPATIONS,
                RACES,
                GENDERS,
                n,
                32,
                seed + offset,
                "digits",
                fraction,
                jitter=False,
                each_instance_once=each_once,
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


SAMPLER_SEED_STRIDE = 1_000_000  # seed s shuffles with sampler seed s·stride (see debias_sampler)


def debias_sampler(num_samples: int, seed: int) -> ResampledEpochSampler:
    """The training sampler of one run of ``seed``: fixed epoch length (equal step budget for every variant).

    Its plain shuffle (FT, SFLoss-only) is the permutation of sampler seed + epoch (+ 100 000 per extra pass, see
    :func:`take_steps`). With the sampler seed equal to the run's seed, consecutive seeds shared their shuffles shifted
    by one epoch (seed 1's epochs 0-3 were seed 0's epochs 1-4; the seeds' debias sets hold the same images at the same
    indices, up to pixel noise), so the FT and SFLoss-only runs of "different seeds" saw the same batches. Seed s now
    shuffles with sampler seed s·``SAMPLER_SEED_STRIDE``: seed 0 is unchanged, and no two seeds share a permutation."""
    return ResampledEpochSampler(num_samples, SAMPLER_SEED_STRIDE * seed, fixed_length=True)


def take_steps(loader: DataLoader, sampler: ResampledEpochSampler, steps: int):
    """Exactly ``steps`` batches from ``loader``: truncated, or re-iterated (a fresh shuffle per pass when no resampled
    list is installed) when one pass is shorter. (The first version of this script stopped after one pass, so its
    "200 pre-training steps" were 40.)"""
    if len(loader) == 0:
        raise ValueError("take_steps: the loader yields no batch")
    done, passes, epoch = 0, 0, sampler.epoch
    listed = sampler.indices  # the resampled list, if one is installed
    while done < steps:
        sampler.set_epoch(epoch + 100_000 * passes)
        if listed is not None and sampler.fixed_length:
            # continue through the resampled list where the last pass stopped (each pass serves ``num_samples`` of its
            # cyclic repetition); before this fix every pass restarted at the list's head, so a run longer than one
            # pass (the large-budget control) only ever saw the first ``num_samples`` entries of a longer list
            sampler.set_indices(listed.roll(-((passes * sampler.num_samples) % listed.numel())))
        for batch in loader:
            yield batch
            done += 1
            if done >= steps:
                break
        passes += 1
    sampler.set_epoch(epoch)
    if listed is not None:
        sampler.set_indices(listed)


PRETRAIN_WEIGHT_DECAY = 0.01  # torch's AdamW default, with which the pre-trained model was made
DEBIAS_WEIGHT_DECAY = 0.0  # the package's (ASDModule weight_decay, spec §3.6: AdamW, weight decay 0)


def train(
    module: ASDModule,
    data,
    epochs: int,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 16,
    trace: bool = False,
    weight_decay: float = DEBIAS_WEIGHT_DECAY,
) -> dict[str, int]:
    """``epochs`` × ``steps`` AdamW steps; ASD's Skew refresh + resampling at each epoch start (as ASDModule does).

    Returns the budget actually spent: optimizer ``steps`` and training ``samples`` (the same for every variant: the
    resampled list changes an epoch's composition, not its length), and ``listed``, the summed length of the
    resampled lists (the nominal epoch length for plain shuffling)."""
    ds, items = data
    info = ds.info("train")
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sampler = debias_sampler(len(items), seed)  # equal step budget for every variant
    probe = DataLoader(items, batch_size=64, collate_fn=collate)
    debias = module.debias
    budget = {"steps": 0, "samples": 0, "listed": 0}
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
        budget["listed"] += len(items) if sampler.indices is None else sampler.indices.numel()
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
            budget["steps"] += 1
            budget["samples"] += len(batch["index"])
    return budget


def stereotyped_race_ids(info) -> torch.Tensor:
    """(C,) the race-value id (in ``info``'s order) of each concept's stereotyped hue: digit k ↔ ``RACES[k mod 2]``.

    The reader sorts concepts and attribute values alphabetically, so neither the concept id nor the race id is the
    generator's index; the first version of this script compared them directly (``hue == concept % 2``), which was
    right for two of the four occupations and wrong for the other two — a perfect stereotype read as a 50 % rate.
    """
    races = info.attribute_values[info.attribute_types.index("race")]
    return torch.tensor([races.index(RACES[OCCUPATIONS.index(c) % len(RACES)]) for c in info.concepts])


def counterfactual_instances(
    n_sets: int, seed: int, fraction: tuple[float, float], each_once: bool = False
) -> dict[str, int]:
    """Set id → the digit instance its glyph was drawn from (occupation k's j-th instance → ``1000·k + j``).

    Replays :func:`make_socialcounterfactuals`' draws for balanced, centred, clean sets (per set: the instance, then
    the pixel noise); ``tests/test_repro.py`` checks the replay against the generated images. Drawn with replacement
    (``each_once=False``), a split of ``n_sets`` sets per occupation holds fewer distinct glyphs than sets."""
    rng = np.random.default_rng(seed)
    pools = glyph_pools("digits", len(OCCUPATIONS), fraction)
    out = {}
    for k, occupation in enumerate(OCCUPATIONS):
        for s in range(min(n_sets, len(pools[k])) if each_once else n_sets):
            j = s if each_once else int(rng.integers(len(pools[k])))
            rng.normal(0, 6, (32, 32, 3))  # the set's pixel noise
            out[f"a_photo_of_race_gender_{occupation}_{s}"] = 1000 * k + j
    return out


@torch.no_grad()
def evaluate(module: ASDModule, data, keep: dict | None = None) -> dict[str, float]:
    """Scores one split; ``keep`` (optional) receives the per-image tensors (``own`` score, ``pred``, ``concept``,
    ``race``) and ``sets`` (set id of each image), in the split's row order, for the paired bootstrap."""
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
        key = (ds.counterfactual_sets[i], int(ds.attribute_ids[i, gender]))
        pairs.setdefault(key, {})[bool(stereo[j])] = float(own[j])
    wins = [0.5 if p[True] == p[False] else float(p[True] > p[False]) for p in pairs.values() if len(p) == 2]
    out["paired_stereotype_win_rate"] = 100.0 * statistics.mean(wins)
    rates = []
    for c in range(len(info.concepts)):  # share of the stereotyped hue among the top 25 % of concept c's pool
        pool = (concept == c).nonzero().squeeze(1)
        k = max(1, round(0.25 * pool.numel()))
        top = pool[own[pool].topk(k).indices]
        rates.append(float(stereo[top].float().mean()))
    out["stereotype_rate_top25"] = 100.0 * statistics.mean(rates)  # 50 = no bias, 100 = full stereotype
    if keep is not None:
        keep.update(
            own=own,
            pred=pred,
            concept=concept,
            race=hue,
            sets=[ds.counterfactual_sets[int(item["index"])] for item in items],
        )
    return out


def race_skew_and_acc(kept: dict, rows: torch.Tensor, group_ids: list[int], sc: SkewConfig) -> dict[str, float]:
    """Race MaxSkew / MinSkew and concept accuracy of the images ``rows`` (repeats allowed) of one ``evaluate``'s
    ``keep``, computed as :class:`SkewMetric` computes them (own-concept pools, K = ``sc.topk`` of each pool)."""
    own, concept = kept["own"][rows], kept["concept"][rows]
    scores = torch.full((rows.numel(), len(group_ids)), float("nan"))
    scores[torch.arange(rows.numel()), concept] = own
    table = skew_table(
        scores,
        kept["race"][rows].unsqueeze(1),
        concept,
        [len(RACES)],
        group_ids,
        sc.mode,
        sc.topk,
        sc.zero_count,
        sc.alpha,
        sc.clip,
    )
    max_skew, min_skew = max_min_skew(table)
    acc = 100.0 * float((kept["pred"][rows] == concept).float().mean())
    return {"race/min_skew": float(min_skew[0]), "race/max_skew": float(max_skew[0]), "concept_acc": acc}


def paired_bootstrap(
    ref: dict, new: dict, clusters: list[int], group_ids: list[int], sc: SkewConfig, n_boot: int, seed: int
) -> dict[str, dict[str, float]]:
    """Paired bootstrap over the test images of ``new − ref`` (e.g. ASD − FT, both scored on the same images).

    The resampling unit is the digit instance (``clusters``, one id per image: the 4 renders of a set share a glyph,
    and sets drawn from the same instance share it too), drawn with replacement within each occupation so that every
    pool keeps its concept; both variants see the same draw. → per statistic the observed difference, the bootstrap
    standard deviation and the 95 % percentile interval (evaluation-sampling noise only: the trained models are fixed).
    """
    gen = torch.Generator().manual_seed(seed)
    concept = ref["concept"]
    ids = torch.tensor(clusters)
    strata = []  # per concept: the image rows of each of its clusters
    for c in concept.unique().tolist():
        rows = (concept == c).nonzero().squeeze(1)
        strata.append([rows[ids[rows] == u] for u in ids[rows].unique().tolist()])
    everything = torch.arange(concept.numel())
    observed = {
        k: v - race_skew_and_acc(ref, everything, group_ids, sc)[k]
        for k, v in race_skew_and_acc(new, everything, group_ids, sc).items()
    }
    draws: dict[str, list[float]] = {k: [] for k in observed}
    for _ in range(n_boot):
        rows = torch.cat(
            [members[int(p)] for members in strata for p in torch.randint(len(members), (len(members),), generator=gen)]
        )
        a, b = race_skew_and_acc(ref, rows, group_ids, sc), race_skew_and_acc(new, rows, group_ids, sc)
        for k in draws:
            draws[k].append(b[k] - a[k])
    out = {}
    for k, values in draws.items():
        v = torch.tensor(values)
        out[k] = {
            "observed": observed[k],
            "std": float(v.std()),
            "ci95": [float(v.quantile(0.025)), float(v.quantile(0.975))],
        }
    return out


def noise_summary(per_seed: dict[str, list[dict]], boot: dict[int, dict], images: dict[int, dict]) -> dict:
    """ASD − FT per seed, its spread between seeds (training randomness + the seed's data draws + evaluation
    sampling) and within a seed (the paired bootstrap: evaluation sampling alone), and the standard error of the
    seed mean the gate compares."""
    out: dict = {"scored_images_per_seed": {str(k): v for k, v in images.items()}, "asd_minus_ft": {}}
    for k in ("concept_acc", "race/min_skew", "race/max_skew"):
        diffs = [a[k] - f[k] for a, f in zip(per_seed["ASD"], per_seed["FT"])]
        between = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        within = math.sqrt(statistics.mean(b[k]["std"] ** 2 for b in boot.values()))
        out["asd_minus_ft"][k] = {
            "per_seed": diffs,
            "per_seed_ci95": [boot[seed][k]["ci95"] for seed in boot],
            "mean": statistics.mean(diffs),
            "between_seed_std": between,
            "within_seed_std": within,
            "std_of_seed_mean": between / math.sqrt(len(diffs)),
        }
    return out


def pool_results(paths: list[str]) -> dict[str, dict[str, float]]:
    """ASD − FT per seed pooled over result files (seeds must not repeat): mean, std, standard error and the 95 %
    t-interval of the mean, per gated statistic. The files' protocols should agree (see their ``settings``)."""
    from scipy.stats import t as student_t

    diffs: dict[str, list[float]] = {"concept_acc": [], "race/min_skew": [], "race/max_skew": []}
    seeds: list[int] = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        if set(seeds) & set(result["seeds"]):
            raise ValueError(f"--pool: {path} repeats seeds {sorted(set(seeds) & set(result['seeds']))}")
        seeds += result["seeds"]
        for ft, asd in zip(result["per_seed"]["FT"], result["per_seed"]["ASD"]):
            for k in diffs:
                diffs[k].append(asd[k] - ft[k])
    out = {}
    for k, values in diffs.items():
        mean, std = statistics.mean(values), statistics.stdev(values)
        half = float(student_t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
        out[k] = {"seeds": len(values), "mean": mean, "std": std, "ci95": [mean - half, mean + half]}
        print(
            f"ASD − FT {k} over seeds {seeds}: mean {mean:+.3f}, std {std:.3f}, 95 % CI of the mean "
            f"[{mean - half:+.3f}, {mean + half:+.3f}]; per seed {', '.join(f'{v:+.2f}' for v in values)}"
        )
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
    parser.add_argument(
        "--eval-sets",
        type=int,
        default=40,
        help="counterfactual sets per occupation in val (and in test with --test-set sampled)",
    )
    parser.add_argument(
        "--test-set",
        choices=list(CF_SPLITS),
        default="every_test_instance",
        help="every_test_instance (default since round 6): the test set renders every digit instance of 75-100 %% "
        "once; sampled (rounds <= 5): --eval-sets sets per occupation drawn with replacement from 75-100 %%; "
        "every_instance: debias from 50-60 %% instead of 50-75 %%, test every instance of 60-100 %% once",
    )
    parser.add_argument(
        "--debias-set",
        choices=["every_instance", "sampled"],
        default="every_instance",
        help="every_instance (default since round 7; spec §8c: every clean digit image of the debias range, rendered "
        "under every hue x border, each once: 179 sets, 716 images); sampled (rounds <= 6): 10 sets per occupation, "
        "glyphs drawn with replacement (33-38 distinct glyphs, 160 images)",
    )
    parser.add_argument("--trace", action="store_true", help="print the training Skew at every refresh")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--pretrained-cache", default=None, help="diagnostics: load the pre-trained state from / save it to this file"
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="paired bootstrap draws over the scored images for ASD − FT per seed (0 = off; not gated)",
    )
    parser.add_argument(
        "--dump", default=None, help="save the per-image scores / predictions of every run (torch.save)"
    )
    parser.add_argument(
        "--bootstrap-unit",
        choices=["instance", "set", "image"],
        default="instance",
        help="what the paired bootstrap resamples: digit instances (default; renders of one glyph are correlated), "
        "counterfactual sets or single images (both understate the evaluation noise)",
    )
    parser.add_argument(
        "--pool",
        nargs="+",
        default=None,
        help="no training: pool ASD − FT per seed over these result files and print mean and 95 %% CI",
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("repro_results.json")))
    args = parser.parse_args()
    if args.pool:
        pool_results(args.pool)
        return 0
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
        pre = build_data(
            Path(tmp), 0, args.quick, ("general", "biased", "val"), eval_sets=args.eval_sets, test_set=args.test_set
        )
    base = make_module(False, False, 0, trainable=("vision", "projector", "llm"))
    cache = Path(args.pretrained_cache) if args.pretrained_cache else None
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        base.load_state_dict(saved["state"])
        general = saved["general"]
    else:
        train(base, pre["general"], 1, args.general_steps, args.general_lr, 0, weight_decay=PRETRAIN_WEIGHT_DECAY)
        general = evaluate(base, pre["val"])
        train(base, pre["biased"], 1, args.pretrain_steps, args.pretrain_lr, 0, weight_decay=PRETRAIN_WEIGHT_DECAY)
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
    boot: dict[int, dict] = {}  # seed → paired bootstrap of ASD − FT
    images: dict[int, dict[str, int]] = {}  # seed → scored images, counterfactual sets, distinct digit instances
    dumps: dict[int, dict] = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            data = build_data(
                Path(tmp),
                seed,
                args.quick,
                eval_sets=args.eval_sets,
                test_set=args.test_set,
                debias_set=args.debias_set,
            )
        if args.control_steps and seed == args.seeds[0]:
            # spec §8c control: with a large budget every variant converges (the claim is about small budgets)
            for name in args.variants:
                module = make_module(*VARIANTS[name], seed)
                module.load_state_dict(state)
                train(module, data["debias"], args.epochs, args.control_steps, args.lr, seed)
                control[name] = evaluate(module, data[args.eval_split])
                print(f"  control (seed {seed}) {name} on {args.eval_split}: {_fmt(control[name])}", flush=True)
        kept: dict[str, dict] = {"pretrained": {}}
        per_seed["pretrained"].append(evaluate(base, data[args.eval_split], kept["pretrained"]))
        for name in args.variants:
            module = make_module(*VARIANTS[name], seed)
            module.load_state_dict(state)
            budget = train(module, data["debias"], args.epochs, args.steps, args.lr, seed, trace=args.trace)
            kept[name] = {}
            per_seed[name].append(evaluate(module, data[args.eval_split], kept[name]) | budget)
            print(f"  seed {seed} {name} on {args.eval_split}: {_fmt(per_seed[name][-1])}, budget {budget}", flush=True)
        offset, fraction, each_once = CF_SPLITS[args.test_set][args.eval_split]
        n_sets = 10**6 if each_once else len(set(kept["pretrained"]["sets"])) // len(OCCUPATIONS)
        instance_of = counterfactual_instances(n_sets, seed + offset, fraction, each_once)
        clusters = {  # the bootstrap's resampling unit (instance: the honest one; set / image ignore shared glyphs)
            "instance": [instance_of[s] for s in kept["pretrained"]["sets"]],
            "set": [sorted(instance_of).index(s) for s in kept["pretrained"]["sets"]],
            "image": list(range(len(kept["pretrained"]["sets"]))),
        }[args.bootstrap_unit]
        images[seed] = {
            "images": len(clusters),
            "sets": len(set(kept["pretrained"]["sets"])),
            "instances": len({instance_of[s] for s in kept["pretrained"]["sets"]}),
        }
        if args.bootstrap and {"FT", "ASD"} <= set(args.variants):
            group_ids = data[args.eval_split][0].info("test").group_ids
            sc = make_module(False, False, seed).skew_config
            boot[seed] = paired_bootstrap(kept["FT"], kept["ASD"], clusters, group_ids, sc, args.bootstrap, seed)
            for k, b in boot[seed].items():  # the helper reproduces evaluate()'s numbers
                assert abs(b["observed"] - (per_seed["ASD"][-1][k] - per_seed["FT"][-1][k])) < 1e-4, k
            print(
                f"  seed {seed} ASD − FT, paired bootstrap over {images[seed]}: "
                + ", ".join(
                    f"{k} {b['observed']:+.3f} [{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}]"
                    for k, b in boot[seed].items()
                ),
                flush=True,
            )
        if args.dump:
            dumps[seed] = {name: {k: v for k, v in d.items()} | {"clusters": clusters} for name, d in kept.items()}
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
    noise = noise_summary(per_seed, boot, images) if boot else {}
    for k, v in noise.get("asd_minus_ft", {}).items():
        print(
            f"ASD − FT {k}: per seed {', '.join(f'{d:+.3f}' for d in v['per_seed'])}; between-seed std "
            f"{v['between_seed_std']:.3f}, within-seed (bootstrap) std {v['within_seed_std']:.3f}, "
            f"std of the {len(args.seeds)}-seed mean {v['std_of_seed_mean']:.3f}",
            flush=True,
        )
    if args.dump:
        torch.save(dumps, args.dump)
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
            "debias": f"vision frozen, epoch_length nominal, batch 16, AdamW {args.lr} (weight decay {DEBIAS_WEIGHT_DECAY})",
            "data": "digit instances: pre-training 0-40 %, val 40-50 %, "
            + {
                "every_instance": "debias 50-60 %, test 60-100 %; ",
                "every_test_instance": "debias 50-75 %, test 75-100 %; ",
                "sampled": "debias 50-75 %, test 75-100 %; ",
            }[args.test_set]
            + {
                "every_instance": "debias every instance once",
                "sampled": "debias 10 sets per occupation (drawn with replacement)",
            }[args.debias_set]
            + f", val {args.eval_sets}"
            + (
                f", test {args.eval_sets} (drawn with replacement)"
                if args.test_set == "sampled"
                else ", test every instance once"
            ),
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
        "noise (ASD − FT per seed with a paired bootstrap over the scored images; not gated)": noise,
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
