"""EVE editing cost: seconds and peak memory per clip for EVE and its ablations (issue 11, spec §3.6).

Cases: ``eve`` (depth + per-step latent update), ``no_update`` (tcc.iters = 0: depth-guided editing from the
inverted noise) and ``per_frame`` (no update, independent noise per frame: the image pipeline on each frame).
On CUDA: an 8-frame 512² clip, T = 50, through networks of Stable Diffusion v1.5 + depth T2I-Adapter *size*
(random weights built from their configs; timing does not depend on the weights), fp16, gradient checkpointing
in the update. On CPU: tiny models, 4 frames of 32², T = 4. Depth maps are given (MiDaS time is not included).

    python benchmarks/evedit.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python benchmarks/evedit.py` puts benchmarks/ first on sys.path, where this very file would shadow the
# `evedit` package: drop that entry before importing it.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from evedit.models import (  # noqa: E402
    DepthConfig,
    EditConfig,
    EVEComponents,
    ModelConfig,
    TCCConfig,
    WordTokenizer,
    build_components,
)
from evedit.pipeline import EVEPipeline  # noqa: E402
from mmzoo.bench import emit, measure, pick_device  # noqa: E402


def sd15_sized_components(dtype: torch.dtype) -> EVEComponents:
    """SD v1.5 UNet / VAE / CLIP-L text encoder and the depth T2I-Adapter, random weights, from their configs."""
    from diffusers import AutoencoderKL, DDIMScheduler, T2IAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
        )
    )
    adapter = T2IAdapter(
        in_channels=3,
        channels=[320, 640, 1280, 1280],
        num_res_blocks=2,
        downscale_factor=8,
        adapter_type="full_adapter",
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    for m in (unet, vae, text, adapter):
        m.to(dtype).eval().requires_grad_(False)
    return EVEComponents(unet, vae, text, WordTokenizer(49408, 77), adapter, None, sched, "sd15_t2i_adapter_depth")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default=None)
    a = p.parse_args()
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        comps = sd15_sized_components(torch.float16)
        frames_n, size, steps, warmup, iters = 8, 512, 50, 1, 2
    else:
        torch.set_num_threads(1)
        comps = build_components(ModelConfig(backbone="tiny", depth_model="precomputed"))
        frames_n, size, steps, warmup, iters = 4, 32, 4, 1, 2
    pipe = EVEPipeline.from_components(comps).to(device)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (frames_n, 3, size, size), dtype=torch.uint8, generator=g)
    depth = torch.rand(frames_n, size, size, generator=g)
    cases = {
        "eve": TCCConfig(grad_checkpointing=cuda),
        "no_update": TCCConfig(iters=0),
        "per_frame": TCCConfig(iters=0),
    }
    for case, tcc in cases.items():
        cfg = EditConfig(
            num_inference_steps=steps,
            depth=DepthConfig(),
            tcc=tcc,
            init="noise" if case == "per_frame" else "ddim_inversion",
            init_shared_noise=case != "per_frame",
        )
        last: dict = {}

        def run(cfg=cfg, last=last) -> None:
            out = pipe(
                frames,
                "a red car driving on a road",
                "a blue car driving on a road",
                depth=depth,
                config=cfg,
                generator=torch.Generator().manual_seed(0),
            )
            last.update(out.timings[0])

        rec = measure(run, items_per_call=1, device=device, warmup=warmup, iters=iters)
        emit(
            {
                "bench": "evedit",
                "case": case,
                "batch": 1,
                "frames": frames_n,
                "size": size,
                "steps": steps,
                **rec,
                "update_s": round(last.get("update_s", 0.0), 3),
                "inversion_s": round(last.get("inversion_s", 0.0), 3),
            }
        )


if __name__ == "__main__":
    main()
