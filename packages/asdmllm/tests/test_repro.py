"""The §8c script's training loop runs exactly the requested number of steps (it once stopped after one pass)."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from mmzoo.testing import load_script
from PIL import Image
from torch.utils.data import DataLoader

from asdmllm.sampling import ResampledEpochSampler


def _repro():
    return load_script(Path(__file__).parents[1] / "repro.py")


def test_take_steps_cycles_and_truncates():
    take_steps = _repro().take_steps
    sampler = ResampledEpochSampler(10, seed=0, fixed_length=True)
    loader = DataLoader(range(10), batch_size=4, sampler=sampler, drop_last=True)  # 2 batches per pass
    batches = list(take_steps(loader, sampler, 5))
    assert len(batches) == 5 and len(list(take_steps(loader, sampler, 1))) == 1
    assert not torch.equal(batches[0], batches[2])  # a fresh shuffle on the second pass
    assert sampler.epoch == 0


def test_stereotype_mapping_follows_the_readers_sorted_vocabularies(tmp_path):
    """Digit k's stereotyped hue is RACES[k mod 2] in the generator's order; the reader sorts concepts and race values
    alphabetically, so the mapping must go through the names (the first version compared ids and was wrong for two
    of the four occupations)."""
    repro = _repro()
    from asdmllm.data import SocialCounterfactualsDataset, make_socialcounterfactuals

    make_socialcounterfactuals(
        tmp_path, repro.OCCUPATIONS, repro.RACES, repro.GENDERS, 12, 32, 0, "digits", bias=1.0, jitter=False
    )
    ds = SocialCounterfactualsDataset(tmp_path, "all", image_size=32, questions=repro.QUESTIONS)
    info = ds.info("train")
    assert info.concepts != repro.OCCUPATIONS  # sorted: the ids differ from the digits
    race = info.attribute_types.index("race")
    stereo = repro.stereotyped_race_ids(info)
    # with bias=1.0 every biased image carries its digit's stereotyped hue
    assert torch.equal(ds.attribute_ids[:, race], stereo[ds.concept_ids])


def test_take_steps_continues_through_a_resampled_list():
    """A run longer than one pass walks on through the (longer) resampled list instead of restarting at its head (the
    large-budget control once saw only the first ``num_samples`` entries of every resampled list)."""
    take_steps = _repro().take_steps
    sampler = ResampledEpochSampler(8, seed=0, fixed_length=True)
    listed = torch.tensor([7, 1, 1, 5, 0, 3, 3, 3, 6, 2, 4, 6])  # 12 entries, nominal epoch 8
    sampler.set_indices(listed)
    loader = DataLoader(range(8), batch_size=4, sampler=sampler, drop_last=True)
    seen = torch.cat(list(take_steps(loader, sampler, 6)))  # 3 passes of 8 samples
    assert torch.equal(seen, listed.repeat(2))
    assert torch.equal(sampler.indices, listed)  # restored for the next epoch


def test_every_variant_gets_the_same_budget(tmp_path):
    """Spec §8c 'identical budget': FT and ASD take the same optimizer steps and samples, although ASD's resampled
    lists are longer or shorter than the nominal epoch."""
    repro = _repro()
    from asdmllm.data import SocialCounterfactualsDataset, make_socialcounterfactuals

    make_socialcounterfactuals(
        tmp_path, repro.OCCUPATIONS, repro.RACES, repro.GENDERS, 2, 32, 0, "digits", jitter=False
    )
    ds = SocialCounterfactualsDataset(tmp_path, "all", image_size=32, questions=repro.QUESTIONS)
    data = (ds, [ds[i] for i in range(len(ds))])  # 32 images
    budgets = {}
    for name in ("FT", "ASD"):
        module = repro.make_module(*repro.VARIANTS[name], 0)
        budgets[name] = repro.train(module, data, epochs=2, steps=5, lr=1e-3, seed=0, batch_size=8)
    assert budgets["FT"] == {"steps": 10, "samples": 80, "listed": 64}
    assert budgets["ASD"]["steps"] == 10 and budgets["ASD"]["samples"] == 80


@pytest.mark.parametrize("each_once", [False, True])
def test_instance_replay_matches_the_generated_images(tmp_path, each_once):
    """The paired bootstrap clusters the test images by digit instance; the replay of the generator's draws must name
    the instance each set was rendered from (its glyph is the closest to the image's glyph region). ``each_once``
    (the round-6 test set) renders every instance of the pool once: no glyph repeats."""
    repro = _repro()
    from asdmllm.data import (
        SocialCounterfactualsDataset,
        glyph_pools,
        make_socialcounterfactuals,
        render_counterfactual_image,
    )

    fraction = (0.95, 1.0) if each_once else (0.75, 1.0)  # 9-10 instances per digit when each is used once
    n_sets = 100 if each_once else 5
    make_socialcounterfactuals(
        tmp_path,
        repro.OCCUPATIONS,
        repro.RACES,
        repro.GENDERS,
        n_sets,
        32,
        7,
        "digits",
        fraction,
        jitter=False,
        each_instance_once=each_once,
    )
    ds = SocialCounterfactualsDataset(tmp_path, "all", image_size=32, questions=repro.QUESTIONS)
    instance_of = repro.counterfactual_instances(n_sets, 7, fraction, each_once)
    assert set(instance_of) == set(ds.counterfactual_sets)
    pools = glyph_pools("digits", len(repro.OCCUPATIONS), fraction)
    if each_once:  # one set per instance of every pool
        assert len(set(ds.counterfactual_sets)) == sum(len(p) for p in pools) == len(set(instance_of.values()))
    names = {
        t: (ds.attribute_types.index(t), ds.attribute_values[ds.attribute_types.index(t)]) for t in ("race", "gender")
    }
    for i in range(0, len(ds), 3):
        image = np.asarray(Image.open(io.BytesIO(ds._table[ds._rows[i]]["image"]["bytes"])), dtype=np.float32)
        k, j = divmod(instance_of[ds.counterfactual_sets[i]], 1000)
        race = repro.RACES.index(names["race"][1][int(ds.attribute_ids[i, names["race"][0]])])
        gender = repro.GENDERS.index(names["gender"][1][int(ds.attribute_ids[i, names["gender"][0]])])
        errors = [  # centred glyph of a 32 px image: offset 8 (make_socialcounterfactuals, jitter=False)
            np.abs(render_counterfactual_image(g, race, gender, 32, (8, 8)).astype(np.float32) - image).mean()
            for g in pools[k]
        ]
        assert errors[j] == min(errors) and errors[j] < 8.0


def test_paired_bootstrap_and_pooling(tmp_path):
    """The bootstrap of a variant against itself is exactly 0; pooling refuses repeated seeds and averages per seed."""
    import json

    repro = _repro()
    from asdmllm.module import SkewConfig

    gen = torch.Generator().manual_seed(0)
    concept = torch.arange(4).repeat_interleave(16)
    kept = {
        "own": torch.randn(64, generator=gen),
        "pred": concept.roll(3),
        "concept": concept,
        "race": torch.arange(64) % 2,
    }
    boot = repro.paired_bootstrap(kept, kept, (torch.arange(64) // 4).tolist(), [0] * 4, SkewConfig(), 20, 0)
    assert all(b["observed"] == 0 and b["std"] == 0 for b in boot.values())

    def write(name, seeds, acc):
        rows = lambda a: [{"concept_acc": v, "race/min_skew": -1.0, "race/max_skew": 0.5} for v in a]  # noqa: E731
        (tmp_path / name).write_text(
            json.dumps({"seeds": seeds, "per_seed": {"FT": rows([80.0] * len(acc)), "ASD": rows(acc)}})
        )
        return str(tmp_path / name)

    a, b = write("a.json", [0, 1], [78.0, 79.0]), write("b.json", [5], [84.0])
    pooled = repro.pool_results([a, b])
    assert pooled["concept_acc"]["mean"] == pytest.approx(0.3333333) and pooled["race/min_skew"]["mean"] == 0
    with pytest.raises(ValueError, match="repeats seeds"):
        repro.pool_results([a, a])


@pytest.mark.parametrize("debias_set", ["every_instance", "sampled"])
def test_debias_set_renders_every_instance_once_or_samples(tmp_path, debias_set):
    from asdmllm.data import glyph_pools

    repro = _repro()
    data = repro.build_data(tmp_path, 0, False, names=("debias",), debias_set=debias_set)
    ds, items = data["debias"]
    pools = glyph_pools("digits", len(repro.OCCUPATIONS), repro.CF_SPLITS["every_test_instance"]["debias"][1])
    renders = len(repro.RACES) * len(repro.GENDERS)
    if debias_set == "every_instance":  # spec §8c: every clean digit image of the range, each once
        assert len(items) == renders * sum(len(p) for p in pools)
        instances = repro.counterfactual_instances(10**6, 1, (0.5, 0.75), each_once=True)
        assert len(set(instances.values())) == sum(len(p) for p in pools)
    else:
        assert len(items) == renders * 10 * len(repro.OCCUPATIONS)


def test_seeds_do_not_share_their_shuffles():
    """The FT / SFLoss-only shuffles of consecutive seeds are distinct permutations (they once were the same
    permutations shifted by one epoch: the sampler seed was the run's seed and the epoch was added to it); seed 0
    keeps its order."""
    repro = _repro()

    def orders(seed, epochs=5, passes=2):
        sampler = repro.debias_sampler(64, seed)
        out = []
        for epoch in range(epochs):
            for p in range(passes):  # take_steps' later passes: epoch + 100 000 per pass
                sampler.set_epoch(epoch + 100_000 * p)
                out.append(tuple(sampler))
        return out

    seen = [orders(s) for s in (0, 1, 2, 100, 101)]
    flat = [o for run in seen for o in run]
    assert len(set(flat)) == len(flat)
    assert repro.debias_sampler(64, 0).seed == 0  # seed 0 (and the pre-training) is unchanged
