"""fit / validate / test / predict on tiny.yaml through the CLI entry point (tiny random models, CPU)."""

import math

import pytest

from evedit.cli import main


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return tmp_path_factory.mktemp("evedit_run")


def _args(root, *extra):
    return [
        "--config",
        "tiny",
        "--data.data_root",
        str(root / "data"),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--model.output_dir",
        str(root / "edits"),
        *extra,
    ]


def test_predict_writes_edits_then_test_scores_them(run_root, monkeypatch):
    main(args=["predict", *_args(run_root)])
    edits = run_root / "edits"
    frames = sorted((edits / "DAVIS_480p" / "clip00" / "object").glob("*.jpg"))
    assert len(frames) == 4 and (edits / "DAVIS_480p" / "clip00" / "object" / "timing.json").is_file()
    assert (edits / "videos" / "clip00_object.mp4").stat().st_size > 0
    assert (edits / "videos" / "clip00_object.gif").stat().st_size > 0
    assert (edits / "strips" / "clip00_object.png").stat().st_size > 0
    assert (edits / "edits_rank0.csv").read_text().count("\n") == 3  # header + 2 edits
    from evedit.module import EVEModule

    def edit_again(*args, **kwargs):
        raise AssertionError("test edited a clip again instead of re-using predict's edit")

    monkeypatch.setattr(EVEModule, "edit_clip", edit_again)
    cli = main(args=["test", *_args(run_root)])  # re-uses the edits written by predict (same settings and inputs)
    m = cli.trainer.callback_metrics
    for key in (
        "test/clip_text",
        "test/clip_frame",
        "test/clip_frame_consec",
        "test/frame_acc",
        "test/depth_err",
        "test/time_s",
        "test/update_s",
    ):
        assert key in m and math.isfinite(float(m[key])), key
    assert -1.0 <= float(m["test/clip_frame"]) <= 1.0
    assert "clip_text" in (edits / "metrics_test_rank0.csv").read_text()
    # spec §3.6's cost names: epoch means of the stored per-edit timings; the stages add up to the total
    stages = [float(m[f"time/{k}"]) for k in ("depth_s", "inversion_s", "denoise_s")]
    assert all(t > 0 for t in stages) and float(m["time/total_s"]) == pytest.approx(float(m["test/time_s"]))
    assert sum(stages) <= float(m["time/total_s"]) and float(m["time/update_s"]) == float(m["test/update_s"])


def test_fit_and_validate_run_without_training(tmp_path):
    cli = main(args=["fit", *_args(tmp_path), "--trainer.max_epochs", "1"])
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    assert "val/clip_text" in cli.trainer.callback_metrics
    assert cli.trainer.optimizers == [] or all(len(o.param_groups) == 0 for o in cli.trainer.optimizers)
    after = cli.model.state_dict()
    assert all((before[k] == after[k]).all() for k in before)  # EVE optimises latents, never weights
    cli = main(args=["validate", *_args(tmp_path), "--model.reuse_edits", "false", "--data.max_items", "1"])
    update_loss = float(cli.trainer.callback_metrics["val/update_s"])
    assert update_loss >= 0.0


def test_missing_weights_name_the_key(tmp_path):
    from evedit.models import ModelConfig, build_components

    with pytest.raises(FileNotFoundError, match=r"model\.model\.pretrained_path"):
        build_components(ModelConfig(pretrained_path=None))
    with pytest.raises(FileNotFoundError, match=r"model\.model\.pretrained_path"):
        build_components(ModelConfig(pretrained_path=str(tmp_path / "sd15")))
    (tmp_path / "sd15").mkdir()
    with pytest.raises(FileNotFoundError, match="unet/"):
        build_components(ModelConfig(pretrained_path=str(tmp_path / "sd15")))
    with pytest.raises(ValueError, match=r"model\.model\.depth_model"):
        ModelConfig(depth_model="tiny")


def test_edit_command_on_one_video(tmp_path):
    from mmzoo.video import write_video

    from evedit.data import synthetic_clip

    write_video(tmp_path / "clip.mp4", synthetic_clip(4, 32)["frames"], fps=8.0)
    out = main(
        args=[
            "edit",
            str(tmp_path / "clip.mp4"),
            "--source",
            "a red circle",
            "--prompt",
            "a blue circle",
            "--config",
            "tiny",
            "--num-frames",
            "4",
            "--size",
            "32",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert out.videos[0].shape == (4, 3, 32, 32)
    assert (tmp_path / "out" / "strips" / "clip_prompt0.png").is_file()
    assert len(list((tmp_path / "out" / "edit" / "clip" / "prompt0").glob("*.jpg"))) == 4


def test_test_reuses_only_edits_made_with_the_same_settings(tmp_path):
    """`test` after `predict` must not score edits that other settings wrote to the same output_dir (an ablation
    run with the shipped config's fixed output_dir would otherwise silently score the full method's edits)."""
    import torch

    from evedit.models import EditConfig, ModelConfig, TCCConfig
    from evedit.module import _load_edit, edit_settings_id, save_edit

    model = ModelConfig(backbone="tiny", depth_model="tiny")
    full = edit_settings_id(model, EditConfig(), seed=0)
    ablation = edit_settings_id(model, EditConfig(tcc=TCCConfig(iters=0)), seed=0)
    assert len({full, ablation, edit_settings_id(model, EditConfig(), seed=1)}) == 3
    assert full == edit_settings_id(ModelConfig(backbone="tiny", depth_model="tiny"), EditConfig(), seed=0)
    source = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    item = {"group": "g", "video_id": "v", "edit_type": "object", "frames": source}
    folder = save_edit(tmp_path, item, source, torch.rand(3, 16, 16), {"total_s": 1.0, "settings_id": full}, False)
    loaded = _load_edit(folder, source, full)
    assert loaded is not None and loaded[0].shape == source.shape and loaded[1]["total_s"] == 1.0
    assert _load_edit(folder, source, ablation) is None
    assert _load_edit(folder, torch.zeros(3, 3, 32, 32, dtype=torch.uint8), full) is None  # other frame size
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".jpg")) == ["timing.json"]  # no temporary
    # a run stopped while writing timing.json left it cut short: edit again (it used to stop the run)
    (folder / "timing.json").write_text('{"total_s": 1.0, "settings_')
    assert _load_edit(folder, source, full) is None
    (folder / "timing.json").write_text("[1, 2]")
    assert _load_edit(folder, source, full) is None


def test_test_reuses_only_edits_made_from_the_same_inputs(tmp_path):
    """An edit made with depth files (or from other frames or prompts) is not re-used for a run without them: the
    data settings decide an edit as much as the model's."""
    import torch

    from evedit.module import _load_edit, edit_input_id, save_edit

    source = torch.randint(0, 255, (3, 3, 16, 16), dtype=torch.uint8)
    depth = torch.rand(3, 16, 16)
    item = {"group": "g", "video_id": "v", "edit_type": "object", "frames": source, "depth": depth,
            "source_prompt": "a cat", "target_prompt": "a tiger"}  # fmt: skip
    with_depth = edit_input_id(item)
    variants = [{**item, "depth": torch.zeros(0)}, {**item, "depth": depth + 0.5}, {**item, "target_prompt": "a dog"},
                {**item, "frames": source.flip(0)}]  # fmt: skip
    assert len({with_depth, *map(edit_input_id, variants)}) == 5
    assert edit_input_id({**item, "depth": depth.clone()}) == with_depth
    timing = {"total_s": 1.0, "settings_id": "s", "input_id": with_depth}
    folder = save_edit(tmp_path, item, source, torch.rand(3, 16, 16), timing, False)
    assert _load_edit(folder, source, "s", with_depth) is not None
    assert _load_edit(folder, source, "s", edit_input_id(variants[0])) is None  # made with depth files, asked without


def test_depth_error_compares_estimator_maps_of_source_and_edit(tmp_path, monkeypatch):
    """Spec §5: mean |d_src − d_edit| of clip-normalised MiDaS maps of the source and the edited frames. The source
    map must come from the estimator (not from the depth files that guided the edit) and must not follow the edit's
    depth.norm, so that a fresh and a re-used edit score alike."""
    import torch
    import torch.nn.functional as F

    from evedit.data import synthetic_clip
    from evedit.metrics import MetricsConfig
    from evedit.models import DepthConfig, EditConfig, ModelConfig
    from evedit.module import EVEModule

    module = EVEModule(
        ModelConfig(backbone="tiny", depth_model="tiny"),
        EditConfig(num_inference_steps=2, depth=DepthConfig(norm="frame", estimator_size=32)),
        MetricsConfig(clip_path="tiny", resize=32),
        output_dir=str(tmp_path),
        reuse_edits=False,
        write_videos=False,
    )
    clip = synthetic_clip(3, 16, seed=1)
    edit = synthetic_clip(3, 16, color="blue", seed=2)["frames"]
    given = clip["depth"]  # the depth files that guided the edit
    monkeypatch.setattr(module, "edit_clip", lambda item: (edit, given, {"total_s": 1.0}))
    batch = {
        "frames": clip["frames"],
        "depth": given,
        "source_prompt": "a red circle",
        "target_prompt": "a blue circle",
        "video_id": "v",
        "edit_type": "object",
        "group": "g",
    }
    module._evaluate(batch, "test")

    def midas(frames):  # plain reference: estimator maps at the frame size, min-max over the clip
        with torch.no_grad():
            x = F.interpolate(frames.float() / 255, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
            raw = module.depth_estimator(pixel_values=(x - 0.5) / 0.5).predicted_depth
        d = F.interpolate(raw[:, None], size=(16, 16), mode="bicubic")[:, 0]
        return (d - d.min()) / (d.max() - d.min())

    expected = (midas(clip["frames"]) - midas(edit)).abs().mean()
    got = module.stage_metrics["test"]["depth_err"].compute()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_a_size_the_backbone_cannot_take_is_refused_at_setup_naming_data_size(tmp_path):
    """The tiny backbone needs multiples of 4 (VAE ×2, UNet ×2): data.size=33 is refused before any clip is edited,
    naming the key, instead of each clip failing in the pipeline."""
    with pytest.raises(ValueError, match=r"^data\.size=33: .* multiples of 4 for model\.model\.backbone='tiny'.* 32$"):
        main(args=["predict", *_args(tmp_path, "--data.size", "33")])
    assert not (tmp_path / "edits").exists()
