"""Every shipped YAML parses against the CLI (as --print_config does); option values outside their choices are
refused when configs, modules, functions and readers are used from Python."""

import re

import pytest
import torch
import torch.nn.functional as F
from mmzoo.cli import shipped_configs

from shenet.cli import main
from shenet.data import MSRVTTDataset, SHENetDataModule
from shenet.hierarchy import ParserConfig
from shenet.models import SHENetConfig, TextFeatures, VideoFeatures, hierarchy_enhance, syntax_guided_similarity
from shenet.module import SHENetModule

CONFIGS = shipped_configs("shenet")


def test_expected_configs_are_shipped():
    for name in ("tiny", "demo", "msrvtt", "msvd", "didemo", "activitynet"):
        assert name in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_print_config(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args=["fit", "--config", name, "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "model:" in out and "data:" in out


def _features():
    """One text (one verb, one noun attached to it) and one video of two frames of two patches, D = 4."""
    g = torch.Generator().manual_seed(0)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    verbs, nouns = unit(1, 1, 4), unit(1, 1, 4)
    ones = torch.ones(1, 1, dtype=torch.bool)
    text = TextFeatures(unit(1, 4), verbs, nouns, verbs, nouns, ones, ones, torch.zeros(1, 1, dtype=torch.long))
    video = VideoFeatures(unit(1, 4), unit(1, 2, 4), unit(1, 2, 2, 4), torch.ones(1, 2, dtype=torch.bool))
    return text, video


def _enhance(mode):
    text, _ = _features()
    return hierarchy_enhance(text.verbs, text.nouns, None, text.noun_mask, None, text.noun_parent, None, mode)


def _config(**kw):
    return SHENetConfig(**{"clip_model": "custom", "random_init": True, **kw})


# Each misspelling used to run another variant: an open_clip model lookup ('ViT-B/32'), meanP ('seqtransf'), the mean
# enhancement ('gate'), softmax pooling ('Max'), the parent verb's frame weights ('verb'), fixed weights ('learnt'),
# the auto parser ('spaCy'), the digits task ('msr-vtt'), or skipping unreadable videos ('Raise').
MISSPELT = {
    **{
        f"config.{key}": (lambda key=key, value=value: _config(**{key: value}), f"model.config.{key}={value!r}")
        for key, value in (
            ("clip_model", "ViT-B/32"),
            ("temporal", "seqtransf"),
            ("text_enhance", "gate"),
            ("guided_pooling", "Max"),
            ("noun_temporal", "verb"),
            ("sim_weighting", "learnt"),
        )
    },
    "hierarchy_enhance": (lambda: _enhance("gate"), "model.config.text_enhance='gate'"),
    "similarity.pooling": (
        lambda: syntax_guided_similarity(*_features(), pooling="Max"),
        "model.config.guided_pooling='Max'",
    ),
    "similarity.noun_temporal": (
        lambda: syntax_guided_similarity(*_features(), noun_temporal="verb"),
        "model.config.noun_temporal='verb'",
    ),
    "eval_feature_dtype": (
        lambda: SHENetModule(_config(), eval_feature_dtype="fp16"),
        "model.eval_feature_dtype='fp16'",
    ),
    "parser.backend": (lambda: ParserConfig(backend="spaCy"), "data.parser.backend='spaCy'"),
    "data.dataset": (lambda: SHENetDataModule(dataset="msr-vtt"), "data.dataset='msr-vtt'"),
    "data.on_corrupt": (lambda: SHENetDataModule(on_corrupt="Raise"), "data.on_corrupt='Raise'"),
    "MSRVTTDataset.on_corrupt": (
        lambda: MSRVTTDataset(".", "test", on_corrupt="Raise"),
        "data.on_corrupt='Raise'",
    ),
}


@pytest.mark.parametrize("case", list(MISSPELT))
def test_misspelt_choice_is_refused_naming_its_key(case):
    build, key = MISSPELT[case]
    with pytest.raises(ValueError, match=re.escape(key) + r": expected one of \["):
        build()


def test_listed_choices_are_accepted():
    for key, values in (
        ("temporal", ("meanP", "seqTransf")),
        ("text_enhance", ("none", "mean", "gated")),
        ("guided_pooling", ("softmax", "max")),
        ("noun_temporal", ("parent", "root", "uniform")),
        ("sim_weighting", ("fixed", "learned")),
    ):
        for value in values:
            assert getattr(_config(**{key: value}), key) == value
    verbs, nouns = _enhance("none")
    torch.testing.assert_close(verbs, _features()[0].verbs)  # 'none' leaves the inputs as they are
    for pooling in ("softmax", "max"):
        for noun_temporal in ("parent", "root", "uniform"):
            S1, S2, S3 = syntax_guided_similarity(*_features(), pooling=pooling, noun_temporal=noun_temporal)
            assert S1.shape == S2.shape == S3.shape == (1, 1)
    for backend in ("auto", "spacy", "heuristic"):
        assert ParserConfig(backend=backend).backend == backend
    dm = SHENetDataModule(dataset="digits", on_corrupt="skip")
    assert (dm.hparams.dataset, dm.hparams.on_corrupt) == ("digits", "skip")
