"""The miniature's harness (repro.py, spec §8c): the adapter's training depth and the --cache file's training flags."""

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from mmzoo.testing import load_script

from evedit.data import synthetic_clip
from evedit.models import ModelConfig, build_components
from evedit.pipeline import EVEPipeline

repro = load_script(Path(__file__).resolve().parents[1] / "repro.py")

S, FRAMES = 16, 4  # the CPU preset's frame size; frames of the clip


@pytest.fixture
def pipe(monkeypatch) -> EVEPipeline:
    """The CPU preset's untrained miniature (pixel space, widths 16/32)."""
    monkeypatch.setattr(repro, "SIZE", S)
    cfg = ModelConfig(
        backbone="tiny",
        depth_model="precomputed",
        tiny_pixel_space=True,
        tiny_channels=[16, 32],
        tiny_max_length=12,
        tiny_pixel_scale=4.4,
    )
    p = EVEPipeline.from_components(build_components(cfg))
    p.set_progress_bar_config(disable=True)
    return p


def _modules(p: EVEPipeline) -> dict[str, torch.nn.Module]:
    return {"unet": p.unet, "adapter": p.depth_encoder, "text": p.text_encoder}


def test_adapter_is_trained_on_the_depth_it_is_given_at_edit_time(pipe, monkeypatch):
    """One synthetic scene: the adapter's input during training (its frames as a training batch) equals its input
    when the pipeline edits the scene as a clip, i.e. the depth normalised by prepare_depth, not the raw depth."""
    clip = synthetic_clip(FRAMES, S, "red", "circle", seed=11)
    assert clip["depth"].min() >= 0.2  # raw: background 0.2-0.5, object 1.0, so normalising changes it
    caption = repro.caption("red", "circle")
    monkeypatch.setattr(repro, "sample_frames", lambda n, g: (clip["frames"][:n], clip["depth"][:n], [caption] * n))
    seen: list[torch.Tensor] = []
    hook = pipe.depth_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        repro.train(pipe, 0, 1, FRAMES)  # no UNet step, one adapter step on the scene's frames
        trained_on = seen[-1]
        pipe(
            clip["frames"],
            caption,
            repro.caption("blue", "circle"),
            depth=clip["depth"],
            config=repro.variants(2, 3.0)["full"],
            generator=torch.Generator().manual_seed(0),
        )
        edited_with = seen[-1]
    finally:
        hook.remove()
    assert len(seen) == 2 and edited_with.shape == (FRAMES, 3, S, S)
    torch.testing.assert_close(trained_on, edited_with, rtol=0, atol=1e-6)
    assert edited_with.min().item() == 0.0 and edited_with.max().item() == pytest.approx(1.0)


def _args(**changes) -> argparse.Namespace:
    base = {
        "size": S,
        "channels": [16, 32],
        "train_steps": 3,
        "adapter_steps": 2,
        "batch": 4,
        "lr": 1e-3,
        "pixel_scale": 4.4,
    }
    return argparse.Namespace(**{**base, **changes})


def test_cache_is_reused_only_with_the_training_flags_it_was_made_with(pipe, tmp_path):
    ecfg = repro.variants(2, 3.0)["full"]
    flags = repro.training_flags(_args(), ecfg)
    path = tmp_path / "models.pt"
    saved = {k: v.clone() for k, v in pipe.depth_encoder.state_dict().items()}
    repro.save_cache(path, flags, _modules(pipe), {"adapter": {"final_loss": 0.5}})
    with torch.no_grad():
        for param in pipe.depth_encoder.parameters():
            param.add_(1.0)
    assert repro.load_cache(path, flags, _modules(pipe)) == {"adapter": {"final_loss": 0.5}}
    for k, v in pipe.depth_encoder.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)

    other = repro.training_flags(_args(train_steps=1500, pixel_scale=1.0), ecfg)
    with pytest.raises(ValueError, match=r"models\.pt.*--train-steps: cache 3, this run 1500; --pixel-scale: cache 4"):
        repro.load_cache(path, other, _modules(pipe))
    frame_norm = dataclasses.replace(ecfg, depth=dataclasses.replace(ecfg.depth, norm="frame"))
    with pytest.raises(ValueError, match=r"adapter_depth: cache 'prepare_depth\(norm=video"):
        repro.load_cache(path, repro.training_flags(_args(), frame_norm), _modules(pipe))
    state = torch.load(path)
    del state["text"]
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"models\.pt: missing entries \['text'\]"):
        repro.load_cache(path, flags, _modules(pipe))


def test_main_refuses_a_cache_without_or_with_other_training_flags(pipe, tmp_path, capsys, monkeypatch):
    """Through the command line: a cache written without flags (as before they were stored) and one trained with
    other steps stop the run before anything is edited; the error names the file and the differing flag only."""
    path = tmp_path / "models.pt"
    torch.save({**{k: m.state_dict() for k, m in _modules(pipe).items()}, "log": {}}, path)
    monkeypatch.setattr(sys, "argv", ["repro.py", "--quick", "--cache", str(path)])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            repro.main()
        assert exit_info.value.code == 2
        assert f"--cache {path}: the file records no training flags" in capsys.readouterr().err
        quick = _args(train_steps=1500, adapter_steps=2, batch=4, pixel_scale=1.0 / repro.pixel_latent_rms(size=S))
        repro.save_cache(path, repro.training_flags(quick, repro.variants(2, 3.0)["full"]), _modules(pipe), {})
        with pytest.raises(SystemExit):
            repro.main()
        err = capsys.readouterr().err
        assert "(--train-steps: cache 1500, this run 2);" in err  # --quick trains 2 steps; nothing else differs
    finally:
        torch.set_num_threads(threads)
