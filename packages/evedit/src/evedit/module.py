"""EVEModule: Lightning's role in EVE (spec §2 protocol, issue 11).

EVE trains nothing. ``predict`` edits every (clip, target prompt) of a benchmark and writes the outputs (Lightning
splits the clips over GPUs); ``test`` / ``validate`` compute the metrics over the edits (re-using the edits that
``predict`` wrote to ``output_dir`` when present, else editing). ``fit`` is accepted for CLI uniformity: it
optimises no parameter (``configure_optimizers`` returns None, ``training_step`` returns None); the latent
optimisation lives inside the pipeline and runs under a local ``torch.enable_grad()``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import zlib
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from mmzoo.cli import allow_in_checkpoints
from mmzoo.config import check_range
from mmzoo.data import written_whole
from mmzoo.distributed import restore_output_capture

from evedit.metrics import (
    CLIPFrameConsistency,
    CLIPTextScore,
    DepthError,
    FrameAccuracy,
    MetricsConfig,
    PickScore,
    ScalarMean,
    build_embedder,
    clip_frame_consistency,
    clip_text_score,
    compute_clip_means,
    depth_error,
    frame_accuracy,
    pick_score,
)
from evedit.models import EditConfig, ModelConfig, build_components
from evedit.pipeline import EVEPipeline

log = logging.getLogger(__name__)

__all__ = ["EVEModule", "save_edit", "depth_strip"]


def depth_strip(source: torch.Tensor, depth01: torch.Tensor, edit: torch.Tensor) -> torch.Tensor:
    """The side-by-side picture: rows source | depth | edit, frames left to right. uint8 (3, 3·H, F·W)."""
    d = (depth01.clamp(0, 1) * 255).round().to(torch.uint8)[:, None].expand(-1, 3, -1, -1)  # (F, 3, H, W)
    if d.shape[-2:] != source.shape[-2:]:
        d = F.interpolate(d.float(), size=source.shape[-2:], mode="bilinear").round().to(torch.uint8)
    rows = [torch.cat(list(x.cpu()), dim=-1) for x in (source, d, edit)]  # each (3, H, F·W)
    return torch.cat(rows, dim=-2)  # (3, 3H, F·W)


def save_edit(
    out_dir: Path, item: dict, edit: torch.Tensor, depth01: torch.Tensor, timing: dict, write_videos: bool = True
) -> Path:
    """Write one edit: LOVEU submission frames ``<out>/<group>/<video>/<edit_type>/%05d.jpg`` + ``timing.json``,
    and (``write_videos``) ``<out>/videos/<video>_<edit_type>.mp4/.gif`` and ``<out>/strips/...png``."""
    from mmzoo.video import write_video
    from torchvision.io import write_jpeg, write_png

    folder = out_dir / item["group"] / item["video_id"] / item["edit_type"]
    folder.mkdir(parents=True, exist_ok=True)
    for t, img in enumerate(edit):
        write_jpeg(img.contiguous(), str(folder / f"{t:05d}.jpg"), quality=95)
    with written_whole(folder / "timing.json") as tmp:  # written last: the frames are complete once it exists
        tmp.write_text(json.dumps(timing, indent=1))
    if write_videos:
        stem = f"{item['video_id']}_{item['edit_type']}"
        fps = float(item.get("fps") or 8.0)
        write_video(out_dir / "videos" / f"{stem}.mp4", edit, fps=fps)
        write_video(out_dir / "videos" / f"{stem}.gif", edit, fps=fps)
        (out_dir / "strips").mkdir(parents=True, exist_ok=True)
        write_png(depth_strip(item["frames"], depth01, edit), str(out_dir / "strips" / f"{stem}.png"))
    return folder


#: per-stage seconds of an edit (the pipeline's timings), averaged over the epoch's edits
STAGE_TIMES = ("depth_s", "inversion_s", "denoise_s")
#: the epoch means also logged under spec §3.6's names
COST_LOG_NAMES = {"depth_s": "time/depth_s", "inversion_s": "time/inversion_s", "denoise_s": "time/denoise_s",
                  "update_s": "time/update_s", "time_s": "time/total_s", "peak_mb": "memory/peak_mb"}  # fmt: skip


def edit_settings_id(model: ModelConfig, edit: EditConfig, seed: int) -> str:
    """A short fingerprint of everything that decides an edit (networks, edit settings, seed), written with every
    edit so that ``test`` re-uses only edits made with the settings it is asked to score."""
    blob = json.dumps({"model": asdict(model), "edit": asdict(edit), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def edit_input_id(item: dict) -> str:
    """A short fingerprint of what an edit starts from: the source frames, the guiding depth files (when the data
    gives them) and the two prompts. Data settings that change these (``data.use_depth_files``, frame sampling,
    ``data.size``) change it, so ``test`` does not re-use an edit made from other inputs."""
    h = hashlib.sha1()
    for key in ("frames", "depth"):
        value = item.get(key)
        if isinstance(value, torch.Tensor) and value.numel():
            h.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([item.get("source_prompt"), item.get("target_prompt")]).encode())
    return h.hexdigest()[:16]


def _load_edit(
    folder: Path, source: torch.Tensor, settings_id: str, input_id: str | None = None
) -> tuple[torch.Tensor, dict] | None:
    """The edit stored in ``folder`` if it was made with ``settings_id`` from a clip shaped like ``source`` (and,
    given ``input_id``, from the same inputs: :func:`edit_input_id`)."""
    from torchvision.io import ImageReadMode, read_image

    files = sorted(folder.glob("*.jpg"))
    if len(files) != source.shape[0] or not (folder / "timing.json").is_file():
        return None
    try:
        timing = json.loads((folder / "timing.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        log.warning("not re-using %s: its timing.json is unreadable (%s); editing again", folder, err)
        return None
    if not isinstance(timing, dict):
        log.warning("not re-using %s: its timing.json is not a JSON object; editing again", folder)
        return None
    if timing.get("settings_id") != settings_id:
        log.warning("not re-using %s: it was edited with other settings (or an older version); editing again", folder)
        return None
    if input_id is not None and timing.get("input_id") != input_id:
        log.warning("not re-using %s: it was edited from other frames, depth or prompts; editing again", folder)
        return None
    frames = torch.stack([read_image(str(f), ImageReadMode.RGB) for f in files])
    if frames.shape != source.shape:
        log.warning("not re-using %s: frames %s, the clip is %s; editing again", folder, tuple(frames.shape),
                    tuple(source.shape))  # fmt: skip
        return None
    return frames, timing


class EVEModule(pl.LightningModule):
    """Zero-shot video editing with EVE.

    Args:
        model: the frozen networks (backbone, checkpoint folders, depth estimator).
        edit: the editing settings (steps, guidance, init, depth, temporal consistency constraints).
        metrics: models of the metrics.
        output_dir: where ``predict`` writes edits (and ``test`` looks for them); None = ``<default_root_dir>/edits``.
        reuse_edits: ``test``/``validate`` read edits already written to ``output_dir`` instead of re-editing, when
            they were made with the same model, edit settings and seed (an edit made otherwise is redone).
        write_videos: also write mp4/gif and the source|depth|edit PNG strip of every edit.
        seed: seed of the per-clip generator (for `sdedit`/`noise` init and η > 0); combined with the clip id.
        num_threads: CPU intra-op threads for editing (None = torch's default); 1 is fastest for the tiny models
            on a shared machine.
    """

    checkpoint_monitor = None

    def __init__(
        self,
        model: ModelConfig | None = None,
        edit: EditConfig | None = None,
        metrics: MetricsConfig | None = None,
        output_dir: str | None = None,
        reuse_edits: bool = True,
        write_videos: bool = True,
        seed: int = 0,
        num_threads: int | None = None,
    ):
        if num_threads is not None:
            check_range("model.num_threads", num_threads, ge=1, integer=True)
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = model or ModelConfig()
        self.edit_cfg = edit or EditConfig()
        self.metrics_cfg = metrics or MetricsConfig()
        self.output_dir = output_dir
        self.reuse_edits = reuse_edits
        self.write_videos = write_videos
        self.seed = seed
        self.num_threads = num_threads
        self.settings_id = edit_settings_id(self.model_cfg, self.edit_cfg, seed)
        comps = build_components(self.model_cfg)
        # frozen networks as submodules, so that Lightning moves them to the device
        self.unet, self.vae, self.text_encoder = comps.unet, comps.vae, comps.text_encoder
        self.depth_encoder, self.depth_estimator = comps.depth_encoder, comps.depth_estimator
        self.pipe = EVEPipeline.from_components(comps)
        self.pipe.set_progress_bar_config(disable=True)
        self.clip = build_embedder(
            self.metrics_cfg.clip_path, self.metrics_cfg.resize, self.metrics_cfg.local_files_only
        )
        self.pick = None
        if self.metrics_cfg.pickscore_path is not None:
            self.pick = build_embedder(
                self.metrics_cfg.pickscore_path,
                self.metrics_cfg.resize,
                self.metrics_cfg.local_files_only,
                key="model.metrics.pickscore_path",
            )
        self.stage_metrics = torch.nn.ModuleDict({stage: self._make_metrics() for stage in ("val", "test")})

    def _make_metrics(self) -> torch.nn.ModuleDict:
        m = {
            "clip_text": CLIPTextScore(),
            "clip_frame": CLIPFrameConsistency("all"),
            "clip_frame_consec": CLIPFrameConsistency("consecutive"),
            "frame_acc": FrameAccuracy(),
        }
        if self.metrics_cfg.depth_error and self.depth_estimator is not None:
            m["depth_err"] = DepthError()
        if self.metrics_cfg.pickscore_path is not None:
            m["pick_score"] = PickScore()
        for key in ("time_s", "update_s", "peak_mb", *STAGE_TIMES):  # per-edit cost (spec §3.6, §5 efficiency)
            m[key] = ScalarMean()
        return torch.nn.ModuleDict(m)

    # ------------------------------------------------------------------------------------------------ editing
    def _out_dir(self) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(self.trainer.default_root_dir if self._trainer is not None else ".") / "edits"

    def edit_clip(self, item: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Run the pipeline on one dataset item; returns (edited uint8 (F, 3, H, W), depth (F, H, W), timing)."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed + zlib.crc32(f"{item['video_id']}/{item['edit_type']}".encode()))
        depth = item["depth"] if item["depth"].numel() else None
        out = self.pipe(
            item["frames"],
            item["source_prompt"],
            [item["target_prompt"]],
            depth=depth,
            config=self.edit_cfg,
            generator=gen,
        )
        timing = dict(out.timings[0])
        timing["settings_id"] = self.settings_id  # stored with the edit (timing.json), checked before re-use
        timing["input_id"] = edit_input_id(item)  # likewise: the frames, depth and prompts it was made from
        if out.losses[0]:
            timing["update_loss_first"] = out.losses[0][0]["loss"]
            timing["update_loss_last"] = out.losses[0][-1]["loss"]
        return out.videos[0], out.depth, timing

    def _log_csv(self, name: str, row: dict) -> None:
        path = self._out_dir() / f"{name}_rank{self.global_rank}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    # ------------------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        restore_output_capture(self)  # a depth model unpickled by ddp_spawn would return no hidden states
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(dm, "hparams", {}).get("size")
        mult = self.pipe.size_multiple
        if isinstance(size, int) and size % mult:  # else every clip would fail in the pipeline, one by one
            raise ValueError(
                f"data.size={size}: the frames' height and width must be multiples of {mult} for "
                f"model.model.backbone={self.model_cfg.backbone!r} (VAE and UNet downsampling), e.g. "
                f"{max(mult, size // mult * mult)}"
            )
        if self.num_threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.num_threads)

    def configure_optimizers(self) -> None:
        """EVE optimises latents inside the editing loop, never module parameters (spec §2)."""
        return None

    def training_step(self, batch: dict | None, batch_idx: int) -> None:
        return None

    def predict_step(self, batch: dict | None, batch_idx: int) -> dict | None:
        if batch is None:
            return None
        edit, depth01, timing = self.edit_clip(batch)
        folder = save_edit(self._out_dir(), batch, edit, depth01, timing, self.write_videos)
        self._log_csv(
            "edits",
            {
                "video_id": batch["video_id"],
                "edit_type": batch["edit_type"],
                "target_prompt": batch["target_prompt"],
                "folder": str(folder),
                **timing,
            },
        )
        return {"video_id": batch["video_id"], "edit_type": batch["edit_type"], "folder": str(folder), **timing}

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def _log_stage(self, stage: str) -> None:
        """Every process logs the same stage means (metric states and counts summed over processes)."""
        reduce = (lambda c: self.trainer.strategy.reduce(c, reduce_op="sum")) if self._trainer is not None else None
        values = compute_clip_means(dict(self.stage_metrics[stage].items()), reduce or (lambda c: c))
        for name, value in values.items():
            if name not in STAGE_TIMES:
                self.log(f"{stage}/{name}", value.to(self.device), batch_size=1, sync_dist=True)  # equal on every rank
            if name in COST_LOG_NAMES:  # spec §3.6's names for the per-edit cost
                self.log(COST_LOG_NAMES[name], value.to(self.device), batch_size=1, sync_dist=True)

    @torch.no_grad()
    def _metric_depth(self, frames: torch.Tensor) -> torch.Tensor:
        """MiDaS maps (F, H, W) of uint8 frames (F, 3, H, W) for the structure error (spec §5): the estimator's raw
        maps at the frame size, which :func:`depth_error` normalises over the clip. Source and edit go through the
        same estimator whatever guided the edit (depth files or the estimator) and whatever the edit's
        ``model.edit.depth.norm`` / ``model.edit.depth.smooth_window``, so a fresh and a re-used edit score alike."""
        raw = self.pipe.estimate_depth(frames.to(self.device), self.edit_cfg)  # (F, s', s')
        return F.interpolate(raw[:, None], size=frames.shape[-2:], mode="bicubic", align_corners=False)[:, 0]

    def _evaluate(self, batch: dict | None, stage: str) -> None:
        if batch is None:
            return
        loaded = None
        folder = self._out_dir() / batch["group"] / batch["video_id"] / batch["edit_type"]
        if self.reuse_edits:
            loaded = _load_edit(folder, batch["frames"], self.settings_id, edit_input_id(batch))
        if loaded is not None:
            edit, timing = loaded
        else:
            edit, _, timing = self.edit_clip(batch)
        metrics = self.stage_metrics[stage]
        img = self.clip.embed_images(edit)  # (F, D)
        tgt, src = self.clip.embed_text([batch["target_prompt"], batch["source_prompt"]])
        values = {"clip_text": clip_text_score(img, tgt), "frame_acc": frame_accuracy(img, tgt, src)}
        metrics["clip_text"].update(img, tgt)
        metrics["frame_acc"].update(img, tgt, src)
        if edit.shape[0] >= 2:
            values["clip_frame"] = clip_frame_consistency(img, "all")
            values["clip_frame_consec"] = clip_frame_consistency(img, "consecutive")
            metrics["clip_frame"].update(img)
            metrics["clip_frame_consec"].update(img)
        if "depth_err" in metrics:
            d_src, d_edit = self._metric_depth(batch["frames"]), self._metric_depth(edit)
            values["depth_err"] = depth_error(d_src, d_edit)
            metrics["depth_err"].update(d_src, d_edit)
        if self.pick is not None:
            p_img = self.pick.embed_images(edit)
            p_txt = self.pick.embed_text([batch["target_prompt"]])[0]
            values["pick_score"] = pick_score(p_img, p_txt, self.pick.logit_scale)
            metrics["pick_score"].update(p_img, p_txt, self.pick.logit_scale)
        for key in ("total_s", "update_s", "peak_mb", *STAGE_TIMES):
            if key in timing:
                metrics[key.replace("total_s", "time_s")].update(float(timing[key]))
        self._log_csv(
            f"metrics_{stage}",
            {
                "video_id": batch["video_id"],
                "edit_type": batch["edit_type"],
                **{k: float(v) for k, v in values.items()},
                **timing,
            },
        )


# a module built in Python saves its config dataclasses in checkpoints: let weights_only loading read them
allow_in_checkpoints(EVEModule)
