"""Ablation switches of the official code (spec §3.1): spectral refine, token / temporal shift, divided space-time
attention and CLIP-ViP video proxies — one hand-checkable property each."""

from __future__ import annotations

import math

import pytest
import torch
from rtqvl_testlib import tiny_config, tiny_vision
from transformers.models.blip.modeling_blip import BlipEncoderLayer

from rtqvl.models import RTQVisionEncoder, build_model
from rtqvl.models.video import (
    DividedTemporalAttention,
    VisionConfig,
    refine_segments,
    sparse_sampling_indices,
    spectral_affinity,
    spectral_medoids,
    temporal_shift,
    token_shift,
    video_proxy_block,
)


def _frames(b: int = 2, t: int = 3, n: int = 5, d: int = 16) -> torch.Tensor:
    """(B·T, N, D) with value = 1000·b + 100·t + n + 0.01·channel, so every entry names its origin."""
    bi, ti, ni, ci = torch.meshgrid(torch.arange(b), torch.arange(t), torch.arange(n), torch.arange(d), indexing="ij")
    return (1000.0 * bi + 100.0 * ti + ni + 0.01 * ci).reshape(b * t, n, d)


def test_token_shift_moves_one_eighth_of_cls_channels_each_way():
    b, t, n, d = 2, 3, 5, 16  # fold = 16 / 8 = 2 channels each way
    x = _frames(b, t, n, d)
    out = token_shift(x, t, fold_div=8).view(b, t, n, d)
    v = x.view(b, t, n, d)
    # CLS channels 0–1 come from the next frame (zero at the last), 2–3 from the previous (zero at the first)
    assert torch.equal(out[:, :-1, 0, :2], v[:, 1:, 0, :2]) and torch.all(out[:, -1, 0, :2] == 0)
    assert torch.equal(out[:, 1:, 0, 2:4], v[:, :-1, 0, 2:4]) and torch.all(out[:, 0, 0, 2:4] == 0)
    assert torch.equal(out[:, :, 0, 4:], v[:, :, 0, 4:])  # the other 3/4 of the channels stay
    assert torch.equal(out[:, :, 1:], v[:, :, 1:])  # patch tokens untouched
    assert out[0, 0, 0, 0] == 100.0  # frame 0 reads frame 1 of the same video, never another video
    assert out[1, 1, 0, 2] == 1000.0 + 0.02


def test_temporal_shift_moves_patch_channels_and_keeps_cls():
    b, t, n, d = 2, 3, 5, 16
    x = _frames(b, t, n, d)
    out = temporal_shift(x, t, fold_div=8).view(b, t, n, d)
    v = x.view(b, t, n, d)
    assert torch.equal(out[:, :, 0], v[:, :, 0])
    assert torch.equal(out[:, :-1, 1:, :2], v[:, 1:, 1:, :2]) and torch.all(out[:, -1, 1:, :2] == 0)
    assert torch.equal(out[:, 1:, 1:, 2:4], v[:, :-1, 1:, 2:4]) and torch.all(out[:, 0, 1:, 2:4] == 0)
    assert torch.equal(out[:, :, 1:, 4:], v[:, :, 1:, 4:])


def test_shift_refine_needs_one_frame_per_segment():
    with pytest.raises(ValueError, match="num_segments"):
        tiny_vision(refine="token_shift")  # 4 frames, 2 segments
    x = torch.randn(2 * 4, 17, 64)
    assert refine_segments(x, 2, 4, "token_shift", 16).shape == (8, 17, 64)
    enc = RTQVisionEncoder(tiny_vision(refine="token_shift", num_segments=4)).eval()
    out = enc(torch.randn(2, 4, 3, 32, 32))
    assert out.tokens.shape == (2, 4 * 17, 64)


def test_spectral_picks_one_token_per_obvious_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    pts = centres.repeat_interleave(5, dim=0) + 0.3 * torch.randn(20, 2, generator=g)  # 4 clusters of 5
    perm = torch.randperm(20, generator=g)
    z = pts[perm].unsqueeze(0)  # (1, 20, 2) shuffled
    cluster = (torch.arange(20) // 5)[perm]
    med = spectral_medoids(z, 4, sigma=2.0)[0]
    assert torch.all(med[1:] > med[:-1])  # sorted, distinct
    assert sorted(cluster[med].tolist()) == [0, 1, 2, 3]  # exactly one token from every cluster


def test_spectral_refine_shapes_and_gradient():
    x = torch.randn(2 * 4, 17, 8, requires_grad=True)
    out = refine_segments(x, 2, 2, "spectral", 16)
    assert out.shape == (4, 17, 8)
    out.sum().backward()
    assert x.grad[:, 1:].abs().sum() > 0
    enc = RTQVisionEncoder(tiny_vision(refine="spectral")).eval()
    assert enc(torch.randn(2, 4, 3, 32, 32)).tokens.shape == (2, 2 * 17, 64)


def test_divided_attention_mixes_only_one_patch_slot_across_segments():
    torch.manual_seed(0)
    blk = DividedTemporalAttention(16, 4, 0.0, zero_init=False).eval()
    for p in (blk.attn.in_proj_weight, blk.attn.out_proj.weight, blk.fc.weight):
        torch.nn.init.normal_(p, std=0.5)  # O(1) weights so cross-segment effects are far above rounding
    x = torch.randn(2, 3, 6, 16)  # (B, T', 1+C, D)
    out = blk(x)
    assert torch.allclose(out[:, :, 0], x[:, :, 0].mean(dim=1, keepdim=True).expand(2, 3, 16))  # mean CLS
    y = x.clone()
    y[0, 1, 2] += 1.0  # perturb patch slot 1 (token 2) of segment 1, video 0
    diff = (blk(y) - out).abs().sum(dim=-1)  # (B, T', 1+C)
    assert torch.all(diff[0, :, 2] > 0)  # that slot changes in every segment of the video
    diff[0, :, 2] = 0
    assert torch.all(diff == 0)  # nothing else: no other slot, no other video
    zero = DividedTemporalAttention(16, 4, 0.0, zero_init=True).eval()
    torch.nn.init.zeros_(zero.fc.bias)
    assert torch.equal(zero(x)[:, :, 1:], x[:, :, 1:])  # zero W_t: patches pass through


def test_video_proxy_block_patches_see_own_segment_and_proxies_see_all():
    torch.manual_seed(0)
    layer = BlipEncoderLayer(
        VisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_heads=4,
            mlp_dim=32,
            num_layers=1,
            num_frames=2,
            num_segments=2,
            cluster_block=0,
            temporal_block=0,
        ).blip_config()
    ).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    m, t, c = 2, 3, 4
    x = torch.randn(2, m + t * c, 16)
    out = video_proxy_block(layer, x, m, t)
    assert out.shape == x.shape
    y = x.clone()
    y[0, m + c : m + 2 * c] += 1.0  # perturb segment 1's patches of video 0
    diff = (video_proxy_block(layer, y, m, t) - out).abs().sum(dim=-1)  # (B, M + T'C)
    assert torch.all(diff[0, :m] > 0)  # proxies attend to every segment
    assert torch.all(diff[0, m + c : m + 2 * c] > 0)
    assert torch.all(diff[0, m : m + c] == 0) and torch.all(diff[0, m + 2 * c :] == 0)  # other segments: no
    assert torch.all(diff[1] == 0)  # videos never mix


@pytest.mark.parametrize("mode", ["divided_attention", "video_proxy"])
def test_temporal_variants_shapes_and_order_sensitivity(mode):
    torch.manual_seed(0)
    enc = RTQVisionEncoder(tiny_vision(temporal_modeling=mode, num_proxies=3)).eval()
    with torch.no_grad():
        enc.temporal_embedding.normal_()
    x = torch.randn(2, 4, 3, 32, 32)
    out = enc(x)
    m = 3 + 2 * 16 if mode == "video_proxy" else 2 * 17
    assert out.global_feat.shape == (2, 64) and out.tokens.shape == (2, m, 64)
    swapped = enc(x[:, [2, 3, 0, 1]])  # segments swapped
    assert not torch.allclose(swapped.global_feat, out.global_feat, atol=1e-4)  # order is visible
    if mode == "video_proxy":
        assert torch.equal(out.global_feat, out.tokens[:, 0])  # the first proxy (official)
    else:
        assert len(enc.divided_blocks) == 1 and len(enc.message_blocks) == 0


@pytest.mark.parametrize("mode", ["divided_attention", "video_proxy"])
def test_temporal_variants_retrieval_head_runs(mode):
    model = build_model(tiny_config(vision=tiny_vision(temporal_modeling=mode, num_proxies=2))).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    v, tokens = model.encode_video(video)
    ids, mask = model.tokenize(["red square on the left", "blue square on the top"], "cpu")
    assert v.shape == (2, 32) and model.itm_logits(tokens, ids, mask).shape == (2, 2)


def test_spectral_knn_graph_by_hand():
    # four 1-D tokens 0, 1, 3, 10; σ² = ½ so W_ij = exp(−(z_i − z_j)²): the official heat kernel takes the *squared*
    # distance (e.g. W between 1 and 3 is e⁻⁴ ≈ 0.018, not e⁻² ≈ 0.135). k = 2: each row keeps itself + its nearest
    # neighbour: 0→1, 1→0, 3→1, 10→3. Either-end (OR) graph: edges 0–1, 1–3, 3–10; mutual (AND): only 0–1.
    z = torch.tensor([0.0, 1.0, 3.0, 10.0]).view(1, 4, 1)
    sigma = 0.5**0.5
    dense = spectral_affinity(z, sigma)
    want = torch.exp(-(z - z.transpose(1, 2)).square())
    assert torch.allclose(dense, want, atol=1e-6)
    assert abs(float(dense[0, 1, 2]) - math.exp(-4.0)) < 1e-6
    assert torch.equal(dense[0].diagonal(), torch.ones(4))
    edges_or = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    edges_and = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    knn = spectral_affinity(z, sigma, graph="knn", knn_k=2)
    assert torch.allclose(knn, want * edges_or, atol=1e-6)
    mutual = spectral_affinity(z, sigma, graph="knn", knn_k=2, mutual=True)
    assert torch.allclose(mutual, want * edges_and, atol=1e-6)
    assert torch.allclose(spectral_affinity(z, sigma, graph="knn", knn_k=4), dense)  # k = N: the dense graph


def test_spectral_knn_config_and_refine():
    assert tiny_vision().knn_neighbours == 10  # official adaptive k: 5·d with d = 2, P = 16 < 100
    assert tiny_vision(spectral_knn_k=7).knn_neighbours == 7
    assert VisionConfig().knn_neighbours == 5 * 2 + 5  # P = 196 >= 100
    with pytest.raises(ValueError, match="spectral_graph"):
        tiny_vision(spectral_graph="cosine")
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    pts = centres.repeat_interleave(5, dim=0) + 0.3 * torch.randn(20, 2, generator=g)  # 4 clusters of 5
    med = spectral_medoids(pts.unsqueeze(0), 4, sigma=2.0, graph="knn", knn_k=5)[0]
    assert sorted((med // 5).tolist()) == [0, 1, 2, 3]  # one token from every cluster on the kNN graph too
    enc = RTQVisionEncoder(tiny_vision(refine="spectral", spectral_graph="knn", spectral_knn_mutual=True)).eval()
    assert enc(torch.randn(2, 4, 3, 32, 32)).tokens.shape == (2, 2 * 17, 64)


def test_prior_divided_attention_runs_on_raw_frames_before_refine():
    cfg = tiny_vision(
        temporal_modeling="divided_attention", temporal_placement="prior", temporal_block=2, msg_fc_zero_init=True
    )  # blocks 0, 1 divided (T = 4 frames), Refine before block 2
    torch.manual_seed(0)
    enc = RTQVisionEncoder(cfg).eval()
    assert len(enc.divided_blocks) == 2 and enc.temporal_embedding.shape == (4, 64)  # one row per raw frame
    seen = []
    enc.divided_blocks[0].register_forward_pre_hook(lambda mod, inp: seen.append(tuple(inp[0].shape)))
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        assert seen == [(2, 4, 17, 64)]  # (B, T, 1+P, D): raw frames, all P = 16 patches, before Refine
        assert out.tokens.shape == (2, 2 * 17, 64)  # Refine to T' = 2 segments, tokens concatenated
        # by hand: with W_t = 0 and E = 0 a divided block only replaces every frame's CLS by the video mean
        h = enc.embeddings(x.flatten(0, 1))  # (B·T, 1+P, D)
        for i in range(2):
            v = h.view(2, 4, 17, 64)
            v = torch.cat([v[:, :, :1].mean(dim=1, keepdim=True).expand(2, 4, 1, 64), v[:, :, 1:]], dim=2)
            h = enc.encoder.layers[i](v.flatten(0, 1))
        h = refine_segments(h, 2, 2, "kmedoids", 16)
        for i in range(2, 4):
            h = enc.encoder.layers[i](h)
        h = enc.post_layernorm(h).view(2, 2, 17, 64)
        assert torch.allclose(out.tokens, h.flatten(1, 2), atol=1e-5)
        assert torch.allclose(out.global_feat, h[:, :, 0].mean(dim=1), atol=1e-5)
        enc.temporal_embedding.normal_()  # a frame-order signal from block 0 on
        assert not torch.allclose(enc(x[:, [2, 3, 0, 1]]).global_feat, enc(x).global_feat, atol=1e-4)


def test_prior_placement_validation():
    with pytest.raises(ValueError, match="divided_attention"):
        tiny_vision(temporal_placement="prior", temporal_block=2)  # message tokens are posterior only
    with pytest.raises(ValueError, match="temporal_block"):
        tiny_vision(temporal_modeling="divided_attention", temporal_placement="prior", temporal_block=3)  # τ > K
    with pytest.raises(ValueError, match="temporal_placement"):
        tiny_vision(temporal_placement="middle")


def test_sparse_sampling_stride_centres_in_eval_and_random_offsets_in_training():
    # two videos, two segments of two frames, P = 16 patches: N = 32 tokens per segment, C = 16; every token holds
    # its own position so the kept ones can be read back
    b, t, p, d = 2, 4, 16, 4
    x = torch.zeros(b * t, 1 + p, d)
    x[:, 1:] = torch.arange(p, dtype=torch.float).view(1, p, 1)
    x[:, 1:] += 100.0 * (torch.arange(b * t) % 2).view(-1, 1, 1)  # second frame of each segment: +100
    flat = torch.cat([torch.arange(16.0), 100.0 + torch.arange(16.0)])  # segment token j's value

    def kept(out: torch.Tensor) -> torch.Tensor:  # (B·T', C) indices into the segment's 32 tokens
        return (out[:, 1:, 0].unsqueeze(-1) == flat).float().argmax(dim=-1)

    # evaluation: the centre of every stride of N / C = 2 tokens, i.e. the odd indices, in every segment
    out = refine_segments(x, b, 2, "sparse_sampling", 16)
    assert torch.equal(kept(out), torch.arange(1, 32, 2).expand(4, 16))
    # training: one random token inside each stride [2k, 2k + 1], one draw per segment position shared by the videos
    seen = []
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        idx = kept(refine_segments(x, b, 2, "sparse_sampling", 16, generator=g, training=True))
        assert torch.equal(idx // 2, torch.arange(16).expand(4, 16))  # inside its stride, ascending
        assert torch.equal(idx[:2], idx[2:])  # rows b·T' + t: video 1 reuses video 0's draw for each segment
        seen.append(idx)
    offsets = torch.stack(seen) % 2
    assert 0.3 < float(offsets.float().mean()) < 0.7  # both slots of a stride get drawn
    assert len({tuple(i.flatten().tolist()) for i in seen}) > 1  # the draw changes with the generator
    # a stride of 3 tokens (N = 48, C = 16) leaves no tail; N = 40, C = 16 (stride 2) never draws the last 8
    assert sparse_sampling_indices(48, 16, 1, False).tolist() == [[int(1.5 + 3 * k) for k in range(16)]]
    assert int(sparse_sampling_indices(40, 16, 50, True).max()) <= 31


def test_encoder_sparse_sampling_is_random_only_in_training():
    enc = RTQVisionEncoder(tiny_vision(refine="sparse_sampling"))
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        enc.train()
        a = enc(x, generator=torch.Generator().manual_seed(0)).tokens
        b = enc(x, generator=torch.Generator().manual_seed(1)).tokens
        enc.eval()
        c = enc(x, generator=torch.Generator().manual_seed(0)).tokens
        d = enc(x, generator=torch.Generator().manual_seed(1)).tokens
    assert not torch.allclose(a, b)  # a different token draw per step
    assert torch.equal(c, d)  # fixed stride centres at evaluation
