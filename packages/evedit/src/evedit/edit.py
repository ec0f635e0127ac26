"""Editing one clip without a benchmark: the Python API :func:`edit_video` and ``evedit edit VIDEO --prompt ...``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch
import yaml
from mmzoo.cli import resolve_config
from mmzoo.video import VideoReader

from evedit.data import _prepare_frames, frame_indices
from evedit.models import DepthConfig, EditConfig, ModelConfig, TCCConfig, build_components
from evedit.pipeline import EVEPipeline, EVEPipelineOutput

log = logging.getLogger(__name__)

__all__ = ["edit_video", "edit_command", "configs_from_yaml"]


def _dataclass_from(cls, values: dict | None, key: str):
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise KeyError(f"{key}: unknown keys {unknown}; expected some of {sorted(names)}")
    if cls is EditConfig:
        values["depth"] = _dataclass_from(DepthConfig, values.get("depth"), f"{key}.depth")
        values["tcc"] = _dataclass_from(TCCConfig, values.get("tcc"), f"{key}.tcc")
    return cls(**values)


def configs_from_yaml(path_or_name: str) -> tuple[ModelConfig, EditConfig]:
    """The ``model.model`` and ``model.edit`` sections of a config (file or shipped name) as dataclasses."""
    cfg = yaml.safe_load(Path(resolve_config(path_or_name, "evedit")).read_text()) or {}
    section = cfg.get("model", {}) or {}
    return (
        _dataclass_from(ModelConfig, section.get("model"), "model.model"),
        _dataclass_from(EditConfig, section.get("edit"), "model.edit"),
    )


def edit_video(
    video: str | Path,
    source_prompt: str,
    target_prompts: list[str],
    model: ModelConfig,
    edit: EditConfig,
    num_frames: int = 8,
    size: int = 512,
    device: str = "cpu",
    pipeline: EVEPipeline | None = None,
    seed: int = 0,
) -> EVEPipelineOutput:
    """Edit the F uniformly sampled frames of one video (resized and centre-cropped to size×size)."""
    with VideoReader(video) as reader:
        frames = reader.get_frames(frame_indices(reader.num_frames, num_frames, "uniform"))
    frames = _prepare_frames(frames, size)
    pipe = pipeline or EVEPipeline.from_components(build_components(model)).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    return pipe(frames, source_prompt, target_prompts, config=edit, generator=gen)


def edit_command(argv: list[str]) -> EVEPipelineOutput:
    """``evedit edit VIDEO --source "..." --prompt "..." [--prompt ...] --config NAME --out DIR``."""
    from evedit.module import save_edit

    p = argparse.ArgumentParser(prog="evedit edit", description="Edit one video with EVE.")
    p.add_argument("video", help="input video file")
    p.add_argument("--source", required=True, help="source prompt describing the video")
    p.add_argument("--prompt", action="append", required=True, help="target prompt (repeat for several)")
    p.add_argument("--config", default="loveu", help="config file or shipped name (its model.model / model.edit)")
    p.add_argument("--out", default="evedit_out", help="output folder")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model, edit = configs_from_yaml(a.config)
    out = edit_video(a.video, a.source, a.prompt, model, edit, a.num_frames, a.size, a.device, seed=a.seed)
    with VideoReader(a.video) as reader:
        fps = reader.fps
        src = _prepare_frames(reader.get_frames(frame_indices(reader.num_frames, a.num_frames, "uniform")), a.size)
    for k, (video, timing) in enumerate(zip(out.videos, out.timings, strict=True)):
        item = {"group": "edit", "video_id": Path(a.video).stem, "edit_type": f"prompt{k}", "fps": fps, "frames": src}
        folder = save_edit(Path(a.out), item, video, out.depth, timing)
        log.info("edit %d (%s) written to %s in %.1f s", k, a.prompt[k], folder, timing["total_s"])
    return out
