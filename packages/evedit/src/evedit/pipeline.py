"""EVEPipeline: zero-shot text-based video editing with depth guidance and temporal consistency constraints.

Reads top to bottom as the framework figure (spec §1, §3):

1. depth maps of the source frames (MiDaS/DPT, §3.1) → depth features M of the frozen depth encoder E_M (§3.2);
2. source latents Z_0 = s·E_I(x) and DDIM inversion Z_0 → Z_T with M added (§3.3);
3. DDIM denoising from Ẑ_T = Z_T with the target prompt; at each early step the latent Ẑ_t is updated by a few
   gradient steps on the temporal consistency objective computed from a text-only and a depth-guided UNet
   prediction (§3.4, :mod:`evedit.losses`); the depth-guided, CFG-guided step is carried on (§3.5);
4. decode Ẑ_0 with the VAE.

Every network is frozen; only latents are optimised (the update runs under a local ``torch.enable_grad()``, so
it works inside Lightning's ``test``/``predict`` which disable gradients).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from evedit.losses import agreement_loss, temporal_loss
from evedit.models import EditConfig, EVEComponents, normalize_depth, set_cross_frame_attention, smooth_depth

log = logging.getLogger(__name__)

__all__ = ["DepthCondition", "EVEPipeline", "EVEPipelineOutput", "ddim_step"]


def ddim_step(
    z_t: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: torch.Tensor | float,
    alpha_prev: torch.Tensor | float,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable deterministic DDIM step (η = 0), written out because the update needs its gradient::

        x̂_0 = (z_t − sqrt(1−ᾱ_t)·ε) / sqrt(ᾱ_t)            z_{t−1} = sqrt(ᾱ_{t−1})·x̂_0 + sqrt(1−ᾱ_{t−1})·ε

    z_t, model_output (F, C, h, w); ``prediction_type`` "epsilon" or "v_prediction". Returns (x̂_0, z_{t−1}).
    Equals ``DDIMScheduler.step(...)`` (pred_original_sample, prev_sample) with eta = 0 and no clipping.
    """
    a_p = torch.as_tensor(alpha_prev, dtype=z_t.dtype, device=z_t.device)
    x0, eps = _x0_and_noise(z_t, model_output, alpha_t, prediction_type)
    return x0, a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps


def _x0_and_noise(
    z_t: torch.Tensor, model_output: torch.Tensor, alpha_t: torch.Tensor | float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet output read as (x̂_0, ε̂) at ᾱ_t: ε-prediction gives ε̂ itself; a v-prediction v gives
    x̂_0 = sqrt(ᾱ_t)·z_t − sqrt(1−ᾱ_t)·v and ε̂ = sqrt(ᾱ_t)·v + sqrt(1−ᾱ_t)·z_t. z_t, model_output (F, C, h, w)."""
    a_t = torch.as_tensor(alpha_t, dtype=z_t.dtype, device=z_t.device)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (z_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * z_t - (1 - a_t).sqrt() * model_output
        eps = a_t.sqrt() * model_output + (1 - a_t).sqrt() * z_t
    else:
        raise ValueError(f"ddim_step: unsupported prediction_type {prediction_type!r}")
    return x0, eps


@dataclass
class DepthCondition:
    """Depth features M, computed once per clip (they do not depend on t).

    ``tensors``: T2I-Adapter: one (F, C_l, h_l, w_l) map per UNet down level, already multiplied by the scale;
    ControlNet: [(F, 3, H, W) depth image] (the scale is applied by the ControlNet); SD2-depth: [(F, 1, h, w)
    depth in [−1, 1] times the scale]."""

    tensors: list[torch.Tensor]
    scale: float = 1.0

    def slice(self, a: int, b: int) -> DepthCondition:
        return DepthCondition([t[a:b] for t in self.tensors], self.scale)

    def repeat(self, n: int) -> DepthCondition:
        return DepthCondition([torch.cat([t] * n) for t in self.tensors], self.scale)


@dataclass
class EVEPipelineOutput(BaseOutput):
    """Edited clips, one per target prompt.

    videos: uint8 (F, 3, H, W) each; depth: (F, H, W) in [0, 1]; timings: per prompt, seconds per stage
    (depth_s, inversion_s, denoise_s, update_s, decode_s, total_s) and memory/peak_mb; losses: per prompt, the
    update objective at every update iteration (the last value of each step's iterations first)."""

    videos: list[torch.Tensor]
    depth: torch.Tensor
    timings: list[dict[str, float]]
    losses: list[list[dict[str, float]]]


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class EVEPipeline(DiffusionPipeline):
    """EVE editor. Components: ``vae`` (None = pixel space), ``text_encoder``, ``tokenizer``, ``unet``,
    ``scheduler`` (DDIM; its config also builds the inverse scheduler), ``depth_encoder`` (T2IAdapter or
    ControlNetModel; None for SD2-depth), ``depth_estimator`` (DPTForDepthEstimation; None = depth given)."""

    # Arguments with a default count as modules only when listed here; otherwise `.to(device/dtype)` and
    # `.components` leave them out, and a GPU pipeline would keep its depth encoder and estimator on the CPU.
    _optional_components = ["depth_encoder", "depth_estimator"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        depth_encoder=None,
        depth_estimator=None,
        backbone: str = "sd15_t2i_adapter_depth",
        pixel_scale: float = 1.0,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            depth_encoder=depth_encoder,
            depth_estimator=depth_estimator,
        )
        self.backbone = backbone
        self.pixel_scale = pixel_scale  # vae None: Z_0 = pixel_scale·x (identity VAE's scaling factor)
        self.inverse_scheduler = DDIMInverseScheduler.from_config(scheduler.config)
        self.vae_scale_factor = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_components(cls, comps: EVEComponents) -> EVEPipeline:
        return cls(
            comps.vae,
            comps.text_encoder,
            comps.tokenizer,
            comps.unet,
            comps.scheduler,
            comps.depth_encoder,
            comps.depth_estimator,
            comps.backbone,
            comps.pixel_scale,
        )

    @property
    def exec_device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ------------------------------------------------------------------------------------------ inputs, text
    @property
    def size_multiple(self) -> int:
        """Frame heights and widths must be multiples of this: the VAE's factor times the UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_inputs(
        self,
        frames: torch.Tensor,
        source_prompt: str,
        target_prompts: list[str],
        depth: torch.Tensor | None,
        config: EditConfig,
    ) -> None:
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames: expected uint8 (F, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
        if frames.shape[0] < 1:
            raise ValueError("frames: the clip is empty (0 frames)")
        mult = self.size_multiple
        if frames.shape[-2] % mult or frames.shape[-1] % mult:
            raise ValueError(
                f"frames: H×W={tuple(frames.shape[-2:])} must be multiples of {mult} for this backbone (VAE and UNet "
                f"downsampling; data.size sets H and W)"
            )
        if not isinstance(source_prompt, str):
            raise ValueError(f"source_prompt must be a string, got {type(source_prompt).__name__}")
        if not target_prompts or not all(isinstance(p, str) and p.strip() for p in target_prompts):
            raise ValueError(f"target_prompts must be non-empty strings, got {target_prompts!r}")
        if depth is not None and (depth.dim() != 3 or depth.shape[0] != frames.shape[0]):
            raise ValueError(f"depth: expected (F, H', W') with F={frames.shape[0]}, got {tuple(depth.shape)}")
        if depth is None and self.depth_estimator is None:
            raise ValueError(
                "depth is None and the pipeline has no depth_estimator (model.model.depth_model=precomputed "
                "needs depth maps with the data)"
            )
        if config.tcc.temporal_ref == "inversion" and config.init != "ddim_inversion":
            raise ValueError("model.edit.tcc.temporal_ref='inversion' needs model.edit.init='ddim_inversion'")

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings (N, L, D) of the frozen text encoder (last hidden state, as Stable Diffusion)."""
        length = getattr(self.tokenizer, "model_max_length", 77)
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.exec_device)
        return self.text_encoder(ids)[0]  # (N, L, D)

    # ------------------------------------------------------------------------------------------------- depth
    @torch.no_grad()
    def estimate_depth(self, frames: torch.Tensor, config: EditConfig) -> torch.Tensor:
        """MiDaS relative inverse depth of uint8 frames (F, 3, H, W) → (F, H, W) (spec §3.1, before normalising)."""
        s = config.depth.estimator_size
        x = frames.float() / 255.0  # (F, 3, H, W); antialiased like the DPT image processor's PIL resize
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)  # (F, 3, s, s)
        x = ((x.clamp(0, 1) - 0.5) / 0.5).to(next(self.depth_estimator.parameters()).dtype)  # mean = std = 0.5
        return self.depth_estimator(pixel_values=x).predicted_depth.float()  # (F, s', s')

    def prepare_depth(self, frames: torch.Tensor, depth: torch.Tensor | None, config: EditConfig) -> torch.Tensor:
        """Depth maps (F, H, W) in [0, 1]: estimated (or given), resized bicubically to H×W, normalised, smoothed."""
        raw = self.estimate_depth(frames, config) if depth is None else depth.float().to(self.exec_device)
        h, w = frames.shape[-2:]
        raw = F.interpolate(raw[:, None], size=(h, w), mode="bicubic", align_corners=False)[:, 0]  # (F, H, W)
        return smooth_depth(normalize_depth(raw, config.depth.norm), config.depth.smooth_window)

    @torch.no_grad()
    def encode_depth(self, depth01: torch.Tensor, config: EditConfig) -> DepthCondition:
        """Depth features M (spec §3.2): the depth encoder's maps, computed once per clip."""
        scale = config.depth.scale
        if self.backbone == "sd2_depth":
            h, w = depth01.shape[-2] // self.vae_scale_factor, depth01.shape[-1] // self.vae_scale_factor
            d = F.interpolate(depth01[:, None], size=(h, w), mode="bicubic", align_corners=False)  # (F, 1, h, w)
            d = d.clamp(0.0, 1.0)  # bicubic overshoots at depth edges; the UNet's depth channel is in [−1, 1]
            return DepthCondition([(2.0 * d - 1.0) * scale], scale)
        dtype = self.depth_encoder.dtype
        in_ch = self.depth_encoder.config.get("in_channels", 3) if self.backbone != "controlnet_depth" else 3
        image = depth01[:, None].expand(-1, in_ch, -1, -1).to(dtype)  # (F, in_ch, H, W) depth image in [0, 1]
        if self.backbone == "controlnet_depth":
            return DepthCondition([image], scale)
        return DepthCondition([f * scale for f in self.depth_encoder(image)], scale)  # [(F, C_l, h_l, w_l)]

    # ------------------------------------------------------------------------------------------------ VAE
    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, config: EditConfig) -> torch.Tensor:
        """Z_0 = s·E_I(x) with x = frames in [−1, 1] (pixel space: Z_0 = pixel_scale·x). (F, 3, H, W) uint8 →
        (F, C, h, w)."""
        x = frames.to(self.exec_device).float() / 127.5 - 1.0
        if self.vae is None:
            return x * self.pixel_scale
        out = [self.vae.encode(c.to(self.vae.dtype)).latent_dist.mean for c in x.split(config.vae_batch)]
        return torch.cat(out).float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, config: EditConfig) -> torch.Tensor:
        """x = D(z / s), clamped to [−1, 1] and mapped to uint8 (F, 3, H, W)."""
        if self.vae is None:
            x = z / self.pixel_scale
        else:
            zs = (z / self.vae.config.scaling_factor).to(self.vae.dtype)
            x = torch.cat([self.vae.decode(c).sample for c in zs.split(config.vae_batch)]).float()
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    # ---------------------------------------------------------------------------------------------- denoiser
    def denoise(
        self, z: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor, cond: DepthCondition | None
    ) -> torch.Tensor:
        """ε_θ(z_t, t, c, M): the frozen UNet with the depth features added (``cond=None``: text-only branch).

        z (N, C, h, w), text_emb (N, L, D); returns float32 (N, C, h, w). The adapter's residual list is rebuilt
        at every call (the UNet pops it; spec §7)."""
        dtype = self.unet.dtype
        z_in = z.to(dtype)
        emb = text_emb.to(dtype)
        extra: dict = {}
        if self.backbone == "sd2_depth":
            d = cond.tensors[0] if cond is not None else z.new_zeros(z.shape[0], 1, *z.shape[-2:])
            z_in = torch.cat([z_in, d.to(dtype)], dim=1)  # (N, C+1, h, w) depth as the 5th input channel
        elif cond is not None and self.backbone == "controlnet_depth":
            down, mid = self.depth_encoder(
                z_in,
                t,
                encoder_hidden_states=emb,
                controlnet_cond=cond.tensors[0],
                conditioning_scale=cond.scale,
                return_dict=False,
            )
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        elif cond is not None:
            extra = {"down_intrablock_additional_residuals": [f.clone() for f in cond.tensors]}
        return self.unet(z_in, t, encoder_hidden_states=emb, return_dict=False, **extra)[0].float()

    def predict_noise(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        emb_c: torch.Tensor,
        emb_u: torch.Tensor | None,
        cond: DepthCondition | None,
        guidance: float,
    ) -> torch.Tensor:
        """ε̃ = ε_u + w(ε_c − ε_u) (spec §3.5), both halves in one batch [uncond frames; cond frames];
        ``emb_u=None`` or w = 1 gives the conditional prediction only. emb_* (1, L, D)."""
        n = z.shape[0]
        if emb_u is None or guidance == 1.0:
            return self.denoise(z, t, emb_c.expand(n, -1, -1), cond)
        emb = torch.cat([emb_u.expand(n, -1, -1), emb_c.expand(n, -1, -1)])  # (2N, L, D)
        eps = self.denoise(torch.cat([z, z]), t, emb, cond.repeat(2) if cond is not None else None)  # (2N, C, h, w)
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    def alphas(self, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ᾱ_t, ᾱ_{t−1}) of the DDIM sampling schedule, read from the scheduler (as ``DDIMScheduler.step``)."""
        s = self.scheduler
        t = int(t)
        prev = t - s.config.num_train_timesteps // s.num_inference_steps
        a_t = s.alphas_cumprod[t]
        a_prev = s.alphas_cumprod[prev] if prev >= 0 else s.final_alpha_cumprod
        return a_t, a_prev

    # -------------------------------------------------------------------------------------------- inversion
    @torch.no_grad()
    def invert(
        self,
        z0: torch.Tensor,
        emb: torch.Tensor,
        cond: DepthCondition | None,
        num_steps: int,
        timestep: Literal["destination", "source"] = "destination",
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Deterministic DDIM inversion with the depth features, guidance 1 (spec §3.3)::

            ε = ε_θ(Z_t, t, c_inv, M);   Z_{t+1} = sqrt(ᾱ_{t+1})·(Z_t − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t) + sqrt(1−ᾱ_{t+1})·ε

        ``timestep`` (``model.edit.inversion_timestep``): the UNet is asked at the step's destination timestep
        (diffusers' inverse-scheduler convention, default) or at its source t, as the equation writes it (0 for the
        first step).
        Returns the trajectory [(Z_t, x̂_0 at t)] from the least to the most noisy step (the last Z is Z_T)."""
        self.inverse_scheduler.set_timesteps(num_steps, device=z0.device)
        ratio = self.inverse_scheduler.config.num_train_timesteps // num_steps
        z = z0
        traj = []
        for t in self.progress_bar(self.inverse_scheduler.timesteps):
            asked = t if timestep == "destination" else (t - ratio).clamp_min(0)
            eps = self.predict_noise(z, asked, emb, None, cond, 1.0)
            out = self.inverse_scheduler.step(eps, t, z)
            z = out.prev_sample
            traj.append((z, out.pred_original_sample))
        return traj

    def prepare_latents(
        self, z0: torch.Tensor, config: EditConfig, traj: list | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, int]:
        """Ẑ at the first denoising step and the index of that step (spec §3.3 `init`)."""
        timesteps = self.scheduler.timesteps
        if config.init == "ddim_inversion":
            return traj[-1][0].clone(), 0
        shape = (1, *z0.shape[1:]) if config.init_shared_noise else tuple(z0.shape)
        noise = randn_tensor(shape, generator=generator, device=z0.device, dtype=z0.dtype).expand_as(z0)
        if config.init == "noise":
            return noise * self.scheduler.init_noise_sigma, 0
        start = min(len(timesteps) - 1, len(timesteps) - int(len(timesteps) * config.strength))  # sdedit
        return self.scheduler.add_noise(z0, noise.contiguous(), timesteps[start : start + 1]), start

    # ------------------------------------------------------------------------------------------- the update
    def update_latents(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        emb_c: torch.Tensor,
        emb_u: torch.Tensor,
        cond: DepthCondition | None,
        ref: torch.Tensor | None,
        config: EditConfig,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One "parameter update" of the learnable latent Ẑ_t (spec §3.4, figure)::

            x̂'_0 = DDIM x̂_0(Ẑ_t, ε_u(Ẑ_t, t, p, None))        x̂_0 = DDIM x̂_0(Ẑ_t, ε_u(Ẑ_t, t, p, M))
            L = λ_tmp·L_tmp(x̂_0) + λ_agr·L_agr(x̂_0, x̂'_0)     Ẑ_t ← Ẑ_t − s·sqrt(1−ᾱ_t)·∇L / (rms(∇L) + 1e-8)

        Reconstruction: losses, step size and normalised gradient are this package's (spec §3.4). With
        ``tcc.frame_chunk`` the backward runs over chunks with one frame of overlap; the gradient equals the
        whole-clip gradient. z (F, C, h, w) float32; returns the updated z and the loss terms."""
        tcc = config.tcc
        n = z.shape[0]
        a_t, a_prev = self.alphas(t)
        pred = self.scheduler.config.prediction_type
        size = tcc.frame_chunk or n
        starts = [0] + list(range(size - 1, n - 1, max(size - 1, 1)))  # one frame: size 1, one chunk
        terms = {"loss": 0.0, "tmp": 0.0, "agr": 0.0}
        # Lightning's test/predict run under inference_mode: leave it locally and use ordinary copies of the inputs
        with torch.inference_mode(False), torch.enable_grad():
            z, emb_c, emb_u = z.clone(), emb_c.clone(), emb_u.clone()
            cond = DepthCondition([c.clone() for c in cond.tensors], cond.scale) if cond is not None else None
            ref = ref.clone() if ref is not None else None
            w_u = emb_u if tcc.cfg_in_update else None
            grad = torch.zeros_like(z)
            for a in starts:
                b = min(n, a + size)
                zc = z[a:b].detach().requires_grad_(True)  # (f, C, h, w) learnable Ẑ_t of this chunk
                sub = cond.slice(a, b) if cond is not None else None
                x0_text, _ = ddim_step(
                    zc, self.predict_noise(zc, t, emb_c, w_u, None, config.guidance_scale), a_t, a_prev, pred
                )  # text-only branch x̂'_0
                x0_depth, _ = ddim_step(
                    zc, self.predict_noise(zc, t, emb_c, w_u, sub, config.guidance_scale), a_t, a_prev, pred
                )  # depth-guided branch x̂_0
                own = 0 if a == 0 else 1  # the overlap frame's L_agr term belongs to the previous chunk
                tmp = temporal_loss(x0_depth, ref[a:b] if ref is not None else None, tcc.temporal_pairs)
                tmp = tmp * ((b - a - 1) / (n - 1) if n > 1 else 0.0)
                agr = agreement_loss(x0_depth[own:], x0_text[own:], tcc.agree_target) * ((b - a - own) / n)
                loss = tcc.lambda_tmp * tmp + tcc.lambda_agr * agr
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"EVE update: non-finite loss {loss.item()} at t={int(t)}")
                (g,) = torch.autograd.grad(loss, zc)
                grad[a:b] += g
                terms["loss"] += loss.item()
                terms["tmp"] += tmp.item()
                terms["agr"] += agr.item()
                if b == n:
                    break
            step = tcc.step * math.sqrt(1.0 - float(a_t))
            rms = grad.pow(2).mean().sqrt()
            z = z - step * grad / (rms + 1e-8)
        return z, terms

    # --------------------------------------------------------------------------------------------- __call__
    def __call__(
        self,
        frames: torch.Tensor,
        source_prompt: str,
        target_prompts: str | list[str],
        depth: torch.Tensor | None = None,
        config: EditConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> EVEPipelineOutput:
        """Edit one clip for each target prompt.

        Args:
            frames: uint8 (F, 3, H, W) source frames (H, W multiples of the backbone's factor).
            source_prompt: p_src, describes the source clip.
            target_prompts: one or several p_tgt; depth and inversion are computed once and shared.
            depth: optional raw depth maps (F, H', W') (precomputed MiDaS), used instead of the estimator.
            config: the edit settings (:class:`~evedit.models.EditConfig`); defaults = spec defaults.
            generator: for `sdedit` / `noise` initialisation and η > 0.
        """
        config = config or EditConfig()
        prompts = [target_prompts] if isinstance(target_prompts, str) else list(target_prompts)
        self.check_inputs(frames, source_prompt, prompts, depth, config)
        device = self.exec_device
        timer = _Timer(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        n = frames.shape[0]
        tcc = config.tcc
        set_cross_frame_attention(self.unet, n, tcc.attention)
        if tcc.grad_checkpointing:
            self.unet.enable_gradient_checkpointing()
        try:
            # 1. depth maps and depth features M (once per clip)
            t0 = timer.now()
            depth01 = self.prepare_depth(frames.to(device), depth, config)  # (F, H, W) in [0, 1]
            cond = self.encode_depth(depth01, config)
            t_depth = timer.now() - t0

            # 2. source latents and DDIM inversion with depth
            t0 = timer.now()
            z0 = self.encode_frames(frames, config)  # (F, C, h, w)
            emb_src, emb_null = self.encode_prompt([source_prompt, ""]).chunk(2)  # (1, L, D) each
            traj = None
            if config.init == "ddim_inversion":
                emb_inv = emb_src if config.inversion_prompt == "source" else emb_null
                traj = self.invert(z0, emb_inv, cond, config.num_inference_steps, config.inversion_timestep)
            t_inv = timer.now() - t0

            videos, timings, losses = [], [], []
            for prompt in prompts:
                video, timing, history = self._denoise_clip(prompt, z0, traj, cond, emb_null, config, generator, timer)
                timing.update(depth_s=t_depth, inversion_s=t_inv)
                timing["total_s"] = t_depth + t_inv + timing["denoise_s"] + timing["decode_s"]
                if device.type == "cuda":
                    timing["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                videos.append(video)
                timings.append(timing)
                losses.append(history)
        finally:
            if tcc.attention != "none":
                set_cross_frame_attention(self.unet, n, "none")
            if tcc.grad_checkpointing:
                self.unet.disable_gradient_checkpointing()
        return EVEPipelineOutput(videos=videos, depth=depth01.cpu(), timings=timings, losses=losses)

    def _denoise_clip(
        self,
        prompt: str,
        z0: torch.Tensor,
        traj: list | None,
        cond: DepthCondition,
        emb_null: torch.Tensor,
        config: EditConfig,
        generator: torch.Generator | None,
        timer: _Timer,
    ) -> tuple[torch.Tensor, dict[str, float], list[dict[str, float]]]:
        """Steps 3-4 for one target prompt: the denoising loop with per-step updates, then decoding."""
        tcc = config.tcc
        self.scheduler.set_timesteps(config.num_inference_steps, device=z0.device)
        timesteps = self.scheduler.timesteps
        emb_c = self.encode_prompt([prompt])  # (1, L, D)
        t0 = timer.now()
        z, start = self.prepare_latents(z0, config, traj, generator)
        # step i of n lies in the schedule's first `update_until` fraction when i/n < update_until (no rounding: 5
        # steps at 0.5 update at i = 0, 1, 2)
        n_update = sum(1 for i in range(len(timesteps)) if i / len(timesteps) < tcc.update_until)
        t_update = 0.0
        history: list[dict[str, float]] = []
        for i, t in enumerate(self.progress_bar(timesteps[start:]), start=start):
            if i < n_update and tcc.iters > 0:
                ref = None
                if tcc.temporal_ref == "source":
                    ref = z0
                elif tcc.temporal_ref == "inversion":
                    ref = traj[len(timesteps) - 1 - i][1]  # x̂_0 of the inversion step that landed at t
                u0 = timer.now()
                for _ in range(tcc.iters):
                    z, terms = self.update_latents(z, t, emb_c, emb_null, cond, ref, config)
                    history.append(terms)
                t_update += timer.now() - u0
            with torch.no_grad():
                out = self.predict_noise(z, t, emb_c, emb_null, cond, config.guidance_scale)  # ε̃ (or ṽ) with M
                if tcc.latent_smooth > 0 and i < n_update:
                    a_t, a_prev = self.alphas(t)
                    # the step re-noises with the noise estimate ε̂, which is the UNet output only for ε-prediction
                    x0, eps = _x0_and_noise(z, out, a_t, self.scheduler.config.prediction_type)
                    x0 = (1 - tcc.latent_smooth) * x0 + tcc.latent_smooth * _neighbour_mean(x0)
                    z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
                else:
                    z = self.scheduler.step(out, t, z, eta=config.eta, generator=generator).prev_sample
        t_denoise = timer.now() - t0
        t0 = timer.now()
        video = self.decode_latents(z, config)
        t_decode = timer.now() - t0
        return video, {"denoise_s": t_denoise, "update_s": t_update, "decode_s": t_decode}, history


def _neighbour_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of each frame's existing neighbours f−1, f+1 along dim 0 (F, ...); a single frame maps to itself."""
    if x.shape[0] < 2:
        return x
    left = torch.cat([x[1:2], x[:-1]])  # predecessor (frame 1 for frame 0)
    right = torch.cat([x[1:], x[-2:-1]])  # successor (frame F−2 for frame F−1)
    return 0.5 * (left + right)
