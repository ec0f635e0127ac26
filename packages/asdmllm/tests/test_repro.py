"""The §8c script's training loop runs exactly the requested number of steps (it once stopped after one pass)."""

import importlib.util
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from asdmllm.sampling import ResampledEpochSampler


def _repro():
    spec = importlib.util.spec_from_file_location("asdmllm_repro", Path(__file__).parents[1] / "repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
