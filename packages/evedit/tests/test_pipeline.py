"""Unit checks of spec §8d on the tiny random models."""

import math

import pytest
import torch
from diffusers import DDIMScheduler
from mmzoo.testing import repeated_index_reads

from evedit.models import (
    DepthConfig,
    EditConfig,
    ModelConfig,
    TCCConfig,
    build_components,
    build_tiny_variant,
    set_cross_frame_attention,
)
from evedit.pipeline import DepthCondition, EVEPipeline, ddim_step

F_, S = 3, 16  # frames, frame size (latents 8×8)


def tiny_edit(**tcc) -> EditConfig:
    return EditConfig(num_inference_steps=4, depth=DepthConfig(estimator_size=32), tcc=TCCConfig(**tcc))


def _frames(seed=0):
    from evedit.data import synthetic_clip

    return synthetic_clip(F_, S, seed=seed)["frames"]


def _inputs(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(F_, 4, S // 2, S // 2, generator=g)
    emb_c, emb_u = pipe.encode_prompt(["a blue circle", ""]).chunk(2)
    depth = torch.rand(F_, S, S, generator=g)
    cond = pipe.encode_depth(depth, tiny_edit())
    return z, emb_c, emb_u, cond


def test_ddim_step_equals_scheduler_and_gradient_matches_finite_differences(tiny_pipe):
    s = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    s.set_timesteps(10)
    tiny_pipe.scheduler.set_timesteps(10)
    z, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = s.timesteps[3]
    out = s.step(eps, t, z)
    a_t, a_prev = tiny_pipe.alphas(t)
    x0, z_prev = ddim_step(z, eps, a_t, a_prev)
    torch.testing.assert_close(x0, out.pred_original_sample)
    torch.testing.assert_close(z_prev, out.prev_sample)
    # gradient of <x̂_0(z), v> w.r.t. z through the tiny UNet, against central differences (float64)
    unet = build_components(ModelConfig(backbone="tiny", depth_model="precomputed")).unet.double()
    emb = torch.randn(1, 16, 32, dtype=torch.float64)
    z = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    v, d = torch.randn_like(z), torch.randn_like(z)

    def f(x):
        return (ddim_step(x, unet(x, t, encoder_hidden_states=emb).sample, a_t.double(), a_prev.double())[0] * v).sum()

    (g,) = torch.autograd.grad(f(z), z)
    h = 1e-5
    with torch.no_grad():
        fd = (f(z + h * d) - f(z - h * d)) / (2 * h)
    assert (g * d).sum().item() == pytest.approx(fd.item(), rel=1e-5)


def test_zero_depth_scale_reproduces_plain_unet_and_residual_lists_are_rebuilt(tiny_pipe):
    z, emb_c, _, cond = _inputs(tiny_pipe)
    t = torch.tensor(500)
    emb = emb_c.expand(F_, -1, -1)
    with torch.no_grad():
        plain = tiny_pipe.denoise(z, t, emb, None)
        zero = DepthCondition([c * 0.0 for c in cond.tensors], 0.0)
        assert torch.equal(tiny_pipe.denoise(z, t, emb, zero), plain)  # bit for bit
        d1 = tiny_pipe.denoise(z, t, emb, cond)
        d2 = tiny_pipe.denoise(z, t, emb, cond)  # the depth branch twice
        p2 = tiny_pipe.denoise(z, t, emb, None)  # then the text branch
    assert torch.equal(d1, d2) and torch.equal(plain, p2)
    assert not torch.allclose(d1, plain)  # the depth features do change the prediction
    assert len(cond.tensors) == 2  # the UNet popped copies, not our list


def test_update_step_zero_keeps_latent_and_never_touches_parameters(tiny_pipe):
    z, emb_c, emb_u, cond = _inputs(tiny_pipe)
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[0]
    before = [p.detach().clone() for p in tiny_pipe.unet.parameters()]
    z_same, _ = tiny_pipe.update_latents(z, t, emb_c, emb_u, cond, z * 0.5, tiny_edit(step=0.0))
    assert torch.equal(z_same, z)
    z_new, terms = tiny_pipe.update_latents(z, t, emb_c, emb_u, cond, z * 0.5, tiny_edit())
    assert not torch.equal(z_new, z) and terms["loss"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_pipe.unet.parameters(), strict=True))
    assert all(p.grad is None for p in tiny_pipe.unet.parameters())


def test_update_loss_falls_when_repeated(tiny_pipe):
    z, emb_c, emb_u, cond = _inputs(tiny_pipe, seed=1)
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[0]
    ref = torch.randn_like(z)
    losses = []
    for _ in range(4):
        z, terms = tiny_pipe.update_latents(z, t, emb_c, emb_u, cond, ref, tiny_edit(step=0.05))
        losses.append(terms["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("t_index", [0, 2])
def test_one_update_step_descends_the_objective(tiny_pipe, t_index):
    """Sign and direction of the update (spec §3.4): Ẑ_t moves along −∇L of L = λ_tmp·L_tmp + λ_agr·L_agr, recomputed
    here independently through ``tcc_loss``, and one small step lowers L at the same t."""
    from evedit.losses import tcc_loss

    z, emb_c, emb_u, cond = _inputs(tiny_pipe, seed=2)
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[t_index]
    a_t, a_prev = tiny_pipe.alphas(t)
    ref = torch.randn_like(z)

    def objective(x):
        x0_text, _ = ddim_step(x, tiny_pipe.predict_noise(x, t, emb_c, None, None, 1.0), a_t, a_prev)
        x0_depth, _ = ddim_step(x, tiny_pipe.predict_noise(x, t, emb_c, None, cond, 1.0), a_t, a_prev)
        return tcc_loss(x0_depth, x0_text, ref, lambda_tmp=1.0, lambda_agr=0.5)["loss"]

    zg = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(zg), zg)
    cfg = tiny_edit(step=1e-3)
    z_new, terms = tiny_pipe.update_latents(z, t, emb_c, emb_u, cond, ref, cfg)
    step = -(z_new - z)
    cos = torch.nn.functional.cosine_similarity(step.flatten(), g.flatten(), dim=0)
    assert cos.item() > 0.999  # the step is along +∇L, subtracted: descent
    with torch.no_grad():
        assert terms["loss"] == pytest.approx(objective(z).item(), rel=1e-4)
        assert objective(z_new).item() < objective(z).item()


def test_agreement_vanishes_without_depth_and_chunked_gradient_equals_whole(tiny_pipe):
    z, emb_c, emb_u, cond = _inputs(tiny_pipe)
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[1]
    zero = DepthCondition([c * 0.0 for c in cond.tensors], 0.0)
    _, terms = tiny_pipe.update_latents(z, t, emb_c, emb_u, zero, None, tiny_edit())
    assert terms["agr"] == 0.0
    with repeated_index_reads() as repeated:  # fixed-order gradient sums: an edit repeats on one machine
        whole, tw = tiny_pipe.update_latents(z, t, emb_c, emb_u, cond, z, tiny_edit())
        chunked, tc = tiny_pipe.update_latents(z, t, emb_c, emb_u, cond, z, tiny_edit(frame_chunk=2))
    assert repeated == []
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-5)
    assert tc["loss"] == pytest.approx(tw["loss"], rel=1e-4)


@pytest.mark.parametrize("mode", ["first", "sparse_causal", "full"])
def test_chunked_backward_refuses_cross_frame_attention(mode):
    """The chunked gradient equals the clip's only when frames do not attend to each other; with cross-frame
    attention a chunk of 2 frames of a 4-frame clip under cfg_in_update (batch 4) would even be read as one clip,
    its CFG halves attending to each other."""
    assert TCCConfig(frame_chunk=2).frame_chunk == 2 and TCCConfig(attention=mode).attention == mode
    with pytest.raises(ValueError, match="model.edit.tcc.frame_chunk needs model.edit.tcc.attention='none'"):
        TCCConfig(frame_chunk=2, attention=mode, cfg_in_update=True)


def test_inversion_then_denoising_reconstructs_source():
    cfg = ModelConfig(backbone="tiny", depth_model="precomputed", tiny_pixel_space=True)
    pipe = EVEPipeline.from_components(build_components(cfg)).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # a random UNet is far from smooth in z; damp it so that ε(z_t) ≈ ε(z_{t-1}) holds
        pipe.unet.conv_out.weight.mul_(0.02)
        pipe.unet.conv_out.bias.mul_(0.02)
    z0 = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    emb = pipe.encode_prompt(["a red circle"]).double()
    steps = 25
    traj = pipe.invert(z0, emb, None, steps)
    pipe.scheduler.set_timesteps(steps)
    z = traj[-1][0]
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            z = pipe.scheduler.step(pipe.predict_noise(z, t, emb, None, None, 1.0), t, z).prev_sample
    err = (z - z0).abs().mean().item()
    assert err < 0.02 * z0.abs().mean().item()
    assert (traj[-1][0] - z0).abs().mean().item() > 0.3  # Z_T really is far from Z_0


def test_pixel_scale_is_the_identity_vae_scaling_factor():
    """`vae: identity` with a scaling factor (SD's 0.18215 role): Z_0 = scale·x, decoding divides it back out."""
    cfg = ModelConfig(
        backbone="tiny", depth_model="precomputed", tiny_pixel_space=True, tiny_channels=[8, 16], tiny_pixel_scale=4.0
    )
    pipe = EVEPipeline.from_components(build_components(cfg))
    frames = _frames()
    z0 = pipe.encode_frames(frames, EditConfig())
    torch.testing.assert_close(z0, (frames.float() / 127.5 - 1.0) * 4.0)
    assert torch.equal(pipe.decode_latents(z0, EditConfig()), frames)
    with pytest.raises(ValueError, match="tiny_pixel_scale"):
        ModelConfig(backbone="tiny", tiny_pixel_space=True, tiny_pixel_scale=0.0)


def test_edit_runs_end_to_end_with_every_init_and_temporal_reference(tiny_pipe):
    frames = _frames()
    out = tiny_pipe(frames, "a red circle", ["a blue circle", "a green circle"], config=tiny_edit())
    assert len(out.videos) == 2 and out.videos[0].shape == frames.shape and out.videos[0].dtype == torch.uint8
    assert out.depth.shape == (F_, S, S) and 0.0 <= out.depth.min() and out.depth.max() <= 1.0
    assert {"depth_s", "inversion_s", "denoise_s", "update_s", "decode_s", "total_s"} <= set(out.timings[0])
    assert len(out.losses[0]) == 2  # update on the first half of 4 steps, 1 iteration
    for cfg in (
        EditConfig(num_inference_steps=2, init="sdedit", strength=0.5),
        EditConfig(num_inference_steps=2, init="noise", init_shared_noise=False, tcc=TCCConfig(iters=0)),
        EditConfig(
            num_inference_steps=2, tcc=TCCConfig(temporal_ref="inversion", latent_smooth=0.5, attention="sparse_causal")
        ),
    ):
        cfg.depth.estimator_size = 32
        out = tiny_pipe(frames, "a red circle", "a blue circle", config=cfg, generator=torch.Generator().manual_seed(0))
        assert out.videos[0].shape == frames.shape
    # cross-frame processors are removed after the call
    assert all(type(p).__name__ != "CrossFrameAttnProcessor" for p in tiny_pipe.unet.attn_processors.values())


@pytest.mark.parametrize("mode", ["first", "sparse_causal", "full"])
def test_cross_frame_attention_identical_frames_and_no_mixing_of_halves(tiny_pipe, mode):
    unet = tiny_pipe.unet
    g = torch.Generator().manual_seed(0)
    frame = torch.randn(1, 4, 8, 8, generator=g)
    z = torch.cat([frame.expand(3, -1, -1, -1), torch.randn(3, 4, 8, 8, generator=g)])  # two halves of 3 frames
    emb = torch.randn(2, 16, 32, generator=g).repeat_interleave(3, dim=0)  # one prompt per half
    t = torch.tensor(10)
    with torch.no_grad():
        set_cross_frame_attention(unet, 3, "none")
        stock = unet(z, t, encoder_hidden_states=emb).sample
        set_cross_frame_attention(unet, 3, mode)
        cross = unet(z, t, encoder_hidden_states=emb).sample
        half = unet(z[:3], t, encoder_hidden_states=emb[:3]).sample  # first half alone
        set_cross_frame_attention(unet, 3, "none")
    # identical frames: attending to copies of the same keys gives the stock output
    torch.testing.assert_close(cross[:3], stock[:3], rtol=1e-4, atol=1e-5)
    # the first half is unaffected by the second (no mixing of CFG halves)
    torch.testing.assert_close(cross[:3], half, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["controlnet_depth", "sd2_depth"])
def test_alternative_backbones_edit(backbone):
    comps = build_tiny_variant(ModelConfig(backbone="tiny", depth_model="precomputed"), backbone)
    pipe = EVEPipeline.from_components(comps)
    pipe.set_progress_bar_config(disable=True)
    frames = _frames()
    depth = torch.rand(F_, S, S)
    out = pipe(frames, "a red circle", "a blue circle", depth=depth, config=EditConfig(num_inference_steps=2))
    assert out.videos[0].shape == frames.shape and len(out.losses[0]) == 1


def test_check_inputs_errors(tiny_pipe):
    frames = _frames()
    with pytest.raises(ValueError, match="uint8"):
        tiny_pipe(frames.float(), "a", "b", config=tiny_edit())
    with pytest.raises(ValueError, match="multiples"):
        tiny_pipe(frames[..., :15, :15], "a", "b", config=tiny_edit())
    with pytest.raises(ValueError, match="target_prompts"):
        tiny_pipe(frames, "a", [], config=tiny_edit())
    with pytest.raises(ValueError, match="depth"):
        tiny_pipe(frames, "a", "b", depth=torch.rand(2, S, S), config=tiny_edit())
    with pytest.raises(ValueError, match="empty"):
        tiny_pipe(frames[:0], "a", "b", config=tiny_edit())


def test_without_update_per_frame_noise_equals_diffusers_adapter_pipeline(tiny_pipe):
    from diffusers import StableDiffusionAdapterPipeline
    from diffusers.utils.torch_utils import randn_tensor

    frames = _frames(seed=2)
    raw = torch.rand(F_, S, S, generator=torch.Generator().manual_seed(3))
    cfg = EditConfig(
        num_inference_steps=3,
        init="noise",
        init_shared_noise=False,
        tcc=TCCConfig(iters=0),
        depth=DepthConfig(norm="frame"),
    )
    ours = tiny_pipe(
        frames, "a red circle", "a blue circle", depth=raw, config=cfg, generator=torch.Generator().manual_seed(0)
    ).videos[0]
    ref_pipe = StableDiffusionAdapterPipeline(
        vae=tiny_pipe.vae,
        text_encoder=tiny_pipe.text_encoder,
        tokenizer=tiny_pipe.tokenizer,
        unet=tiny_pipe.unet,
        adapter=tiny_pipe.depth_encoder,
        scheduler=tiny_pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref_pipe.set_progress_bar_config(disable=True)
    depth01 = tiny_pipe.prepare_depth(frames, raw, cfg)[:, None].expand(-1, 3, -1, -1)
    emb_c, emb_u = tiny_pipe.encode_prompt(["a blue circle", ""]).chunk(2)
    latents = randn_tensor((F_, 4, S // 2, S // 2), generator=torch.Generator().manual_seed(0))
    ref = ref_pipe(
        image=depth01,
        prompt_embeds=emb_c.expand(F_, -1, -1),
        negative_prompt_embeds=emb_u.expand(F_, -1, -1),
        height=S,
        width=S,
        num_inference_steps=3,
        guidance_scale=cfg.guidance_scale,
        latents=latents,
        output_type="pt",
    ).images
    ref = torch.as_tensor(ref)
    ref = ref.permute(0, 3, 1, 2) if ref.shape[-1] == 3 else ref  # (F, 3, S, S) in [0, 1]
    assert (ours.float() - ref * 255).abs().max().item() <= 1.0


def test_to_moves_the_depth_encoder_and_estimator():
    """`pipe.to(device or dtype)` reaches every network, the optional depth encoder and estimator included."""
    pipe = EVEPipeline.from_components(build_components(ModelConfig(backbone="tiny", depth_model="tiny")))
    assert {"depth_encoder", "depth_estimator"} <= set(pipe.components)
    pipe.to(torch.float64)
    for name in ("unet", "vae", "text_encoder", "depth_encoder", "depth_estimator"):
        module = getattr(pipe, name)
        assert module is not None, name
        assert {p.dtype for p in module.parameters()} == {torch.float64}, name


@pytest.mark.parametrize("timestep", ["destination", "source"])
def test_inversion_asks_the_unet_at_the_chosen_timestep(timestep, monkeypatch):
    cfg = ModelConfig(backbone="tiny", depth_model="precomputed", tiny_pixel_space=True)
    pipe = EVEPipeline.from_components(build_components(cfg))
    pipe.set_progress_bar_config(disable=True)
    asked = []
    real = pipe.predict_noise

    def spy(z, t, *args):
        asked.append(int(t))
        return real(z, t, *args)

    monkeypatch.setattr(pipe, "predict_noise", spy)
    traj = pipe.invert(torch.rand(2, 3, 16, 16) * 2 - 1, pipe.encode_prompt(["a red circle"]), None, 4, timestep)
    destinations = [int(t) for t in pipe.inverse_scheduler.timesteps]  # 1, 251, 501, 751: where each step lands
    assert destinations == [1, 251, 501, 751] and len(traj) == 4
    # destination: the diffusers convention; source: spec §3.3's ε_θ(Z_t, t) at the step's start (0 for the first)
    assert asked == (destinations if timestep == "destination" else [0, 1, 251, 501])


def test_pretrained_scheduler_never_clips_latents():
    """An SD scheduler_config.json without `clip_sample` makes DDIM (and the inverse scheduler built from it) clip
    x̂_0 to ±1; SD latents span several units, so the loaded scheduler must have clipping off."""
    from diffusers import DDIMInverseScheduler

    from evedit.models import latent_ddim_scheduler

    sd_config = {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
    }
    loaded = DDIMScheduler.from_config(sd_config)
    assert loaded.config.clip_sample  # diffusers' default when the key is absent
    sched = latent_ddim_scheduler(loaded)
    assert not sched.config.clip_sample and not DDIMInverseScheduler.from_config(sched.config).config.clip_sample
    assert sched.config.steps_offset == 1 and sched.config.beta_schedule == "scaled_linear"
    sched.set_timesteps(10)
    z = torch.full((1, 4, 2, 2), 3.0)
    out = sched.step(torch.zeros_like(z), sched.timesteps[-1], z).pred_original_sample
    assert out.max() > 2.0  # x̂_0 = z/sqrt(ᾱ) is not clipped to 1
    kept = DDIMScheduler.from_config({**sd_config, "clip_sample": False})
    assert latent_ddim_scheduler(kept) is kept


def test_depth_estimator_input_matches_the_dpt_image_processor(tiny_pipe, textured_frame):
    """The MiDaS input: the DPT image processor's (PIL, antialiased) bicubic resize of a 512² frame to the 384²
    estimator input, mean = std = 0.5; a textured frame shows an aliased downsampling."""
    from PIL import Image
    from transformers import DPTImageProcessor

    from evedit.models import EditConfig

    class _Seen(Exception):
        pass

    def capture(pixel_values, **kw):
        got["x"] = pixel_values
        raise _Seen

    frames = textured_frame(0.1)  # (1, 3, 512, 512)
    got = {}
    est = tiny_pipe.depth_estimator
    est.forward = capture
    try:
        with pytest.raises(_Seen):
            tiny_pipe.estimate_depth(frames, EditConfig())
    finally:
        del est.forward  # back to the class's forward
    proc = DPTImageProcessor(size={"height": 384, "width": 384}, resample=Image.BICUBIC, image_mean=0.5, image_std=0.5)
    ref = proc(images=[Image.fromarray(frames[0].permute(1, 2, 0).numpy())], return_tensors="pt").pixel_values
    assert (got["x"] - ref).abs().mean() < 0.008  # 0.002 antialiased, 0.020 without


def test_latent_smoothing_renoises_with_the_noise_estimate_under_v_prediction():
    """The smoothed step z_{t-1} = sqrt(ᾱ_{t-1})·x̂_0 + sqrt(1-ᾱ_{t-1})·ε̂ needs the noise estimate ε̂; a v-prediction
    UNet returns v, not ε̂. A single frame is its own neighbour mean, so smoothing must leave the edit as it is."""
    comps = build_components(
        ModelConfig(backbone="tiny", depth_model="precomputed", tiny_pixel_space=True, tiny_channels=[8, 16])
    )
    frames = _frames()[:1]
    depth = torch.rand(1, S, S, generator=torch.Generator().manual_seed(0))
    for prediction_type in ("epsilon", "v_prediction"):
        comps.scheduler = DDIMScheduler.from_config(comps.scheduler.config, prediction_type=prediction_type)
        pipe = EVEPipeline.from_components(comps)
        pipe.set_progress_bar_config(disable=True)
        videos = []
        for alpha in (0.0, 0.5):
            cfg = EditConfig(num_inference_steps=4, tcc=TCCConfig(iters=0, latent_smooth=alpha, update_until=1.0))
            videos.append(pipe(frames, "a red circle", "a blue circle", depth=depth, config=cfg).videos[0])
        assert videos[0].float().std() > 5  # a real picture, not a saturated one
        assert (videos[0].int() - videos[1].int()).abs().max().item() <= 1, prediction_type


def test_cross_frame_attention_keeps_the_processors_the_unet_had(tiny_pipe):
    """Processors set on the UNet before an edit (another attention backend) survive: 'none' used to install the
    stock processor everywhere, on every call, even when nothing had been installed."""
    from diffusers.models.attention_processor import AttnProcessor

    unet = tiny_pipe.unet
    before = unet.attn_processors
    try:
        unet.set_attn_processor(AttnProcessor())
        set_cross_frame_attention(unet, 3, "none")  # nothing installed: nothing changes
        assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
        set_cross_frame_attention(unet, 3, "sparse_causal")
        kinds = {name: type(p).__name__ for name, p in unet.attn_processors.items()}
        assert all(k == "CrossFrameAttnProcessor" for n, k in kinds.items() if n.endswith("attn1.processor"))
        assert all(k == "AttnProcessor" for n, k in kinds.items() if not n.endswith("attn1.processor"))
        set_cross_frame_attention(unet, 3, "first")  # a second installation keeps the original set to restore
        set_cross_frame_attention(unet, 3, "none")
        assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    finally:
        unet.set_attn_processor(before)


def test_sd2_depth_channel_stays_in_range_at_depth_edges():
    """The depth channel of the SD2-depth UNet is depth in [0, 1] mapped to [−1, 1]; bicubic down-sizing of a
    sharp depth edge overshot that range (by 0.19 here)."""
    comps = build_tiny_variant(ModelConfig(backbone="tiny", depth_model="precomputed"), "sd2_depth")
    pipe = EVEPipeline.from_components(comps)
    depth01 = torch.zeros(2, 64, 64)
    depth01[:, :, 30:] = 1.0  # with 2× down-sizing, the cubic kernel's negative lobe reaches across this edge
    channel = pipe.encode_depth(depth01, EditConfig()).tensors[0]
    assert channel.min() >= -1.0 and channel.max() <= 1.0
    assert channel.min() == -1.0 and channel.max() == 1.0


@pytest.mark.parametrize("tcc", [{}, {"frame_chunk": 2}, {"temporal_pairs": "key"}, {"attention": "sparse_causal"}])
def test_a_one_frame_clip_edits(tiny_pipe, tcc):
    """A one-frame video (data.frames_mode first/stride, or any mode once a clip is shorter than data.num_frames):
    the temporal term is 0 and the update runs on the agreement term alone; the chunked backward used to step
    through range(0, 0, 0) and fail."""
    frames = _frames()[:1]
    out = tiny_pipe(frames, "a red circle", "a blue circle", config=tiny_edit(**tcc))
    assert out.videos[0].shape == frames.shape and out.depth.shape == (1, S, S)
    assert len(out.losses[0]) == 2 and all(math.isfinite(step["loss"]) for step in out.losses[0])
    assert all(step["tmp"] == 0.0 for step in out.losses[0])


def test_updates_run_in_the_first_update_until_fraction_of_the_steps(tiny_pipe):
    """Step i of n is updated when i/n < update_until, without rounding: 5 steps at 0.5 update at i = 0, 1, 2 (Python's
    round-half-even took 2), 10 at 0.3 at i = 0, 1, 2, 4 at 0.5 at i = 0, 1."""
    frames = _frames()
    for steps, until, expected in ((5, 0.5, 3), (10, 0.3, 3), (4, 0.5, 2), (4, 0.0, 0)):
        cfg = EditConfig(
            num_inference_steps=steps, depth=DepthConfig(estimator_size=32), tcc=TCCConfig(iters=1, update_until=until)
        )
        out = tiny_pipe(frames, "a red circle", "a blue circle", config=cfg)
        assert len(out.losses[0]) == expected, (steps, until)
