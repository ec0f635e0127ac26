"""EVE's frozen components: configs, builders (real checkpoints from local folders, or tiny random models),
the word tokenizer of the tiny text encoder, depth-map post-processing and the optional cross-frame attention.

Nothing here is trained by EVE: every network is frozen (spec §1, framework figure). The editing algorithm
itself lives in :mod:`evedit.pipeline`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from mmzoo.config import check_literal_fields, check_range
from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "Backbone",
    "ModelConfig",
    "DepthConfig",
    "TCCConfig",
    "EditConfig",
    "EVEComponents",
    "WordTokenizer",
    "build_components",
    "build_tiny_variant",
    "latent_ddim_scheduler",
    "normalize_depth",
    "smooth_depth",
    "CrossFrameAttnProcessor",
    "set_cross_frame_attention",
]

Backbone = Literal["sd15_t2i_adapter_depth", "sd14_t2i_adapter_depth", "controlnet_depth", "sd2_depth", "tiny"]


# ----------------------------------------------------------------------------------------------------- configs


@dataclass
class ModelConfig:
    """Which frozen networks EVE edits with (spec §3.2, §9)."""

    backbone: Backbone = "sd15_t2i_adapter_depth"
    """`sd15_t2i_adapter_depth` (default: SD v1.5 + depth T2I-Adapter, the figure's additive depth encoder),
    `sd14_t2i_adapter_depth`, `controlnet_depth` / `sd2_depth` (alternatives, for comparison only) or `tiny`
    (random tiny models built from configs: tests, demo, repro)."""
    pretrained_path: str | None = None
    """Local folder of the diffusers base checkpoint (unet/ vae/ text_encoder/ tokenizer/ scheduler/), e.g. a
    copy of `runwayml/stable-diffusion-v1-5` (or `stabilityai/stable-diffusion-2-depth` for `sd2_depth`)."""
    adapter_path: str | None = None
    """Local folder of the depth encoder E_M: `TencentARC/t2iadapter_depth_sd15v2` (sd15), `..._sd14v1` (sd14) or
    `lllyasviel/sd-controlnet-depth` (controlnet_depth). Unused by `sd2_depth` and `tiny`."""
    depth_model: str = "Intel/dpt-hybrid-midas"
    """MiDaS estimator (local folder of a `DPTForDepthEstimation`, e.g. DPT-Hybrid or DPT-Large), `precomputed`
    (depth maps are given with the data: `<video_dir>/depth/00000.npy`) or `tiny` (random tiny DPT)."""
    local_files_only: bool = True
    """Never reach the hub; set false only when the paths above are hub ids you want downloaded."""
    torch_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype of UNet / VAE / text encoder / depth encoder (float16 on GPU halves memory, spec §3.6);
    the optimised latent and its gradient stay float32."""
    tiny_pixel_space: bool = False
    """`tiny` only: no VAE (pixel space, 3 channels, factor 1; spec §8a `vae: identity`)."""
    tiny_pixel_scale: float = 1.0
    """`tiny_pixel_space` only: the identity VAE's scaling factor, Z_0 = scale·x with x in [−1, 1] (the role of
    SD's 0.18215: latents of unit rms, so the noise schedule and `model.edit.tcc.step` act as they do for SD). The repro
    sets 1 / rms(x) of its training frames; 1.0 = unscaled pixels."""
    tiny_clip_sample: bool = False
    """`tiny` only: the DDIM scheduler clips x̂_0 to ±tiny_pixel_scale (the data range of a pixel-space model, as
    pixel-space DDPM/DDIM samplers do; SD's latent scheduler does not clip). Sampling and inversion only: the
    update's differentiable x̂_0 is never clipped."""
    tiny_channels: list[int] = field(default_factory=lambda: [32, 64])
    """`tiny` only: UNet / VAE / adapter block widths (spec §8a)."""
    tiny_cross_attention_dim: int = 32
    """`tiny` only: text embedding width of the tiny CLIP text encoder."""
    tiny_vocab_size: int = 1000
    """`tiny` only: vocabulary of the tiny word tokenizer / text encoder."""
    tiny_max_length: int = 16
    """`tiny` only: prompt length in tokens."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.model")
        if self.backbone != "tiny" and self.depth_model == "tiny":
            raise ValueError("model.model.depth_model='tiny' needs model.model.backbone='tiny'")
        if self.backbone == "tiny" and len(self.tiny_channels) < 1:
            raise ValueError("model.model.tiny_channels must list at least one width")
        if self.tiny_pixel_scale <= 0:
            raise ValueError(f"model.model.tiny_pixel_scale must be > 0, got {self.tiny_pixel_scale}")
        if self.backbone == "tiny":
            for width in self.tiny_channels:
                check_range("model.model.tiny_channels", width, ge=1, integer=True)
            groups = min(32, self.tiny_channels[0])  # the tiny UNet's and VAE's GroupNorm groups
            if any(width % groups for width in self.tiny_channels):
                raise ValueError(
                    f"model.model.tiny_channels={list(self.tiny_channels)}: every width must be a multiple of "
                    f"min(32, first width)={groups} (the GroupNorm groups of the tiny UNet and VAE)"
                )
            check_range("model.model.tiny_cross_attention_dim", self.tiny_cross_attention_dim, ge=1, integer=True)
            if self.tiny_cross_attention_dim % 4:
                raise ValueError(
                    f"model.model.tiny_cross_attention_dim={self.tiny_cross_attention_dim}: must be a multiple of "
                    "the 4 attention heads of the tiny text encoder"
                )
            check_range("model.model.tiny_vocab_size", self.tiny_vocab_size, ge=8, integer=True)  # 3 special ids
            check_range("model.model.tiny_max_length", self.tiny_max_length, ge=1, integer=True)


@dataclass
class DepthConfig:
    """Depth maps and their injection (spec §3.1-3.2). Reconstruction: normalisation, smoothing, scale."""

    scale: float = 1.0
    """Multiplier of the depth features M added to the UNet's down blocks (0 = ablation `w/o depth`)."""
    norm: Literal["frame", "video"] = "video"
    """Min-max normalisation of the MiDaS maps to [0, 1]: one min/max per frame or per clip."""
    smooth_window: int = 1
    """Centred moving average of the depth sequence over this many frames (1 = off)."""
    estimator_size: int = 384
    """Side of the square input of the DPT estimator (DPT-Hybrid: 384; mean = std = 0.5)."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.edit.depth")
        check_range("model.edit.depth.scale", self.scale)  # any multiplier (0: no depth)
        check_range("model.edit.depth.smooth_window", self.smooth_window, ge=1, integer=True)
        if self.smooth_window % 2 == 0:  # a centred window has the frame itself and as many on either side
            raise ValueError(f"model.edit.depth.smooth_window={self.smooth_window}: must be odd (a centred window)")
        check_range("model.edit.depth.estimator_size", self.estimator_size, ge=1, integer=True)


@dataclass
class TCCConfig:
    """Temporal consistency constraints = the per-step update of Ẑ_t (spec §3.4). Reconstruction: every field."""

    iters: int = 1
    """Gradient updates of Ẑ_t per denoising step (0 = ablation `w/o update`)."""
    update_until: float = 0.5
    """Update only during the first fraction of the denoising schedule."""
    step: float = 0.1
    """Step size s; the step at t is s·sqrt(1-ᾱ_t) along ∇L / rms(∇L)."""
    lambda_tmp: float = 1.0
    """Weight of the inter-frame constraint L_tmp (0 = ablation `w/o L_tmp`)."""
    lambda_agr: float = 0.5
    """Weight of the branch agreement L_agr (0 = ablation `w/o L_agr`)."""
    temporal_ref: Literal["source", "inversion", "none"] = "source"
    """Reference R of L_tmp: source latents Z_0, the inversion trajectory's x̂_0 at the same t, or none (R = 0)."""
    temporal_pairs: Literal["consecutive", "key"] = "consecutive"
    """L_tmp compares each frame with its predecessor, or with frame 0."""
    agree_target: Literal["text", "depth"] = "text"
    """L_agr pulls the depth-guided x̂_0 towards sg(text-only x̂'_0) (`text`), or the reverse (`depth`)."""
    cfg_in_update: bool = False
    """Use the CFG-guided prediction inside the update (doubles its cost) instead of the conditional one."""
    grad_checkpointing: bool = False
    """Gradient checkpointing in the UNet during the update's backward (GPU memory, spec §3.4)."""
    frame_chunk: int | None = None
    """Backward over chunks of this many frames (one frame of overlap keeps L_tmp exact); None = all frames.
    Needs `attention: none` (the chunked gradient equals the clip's only when the UNet treats frames apart)."""
    attention: Literal["none", "first", "sparse_causal", "full"] = "none"
    """Optional extra not in the figure: cross-frame self-attention (keys/values from frames {0} / {0, f-1} /
    all)."""
    latent_smooth: float = 0.0
    """Optional extra not in the figure: weight α of the neighbour average mixed into x̂_0 (0 = off; 0.5 in the
    spec's extra), applied during the first `update_until` fraction of the steps."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.edit.tcc")
        if self.iters < 0:
            raise ValueError(f"model.edit.tcc.iters={self.iters} must be >= 0")
        if not 0.0 <= self.update_until <= 1.0:
            raise ValueError(f"model.edit.tcc.update_until={self.update_until} must lie in [0, 1]")
        if self.frame_chunk is not None and self.frame_chunk < 2:
            raise ValueError(f"model.edit.tcc.frame_chunk={self.frame_chunk} must be >= 2 (or null)")
        if not 0.0 <= self.latent_smooth <= 1.0:
            raise ValueError(f"model.edit.tcc.latent_smooth={self.latent_smooth} must lie in [0, 1]")
        # the update descends the weighted loss: a negative step or weight would climb it (0 switches it off)
        for key in ("step", "lambda_tmp", "lambda_agr"):
            check_range(f"model.edit.tcc.{key}", getattr(self, key), ge=0)
        if self.frame_chunk is not None and self.temporal_pairs == "key":
            raise ValueError(
                "model.edit.tcc.frame_chunk needs model.edit.tcc.temporal_pairs='consecutive' (key pairs span chunks)"
            )
        if self.frame_chunk is not None and self.attention != "none":
            raise ValueError(
                f"model.edit.tcc.frame_chunk needs model.edit.tcc.attention='none', got {self.attention!r} (cross-frame attention "
                "couples every frame, so a chunk's backward is not the clip's, and a chunk's CFG halves would be read "
                "as one clip)"
            )


@dataclass
class EditConfig:
    """One edit's settings (spec §3.0, 3.3, 3.5). Reconstruction: every default (the paper body is unavailable)."""

    num_inference_steps: int = 50
    """DDIM steps T (inversion and denoising)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance w of the carried-on step."""
    eta: float = 0.0
    """DDIM eta."""
    init: Literal["ddim_inversion", "sdedit", "noise"] = "ddim_inversion"
    """Start of the denoising chain: DDIM inversion with depth (the figure), SDEdit noising, or pure noise."""
    strength: float = 0.8
    """`sdedit` only: fraction of the schedule that is re-noised and denoised."""
    init_shared_noise: bool = True
    """`sdedit`/`noise`: one noise tensor shared by all frames (false = independent per frame)."""
    inversion_prompt: Literal["source", "null"] = "source"
    """Text of the inversion branch: the source prompt, or the empty prompt (the figure draws no text there)."""
    inversion_timestep: Literal["destination", "source"] = "destination"
    """Timestep the UNet is asked at in each inversion step Z_t → Z_{t+1}: ``destination`` (t+1; diffusers'
    ``DDIMInverseScheduler`` convention, which spec §3.3 names, so the first step sees the clean Z_0 at the first
    timestep) or ``source`` (t, as spec §3.3's equation ε_θ(Z_t, t) writes it; the first step asks at timestep 0).
    Reconstruction: the spec's tool and its equation disagree."""
    vae_batch: int = 8
    """Frames per VAE encode/decode call."""
    depth: DepthConfig = field(default_factory=DepthConfig)
    """Depth maps and injection."""
    tcc: TCCConfig = field(default_factory=TCCConfig)
    """Temporal consistency constraints (per-step latent update)."""

    def __post_init__(self) -> None:
        check_literal_fields(self, "model.edit")
        if self.num_inference_steps < 1:
            raise ValueError(f"model.edit.num_inference_steps={self.num_inference_steps} must be >= 1")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"model.edit.strength={self.strength} must lie in (0, 1]")
        if self.vae_batch < 1:
            raise ValueError(f"model.edit.vae_batch={self.vae_batch} must be >= 1")
        # any real scale (0: unconditional, 1: no guidance, < 0: guidance away from the prompt); NaN is refused
        check_range("model.edit.guidance_scale", self.guidance_scale)
        # DDIM's noise std is η times the posterior's: above 1 the deterministic part takes a root of a negative
        check_range("model.edit.eta", self.eta, ge=0, le=1)
        if self.eta != 0.0 and self.tcc.latent_smooth > 0:
            raise ValueError(
                "model.edit.tcc.latent_smooth > 0 needs model.edit.eta = 0 (the smoothed step is deterministic)"
            )


# --------------------------------------------------------------------------------------------------- tokenizer


class WordTokenizer:
    """Whitespace word tokenizer of the tiny text encoder: a word's id is a stable CRC32 hash into the vocabulary.

    Called like a transformers tokenizer (``tok(prompts, padding="max_length", max_length=L, truncation=True,
    return_tensors="pt").input_ids``); id 1 starts, ``end_id`` (default 2) ends and 0 pads a prompt; words take the
    other ids from 3 on. Used only with tiny random models. A tiny CLIP whose pooled text embedding is read (the
    metrics' embedder) needs ``end_id`` set to its config's ``eos_token_id`` other than 2: transformers reads the
    pooled state of a CLIP whose ``eos_token_id`` is 2 at the highest id of the prompt (real CLIP's end token has the
    highest id), which here would be a word.
    """

    def __init__(self, vocab_size: int = 1000, model_max_length: int = 16, end_id: int = 2):
        if vocab_size < 8:
            raise ValueError(f"WordTokenizer: vocab_size={vocab_size} must be >= 8")
        if end_id != 2 and not 3 <= end_id < vocab_size:
            raise ValueError(f"WordTokenizer: end_id={end_id} must be 2 or in [3, {vocab_size})")
        self.vocab_size = vocab_size
        self.model_max_length = model_max_length
        self.end_id = end_id

    def word_id(self, word: str) -> int:
        if self.end_id == 2:
            return 3 + zlib.crc32(word.lower().encode()) % (self.vocab_size - 3)
        k = zlib.crc32(word.lower().encode()) % (self.vocab_size - 4)  # the ids from 3 on, without end_id
        return 3 + k + (3 + k >= self.end_id)

    def __call__(
        self,
        text: str | list[str],
        padding: str = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str = "pt",
    ) -> _Encoding:
        texts = [text] if isinstance(text, str) else list(text)
        length = max_length or self.model_max_length
        rows = []
        for t in texts:
            ids = [1, *(self.word_id(w) for w in t.replace(",", " ").split()), self.end_id]
            ids = ids[: length - 1] + [self.end_id] if len(ids) > length else ids
            rows.append(ids + [0] * (length - len(ids)))
        return _Encoding(torch.tensor(rows, dtype=torch.long))


@dataclass
class _Encoding:
    input_ids: torch.Tensor


# ------------------------------------------------------------------------------------------------- components


@dataclass
class EVEComponents:
    """The frozen networks of one EVE editor (all in eval mode, no gradients)."""

    unet: nn.Module
    vae: nn.Module | None  # None = pixel space (tiny, spec §8a `vae: identity`)
    text_encoder: nn.Module
    tokenizer: object
    depth_encoder: nn.Module | None  # T2IAdapter (E_M) or ControlNetModel; None for sd2_depth
    depth_estimator: nn.Module | None  # DPTForDepthEstimation; None = precomputed depth
    scheduler: object
    backbone: str
    pixel_scale: float = 1.0  # vae None only: Z_0 = pixel_scale·x (the identity VAE's scaling factor)


def _need_dir(path: str | None, key: str, what: str, local_only: bool) -> str:
    """Return ``path`` if it is a folder (or a hub id when downloads are allowed); else a clear error."""
    if path is None:
        raise FileNotFoundError(f"{key} is not set: supply the local folder of {what}; see README, Weights")
    if Path(path).is_dir() or not local_only:
        return path
    raise FileNotFoundError(
        f"{key}={path!r}: no such folder. Supply a local copy of {what} (or set model.model.local_files_only=false to "
        "download a hub id); see README, Weights"
    )


def _freeze(m: nn.Module | None) -> None:
    if m is not None:
        m.eval().requires_grad_(False)


def build_components(cfg: ModelConfig) -> EVEComponents:
    """Build every frozen component of EVE from ``cfg`` (local folders, or tiny random models)."""
    if cfg.backbone == "tiny":
        with torch.random.fork_rng():  # tiny random weights are a function of the config only
            comps = _build_tiny(cfg)
    else:
        comps = _load_pretrained(cfg)
    dtype = getattr(torch, cfg.torch_dtype)
    for m in (comps.unet, comps.vae, comps.text_encoder, comps.depth_encoder):
        if m is not None and dtype != torch.float32:
            m.to(dtype)
        _freeze(m)
    _freeze(comps.depth_estimator)
    return comps


def _build_depth_estimator(cfg: ModelConfig) -> nn.Module | None:
    from transformers import DPTConfig, DPTForDepthEstimation

    if cfg.depth_model == "precomputed":
        return None
    if cfg.depth_model == "tiny":
        torch.manual_seed(0)  # inside build_components' fork_rng
        config = DPTConfig(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            fusion_hidden_size=32,
            num_hidden_layers=2,
            backbone_out_indices=[0, 1, 2, 3],
            num_attention_heads=4,
            intermediate_size=37,
            is_hybrid=False,
            neck_hidden_sizes=[16, 32],
        )  # spec §8a
        return DPTForDepthEstimation(config)
    path = _need_dir(
        cfg.depth_model,
        "model.model.depth_model",
        "a MiDaS DPTForDepthEstimation (Intel/dpt-hybrid-midas)",
        cfg.local_files_only,
    )
    return DPTForDepthEstimation.from_pretrained(path, local_files_only=cfg.local_files_only)


def _build_tiny(cfg: ModelConfig) -> EVEComponents:
    from diffusers import AutoencoderKL, DDIMScheduler, T2IAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    ch = list(cfg.tiny_channels)
    n = len(ch)
    latent = 3 if cfg.tiny_pixel_space else 4
    factor = 1 if cfg.tiny_pixel_space else 2 ** (n - 1)
    unet = UNet2DConditionModel(
        block_out_channels=tuple(ch),
        layers_per_block=2,
        sample_size=32,
        in_channels=latent,
        out_channels=latent,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cfg.tiny_cross_attention_dim,
        norm_num_groups=min(32, ch[0]),
        attention_head_dim=8,
    )  # spec §8a (diffusers' adapter-pipeline test UNet)
    vae = None
    if not cfg.tiny_pixel_space:
        vae = AutoencoderKL(
            block_out_channels=ch,
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            latent_channels=4,
            norm_num_groups=min(32, ch[0]),
        )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=cfg.tiny_cross_attention_dim,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=cfg.tiny_vocab_size,
            max_position_embeddings=max(77, cfg.tiny_max_length),
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    tokenizer = WordTokenizer(cfg.tiny_vocab_size, cfg.tiny_max_length)
    depth_encoder: nn.Module | None = T2IAdapter(
        in_channels=3, channels=ch, num_res_blocks=2, downscale_factor=factor, adapter_type="full_adapter"
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=cfg.tiny_clip_sample,
        clip_sample_range=cfg.tiny_pixel_scale if cfg.tiny_pixel_space else 1.0,
        set_alpha_to_one=False,
        steps_offset=1,
    )  # the SD v1.5 scheduler config (spec §3.3); clip_sample off unless tiny_clip_sample
    return EVEComponents(
        unet,
        vae,
        text_encoder,
        tokenizer,
        depth_encoder,
        _build_depth_estimator(cfg),
        scheduler,
        "sd15_t2i_adapter_depth",
        cfg.tiny_pixel_scale if cfg.tiny_pixel_space else 1.0,
    )


def build_tiny_variant(cfg: ModelConfig, backbone: Literal["controlnet_depth", "sd2_depth"]) -> EVEComponents:
    """Tiny random models for the alternative backbones (tests of their code paths)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.random.fork_rng():
        comps = _build_tiny(cfg)
    factor = 1 if comps.vae is None else 2 ** (len(cfg.tiny_channels) - 1)
    if backbone == "controlnet_depth":
        emb = (16,) + (32,) * (factor.bit_length() - 1)
        comps.depth_encoder = ControlNetModel.from_unet(comps.unet, conditioning_embedding_out_channels=emb)
    else:
        config = dict(comps.unet.config)
        config["in_channels"] = comps.unet.config.in_channels + 1
        with torch.random.fork_rng():
            torch.manual_seed(0)
            comps.unet = UNet2DConditionModel.from_config(config)
        comps.depth_encoder = None
    comps.backbone = backbone
    for m in (comps.unet, comps.depth_encoder):
        _freeze(m)
    return comps


def latent_ddim_scheduler(scheduler):
    """The checkpoint's DDIM scheduler with ``clip_sample`` off.

    DDIM (and the inverse scheduler built from its config) clips x̂_0 to ±1 unless the config says otherwise; a
    ``scheduler_config.json`` without the key (older or converted SD copies) would clip SD latents, whose range is
    several units, at every sampling and inversion step. Latent diffusion never clips (spec §3.3)."""
    from diffusers import DDIMScheduler

    if not scheduler.config.get("clip_sample", True):
        return scheduler
    log.warning("the checkpoint's scheduler config clips x0 to +-1 (clip_sample true or absent): turned off")
    return DDIMScheduler.from_config(scheduler.config, clip_sample=False)


def _load_pretrained(cfg: ModelConfig) -> EVEComponents:
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, T2IAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    lo = cfg.local_files_only
    base = {
        "sd15_t2i_adapter_depth": "Stable Diffusion v1.5 (runwayml/stable-diffusion-v1-5)",
        "sd14_t2i_adapter_depth": "Stable Diffusion v1.4 (CompVis/stable-diffusion-v1-4)",
        "controlnet_depth": "Stable Diffusion v1.5 (runwayml/stable-diffusion-v1-5)",
        "sd2_depth": "stabilityai/stable-diffusion-2-depth",
    }[cfg.backbone]
    root = _need_dir(
        cfg.pretrained_path,
        "model.model.pretrained_path",
        f"{base} in diffusers layout (unet/ vae/ text_encoder/ tokenizer/ scheduler/)",
        lo,
    )
    if lo:
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (Path(root) / sub).is_dir():
                raise FileNotFoundError(
                    f"model.model.pretrained_path={root!r}: missing the '{sub}/' folder of {base}; see README, Weights"
                )
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=lo)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=lo)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=lo)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=lo)
    scheduler = latent_ddim_scheduler(DDIMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=lo))
    depth_encoder: nn.Module | None = None
    if cfg.backbone in ("sd15_t2i_adapter_depth", "sd14_t2i_adapter_depth"):
        hub = (
            "TencentARC/t2iadapter_depth_sd15v2"
            if cfg.backbone.startswith("sd15")
            else "TencentARC/t2iadapter_depth_sd14v1"
        )
        path = _need_dir(cfg.adapter_path, "model.model.adapter_path", f"the depth T2I-Adapter ({hub})", lo)
        depth_encoder = T2IAdapter.from_pretrained(path, local_files_only=lo)
    elif cfg.backbone == "controlnet_depth":
        path = _need_dir(cfg.adapter_path, "model.model.adapter_path", "lllyasviel/sd-controlnet-depth", lo)
        depth_encoder = ControlNetModel.from_pretrained(path, local_files_only=lo)
    return EVEComponents(
        unet, vae, text_encoder, tokenizer, depth_encoder, _build_depth_estimator(cfg), scheduler, cfg.backbone
    )


# ------------------------------------------------------------------------------------------------------- depth


def normalize_depth(depth: torch.Tensor, norm: Literal["frame", "video"] = "video") -> torch.Tensor:
    """Min-max normalise depth maps (F, H, W) to [0, 1], per frame or over the clip (spec §3.1).

    Reconstruction: the paper names MiDaS only. A constant map (max = min) maps to 0 (no division by zero).
    """
    if depth.dim() != 3:
        raise ValueError(f"normalize_depth: expected depth (F, H, W), got {tuple(depth.shape)}")
    d = depth.float()
    dims = (1, 2) if norm == "frame" else (0, 1, 2)
    lo = d.amin(dim=dims, keepdim=True)
    hi = d.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (d - lo) / span.clamp_min(1e-12), torch.zeros_like(d))  # (F, H, W) in [0, 1]


def smooth_depth(depth: torch.Tensor, window: int) -> torch.Tensor:
    """Centred moving average of depth (F, H, W) over an odd ``window`` of frames (edges average what exists)."""
    if window % 2 == 0:
        raise ValueError(f"smooth_depth: window={window} must be odd (a centred window)")
    if window <= 1:
        return depth
    half = window // 2
    out = torch.empty_like(depth)
    for f in range(depth.shape[0]):
        out[f] = depth[max(0, f - half) : f + half + 1].mean(0)
    return out


# ------------------------------------------------------------------------------------- cross-frame attention


class CrossFrameAttnProcessor:
    """Self-attention where frame f of a clip attends to the keys/values of frames R(f) (spec §3.4 extra).

    ``mode``: ``first`` R(f) = {0}; ``sparse_causal`` R(f) = {0, f-1} (f-1 clamped at 0); ``full`` all frames.
    The batch is ``halves × num_frames`` (one half per CFG branch); frames never attend across halves.
    Not shown in the paper's figure: an optional extra, off by default.
    """

    def __init__(self, num_frames: int, mode: Literal["first", "sparse_causal", "full"]):
        self.num_frames = num_frames
        self.mode = mode

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        bn, n, c = x.shape
        f = self.num_frames
        x = x.view(bn // f, f, n, c)  # (halves, F, N, C)
        if self.mode == "first":
            sel = x[:, :1].expand(-1, f, -1, -1)  # (halves, F, N, C)
        elif self.mode == "sparse_causal":
            prev = torch.clamp(torch.arange(f, device=x.device) - 1, min=0)
            sel = torch.cat([x[:, :1].expand(-1, f, -1, -1), x[:, prev]], dim=2)  # (halves, F, 2N, C)
        else:
            sel = x.reshape(bn // f, 1, f * n, c).expand(-1, f, -1, -1)  # (halves, F, F·N, C)
        return sel.reshape(bn, -1, c)  # (B, M·N, C)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if hidden_states.shape[0] % self.num_frames:
            raise ValueError(
                f"cross-frame attention: batch {hidden_states.shape[0]} is not a multiple of "
                f"num_frames={self.num_frames}"
            )
        b, n, _ = hidden_states.shape
        query = attn.to_q(hidden_states)  # (B, N, C)
        key = self._frames(attn.to_k(hidden_states))  # (B, M·N, C)
        value = self._frames(attn.to_v(hidden_states))
        head_dim = query.shape[-1] // attn.heads
        query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, M·N, d)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, attn.heads * head_dim).to(query.dtype)  # (B, N, C)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def set_cross_frame_attention(unet: nn.Module, num_frames: int, mode: str) -> None:
    """Install :class:`CrossFrameAttnProcessor` in every self-attention (``attn1``) of ``unet``, keeping the other
    processors; ``none`` puts back the processors the UNet had before the first installation. A UNet without an
    installation is left as it is, so processors set by the user (another attention backend) survive an edit."""
    stock = getattr(unet, "_processors_before_cross_frame", None)
    if mode == "none":
        if stock is not None:
            unet.set_attn_processor(dict(stock))
            del unet._processors_before_cross_frame
        return
    if stock is None:
        stock = dict(unet.attn_processors)
        unet._processors_before_cross_frame = stock
    procs = {
        name: CrossFrameAttnProcessor(num_frames, mode) if name.endswith("attn1.processor") else stock[name]
        for name in stock
    }
    unet.set_attn_processor(procs)
