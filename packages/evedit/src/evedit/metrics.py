"""Video-editing metrics (spec §5): CLIP text alignment, CLIP frame consistency (all pairs and consecutive),
Frame-Acc, PickScore, depth (structure) error. Each is a pure function on embeddings / maps plus a torchmetrics
``Metric`` averaging the per-clip value over clips (as the LOVEU-TGVE script averages per video).

Embeddings come from :class:`CLIPEmbedder`, which holds the injected CLIP model (real weights from a local
folder, or a tiny random CLIP in tests) so that one forward per clip serves every metric.
Reconstruction: that EVE used exactly these metrics is not known (spec §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from mmzoo.config import check_range
from mmzoo.video import NORMALIZATION
from torch import nn
from torchmetrics import Metric

__all__ = [
    "clip_text_score",
    "clip_frame_consistency",
    "frame_accuracy",
    "pick_score",
    "depth_error",
    "CLIPTextScore",
    "CLIPFrameConsistency",
    "FrameAccuracy",
    "PickScore",
    "DepthError",
    "ScalarMean",
    "compute_clip_means",
    "MetricsConfig",
    "CLIPEmbedder",
    "build_embedder",
]


def _check_emb(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected embeddings (F, D) with F >= 1, got {tuple(x.shape)}")


def clip_text_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """CLIP-Text: ``mean_f 100·cos(I_f, t)``. image_emb (F, D), text_emb (D,) or (1, D); any norm."""
    _check_emb(image_emb, "clip_text_score")
    cos = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float().reshape(-1), dim=0)  # (F,)
    return 100.0 * cos.mean()


def clip_frame_consistency(image_emb: torch.Tensor, pairs: str = "all") -> torch.Tensor:
    """CLIP-Frame: ``Σ_{i≠j} cos(I_i, I_j) / (F(F−1))`` (``all``) or ``mean_f cos(I_f, I_{f+1})`` (``consecutive``).
    image_emb (F, D) with F >= 2."""
    _check_emb(image_emb, "clip_frame_consistency")
    n = image_emb.shape[0]
    if n < 2:
        raise ValueError("clip_frame_consistency: needs at least 2 frames")
    e = F.normalize(image_emb.float(), dim=-1)
    if pairs == "consecutive":
        return (e[1:] * e[:-1]).sum(-1).mean()
    sim = e @ e.T  # (F, F)
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def frame_accuracy(image_emb: torch.Tensor, target_emb: torch.Tensor, source_emb: torch.Tensor) -> torch.Tensor:
    """Frame-Acc (FateZero): fraction of frames with ``cos(I_f, t_tgt) > cos(I_f, t_src)``."""
    _check_emb(image_emb, "frame_accuracy")
    e = F.normalize(image_emb.float(), dim=-1)
    tgt = e @ F.normalize(target_emb.float().reshape(-1), dim=0)
    src = e @ F.normalize(source_emb.float().reshape(-1), dim=0)
    return (tgt > src).float().mean()


def pick_score(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """PickScore: ``mean_f exp(s)·cos(P_img(f), P_txt)`` with the model's learned log-scale s."""
    s = torch.as_tensor(logit_scale, dtype=torch.float32).exp()
    return s * clip_text_score(image_emb, text_emb) / 100.0


def depth_error(depth_source: torch.Tensor, depth_edit: torch.Tensor) -> torch.Tensor:
    """Structure error: ``mean |d_src − d_edit|`` of two (F, H, W) depth clips, each min-max normalised over the
    clip (video normalisation; a constant clip maps to 0)."""
    if depth_source.shape != depth_edit.shape or depth_source.dim() != 3:
        raise ValueError(
            f"depth_error: expected two (F, H, W) maps of one shape, got {tuple(depth_source.shape)} "
            f"and {tuple(depth_edit.shape)}"
        )

    def norm(d: torch.Tensor) -> torch.Tensor:
        d = d.float()
        span = d.max() - d.min()
        return (d - d.min()) / span if span > 0 else torch.zeros_like(d)

    return (norm(depth_source) - norm(depth_edit)).abs().mean()


class _ClipMean(Metric):
    """Mean over clips of a per-clip score (sum and count states, summed across processes)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, value: torch.Tensor) -> None:
        self.total += value.detach().to(self.total)
        self.count += 1

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__}.compute(): no clip was added")
        return (self.total / self.count).float()


class CLIPTextScore(_ClipMean):
    """Mean over clips of :func:`clip_text_score`. ``update(image_emb (F, D), text_emb (D,))``."""

    higher_is_better = True

    def update(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
        self._add(clip_text_score(image_emb, text_emb))


class CLIPFrameConsistency(_ClipMean):
    """Mean over clips of :func:`clip_frame_consistency` (``pairs``: ``all`` or ``consecutive``)."""

    higher_is_better = True

    def __init__(self, pairs: str = "all") -> None:
        super().__init__()
        self.pairs = pairs

    def update(self, image_emb: torch.Tensor) -> None:
        self._add(clip_frame_consistency(image_emb, self.pairs))


class FrameAccuracy(_ClipMean):
    """Mean over clips of :func:`frame_accuracy`."""

    higher_is_better = True

    def update(self, image_emb: torch.Tensor, target_emb: torch.Tensor, source_emb: torch.Tensor) -> None:
        self._add(frame_accuracy(image_emb, target_emb, source_emb))


class PickScore(_ClipMean):
    """Mean over clips of :func:`pick_score`."""

    higher_is_better = True

    def update(self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> None:
        self._add(pick_score(image_emb, text_emb, logit_scale))


class DepthError(_ClipMean):
    """Mean over clips of :func:`depth_error`."""

    higher_is_better = False

    def update(self, depth_source: torch.Tensor, depth_edit: torch.Tensor) -> None:
        self._add(depth_error(depth_source, depth_edit))


class ScalarMean(_ClipMean):
    """Mean over clips of a per-clip number (editing time, peak memory). ``update(value)``."""

    higher_is_better = False

    def update(self, value: torch.Tensor | float) -> None:
        self._add(torch.as_tensor(value, dtype=torch.float64))


def compute_clip_means(metrics: dict[str, _ClipMean], reduce_count) -> dict[str, torch.Tensor]:
    """Compute (summed over processes) and reset every metric of one stage; leave out those no process updated.

    Called by every process at the end of an evaluation epoch, whatever it saw: processes may hold different
    numbers of clips (the evaluation sampler does not repeat clips to even them out, and skipped corrupt clips add
    nothing), and one that logged a metric the others never logged would wait for them forever.
    ``reduce_count(tensor) -> tensor`` sums a count over processes (identity on one process)."""
    out = {}
    for name, metric in metrics.items():
        if int(reduce_count(metric.count.detach().clone().float())) > 0:
            out[name] = metric.compute()
        metric.reset()
    return out


# ------------------------------------------------------------------------------------------------- models


@dataclass
class MetricsConfig:
    """Models of the metrics (spec §5, §9)."""

    clip_path: str = "openai/clip-vit-large-patch14"
    """Local folder of a transformers CLIPModel + tokenizer (LOVEU script: CLIP ViT-L/14), or `tiny` (random)."""
    pickscore_path: str | None = None
    """Local folder of `pickapic-anonymous/PickScore_v1` (CLIPModel) with the tokenizer of
    `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; None = no PickScore."""
    resize: int = 480
    """Frames are first resized to resize×resize (LOVEU script), then to the CLIP input (short side + centre crop)."""
    depth_error: bool = True
    """Also compute the structure error with the editor's depth estimator (needs `model.model.depth_model` !=
    precomputed)."""
    local_files_only: bool = True
    """Never reach the hub."""

    def __post_init__(self) -> None:
        check_range("model.metrics.resize", self.resize, ge=1, integer=True)


class CLIPEmbedder(nn.Module):
    """L2-normalised CLIP embeddings of frames and prompts (the injected model of the metrics).

    Frames uint8 (F, 3, H, W) → resized to ``resize``² → bicubic resize to the model's input size (antialiased, as
    PIL does in the official script) → CLIP normalisation → image embeddings (F, D)."""

    def __init__(self, model: nn.Module, tokenizer: object, resize: int = 480):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.resize = resize
        self.image_size = model.config.vision_config.image_size
        mean, std = NORMALIZATION["clip"]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach()

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (F, 3, H, W) → normalised CLIP input (F, 3, S, S), as the LOVEU-TGVE script prepares them:
        PIL bicubic resize to ``resize``² (stored as uint8 images), then the CLIP processor's bicubic resize (short
        side; square frames need no crop) and normalisation. PIL's downsampling filters are antialiased, hence
        ``antialias=True`` (without it a textured 512² frame moves by ~0.2 normalised units per pixel)."""
        x = frames.to(self.mean.device).float()  # (F, 3, H, W) in [0, 255]
        x = F.interpolate(x, size=(self.resize, self.resize), mode="bicubic", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255) / 255.0  # the script's resized frames are uint8 images
        x = F.interpolate(
            x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True
        )
        return (x.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(frames)  # (F, 3, S, S)
        emb = self.model.get_image_features(pixel_values=x.to(self.model.dtype))
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        return F.normalize(emb.float(), dim=-1)  # (F, D)

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        length = min(77, getattr(self.tokenizer, "model_max_length", 77))
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.mean.device)
        emb = self.model.get_text_features(input_ids=ids)
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        return F.normalize(emb.float(), dim=-1)  # (N, D)


TINY_CLIP_END_ID = 999
"""End-of-text id of the tiny metrics CLIP: the highest id of its 1,000, as real CLIP's end token is."""


def build_embedder(
    path: str, resize: int, local_files_only: bool = True, key: str = "model.metrics.clip_path"
) -> CLIPEmbedder:
    """A :class:`CLIPEmbedder` from a local CLIP folder, or ``tiny`` (random tiny CLIP, image 32, word tokenizer)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

    from evedit.models import WordTokenizer

    if path == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            cfg = CLIPConfig(
                text_config=CLIPTextConfig(
                    hidden_size=32,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    vocab_size=1000,
                    max_position_embeddings=77,
                    bos_token_id=1,
                    eos_token_id=TINY_CLIP_END_ID,  # not 2: the pooled state is then read at this id (WordTokenizer)
                    pad_token_id=0,
                ).to_dict(),
                vision_config=CLIPVisionConfig(
                    hidden_size=32,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    image_size=32,
                    patch_size=8,
                ).to_dict(),
                projection_dim=32,
            )
            return CLIPEmbedder(CLIPModel(cfg), WordTokenizer(1000, 16, TINY_CLIP_END_ID), resize=min(resize, 64))
    if not Path(path).is_dir() and local_files_only:
        raise FileNotFoundError(
            f"{key}={path!r}: no such folder. Supply a local copy of the CLIP model (e.g. "
            "openai/clip-vit-large-patch14: config.json, weights, tokenizer files) or `tiny`; "
            "see README, Weights"
        )
    model = CLIPModel.from_pretrained(path, local_files_only=local_files_only)
    tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=local_files_only)
    return CLIPEmbedder(model, tokenizer, resize)
