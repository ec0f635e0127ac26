"""Video encoder (Refine + Temporal), k-medoids, weight loading (spec §8d)."""

from __future__ import annotations

import pytest
import torch
from rtqvl_testlib import tiny_config, tiny_vision

from rtqvl.models import RTQVisionEncoder, build_model, kmedoids, kmedoids_reference, load_pretrained, refine_segments
from rtqvl.models.video import MessageTokenAttention, euclidean_distances, resize_pos_embed
from rtqvl.models.weights import _VIT_RULES


def test_kmedoids_matches_plain_loop_reference():
    z = torch.randn(3, 20, 5)
    got = kmedoids(z, 6)
    for s in range(3):
        assert torch.equal(got[s], kmedoids_reference(z[s], 6))


def test_kmedoids_fixed_point_properties():
    z = torch.randn(2, 30, 4)
    med = kmedoids(z, 5)
    assert torch.all(med[:, 1:] > med[:, :-1])  # sorted, distinct
    for s in range(2):
        d = torch.cdist(z[s].double(), z[s].double())
        assign = d[:, med[s]].argmin(dim=1)
        for k in range(5):
            members = (assign == k).nonzero().view(-1)
            costs = d[members][:, members].sum(dim=1)
            assert members[costs.argmin()] == med[s, k]  # each medoid is its cluster's exact medoid


def test_kkz_first_pick_is_max_norm():
    z = torch.randn(1, 10, 3)
    z[0, 7] *= 50
    assert kmedoids(z, 1, max_iter=0)[0].tolist() == [7]  # initialisation only
    # second KKZ pick = the token farthest from the first
    far = int(torch.cdist(z[0], z[0])[7].argmax())
    assert kmedoids(z, 2, max_iter=0)[0].tolist() == sorted([7, far])


def test_duplicate_frames_keep_the_distinct_tokens():
    p, d = 16, 8
    frame = torch.randn(p, d) * 3
    z = torch.cat([frame, frame]).unsqueeze(0)  # segment of two identical frames, N = 2P
    med = kmedoids(z, p)[0]
    assert torch.equal(torch.unique(z[0, med], dim=0), torch.unique(frame, dim=0))


def test_kmedoids_is_exact_beyond_cdists_matmul_threshold():
    """Above 25 tokens torch.cdist's default uses the matmul form, whose rounding breaks the spec's exact ties
    (Δ_ii = 0, duplicates at distance 0); the distances here are ViT-sized (D = 256, norms ≈ 160)."""
    p, d = 40, 256
    frame = torch.randn(p, d, generator=torch.Generator().manual_seed(0)) * 10
    z = torch.cat([frame, frame]).unsqueeze(0)  # N = 80 tokens, every one duplicated
    dist = euclidean_distances(z)
    assert torch.all(dist[0].diagonal() == 0) and torch.all(dist[0, :p, p:].diagonal() == 0)
    assert torch.equal(dist, dist.transpose(1, 2))
    med = kmedoids(z, p)[0]
    assert torch.equal(torch.unique(z[0, med], dim=0), torch.unique(frame, dim=0))  # duplicates are picked last
    y = torch.randn(2, 60, d, generator=torch.Generator().manual_seed(1)) * 10
    got = kmedoids(y, 30)  # clusters of one or two tokens: exact ties between the two members' costs
    for s in range(2):
        assert torch.equal(got[s], kmedoids_reference(y[s], 30))


def test_refine_shapes_cls_mean_and_gradients():
    b, t, p, d = 2, 4, 16, 8
    x = torch.randn(b * t, 1 + p, d, requires_grad=True)
    out = refine_segments(x, b, 2, "kmedoids", p)
    assert out.shape == (b * 2, 1 + p, d)
    assert torch.allclose(out[0, 0], x[:2, 0].mean(dim=0))  # segment CLS = mean of its frames' CLS
    out.sum().backward()
    assert x.grad[:, 1:].abs().sum() > 0  # gradient reaches the selected tokens
    for mode, n in (("pooling", p), ("sparse_sampling", p), ("random", p), ("none", 2 * p)):
        assert refine_segments(x.detach(), b, 2, mode, p).shape == (b * 2, 1 + n, d)


def test_message_block_zero_fc_is_identity_and_runs_with_one_segment():
    blk = MessageTokenAttention(16, 4, 1e-6, 0.0, zero_init=True)
    nn_zero = torch.nn.init.zeros_
    nn_zero(blk.fc.bias)
    cls = torch.randn(3, 4, 16)
    assert torch.equal(blk(cls), cls)
    assert blk(torch.randn(2, 1, 16)).shape == (2, 1, 16)


def test_encoder_shapes_rtq_vs_rq_and_video_permutation():
    enc = RTQVisionEncoder(tiny_vision()).eval()
    x = torch.randn(3, 4, 3, 32, 32)
    out = enc(x)
    assert out.global_feat.shape == (3, 64) and out.tokens.shape == (3, 2 * 17, 64)
    perm = torch.tensor([2, 0, 1])
    out_p = enc(x[perm])
    torch.testing.assert_close(out_p.tokens, out.tokens[perm], atol=1e-5, rtol=1e-5)  # videos do not mix
    rq = RTQVisionEncoder(tiny_vision(temporal_modeling="none")).eval()
    assert rq(x).tokens.shape == (3, 17, 64)
    assert len(rq.message_blocks) == 0


def test_temporal_embedding_reaches_every_token_and_order_matters():
    enc = RTQVisionEncoder(tiny_vision(cluster_block=1, temporal_block=1)).eval()
    x = torch.randn(1, 4, 3, 32, 32)
    swapped = x[:, [2, 3, 0, 1]]
    with torch.no_grad():
        enc.temporal_embedding.normal_()
    a, b = enc(x), enc(swapped)
    assert not torch.allclose(a.global_feat, b.global_feat, atol=1e-4)  # RTQ sees segment order
    rq = RTQVisionEncoder(tiny_vision(temporal_modeling="none")).eval()
    torch.testing.assert_close(rq(x).tokens, rq(swapped).tokens, atol=1e-5, rtol=1e-5)  # RQ is order-blind


def test_zero_temporal_embedding_leaves_rtq_order_blind():
    # the temporal embedding is RTQ's only source of segment order: the message attention is permutation-equivariant
    # over the segment CLS tokens, the global vector is their mean, and the text side's cross-attention has no
    # visual positions, so with E = 0 (its init, spec §3.1) swapping the segments permutes the memory and leaves the
    # global vector unchanged — order is learnt only as fast as E grows (README, Repro results)
    enc = RTQVisionEncoder(tiny_vision()).eval()
    assert torch.count_nonzero(enc.temporal_embedding) == 0  # zero-initialised
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        a, b = enc(x), enc(x[:, [2, 3, 0, 1]])
    torch.testing.assert_close(a.global_feat, b.global_feat, atol=1e-5, rtol=1e-5)
    n = 17  # tokens per segment: the memory of the swapped clip is the original's two segment blocks swapped
    torch.testing.assert_close(b.tokens, torch.cat([a.tokens[:, n:], a.tokens[:, :n]], dim=1), atol=1e-5, rtol=1e-5)
    # ... but E gets a gradient at zero through the global vector and every memory token (so it can start to grow)
    w = torch.randn(64, 3)
    for out in (enc(x).global_feat, enc(x).tokens[:, 5]):
        enc.temporal_embedding.grad = None
        (out @ w).square().sum().backward()
        assert torch.all(enc.temporal_embedding.grad.abs().sum(dim=1) > 0)  # both segments' rows


def test_pos_embed_resize():
    pos = torch.randn(1, 1 + 24 * 24, 8)
    out = resize_pos_embed(pos, 14 * 14)
    assert out.shape == (1, 197, 8) and torch.equal(out[:, 0], pos[:, 0])
    assert resize_pos_embed(out, 196) is out


def _to_lavis(key: str) -> str:
    """Inverse of the key mapping, for building a fake LAVIS checkpoint."""
    import re

    inv = {
        "embeddings.class_embedding": "cls_token",
        "embeddings.position_embedding": "pos_embed",
        "embeddings.patch_embedding.": "patch_embed.proj.",
        "post_layernorm.": "norm.",
    }
    for a, b in inv.items():
        key = key.replace(a, b)
    key = (
        re.sub(r"encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2.", key)
        if key.startswith("visual")
        else key
    )
    key = re.sub(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv.", key)
    key = re.sub(r"encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj.", key)
    key = re.sub(r"encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp.", key)
    return key


def test_load_lavis_checkpoint_roundtrip(tmp_path):
    assert _VIT_RULES
    src = build_model(tiny_config())
    state = {
        _to_lavis(k): v
        for k, v in src.state_dict().items()
        if "message_blocks" not in k and "temporal_embedding" not in k
    }
    # a 384-px style position embedding (8x8 grid) that must be resized to the model's 4x4
    state["visual_encoder.pos_embed"] = torch.randn(1, 65, 64)
    state["visual_encoder_m.pos_embed"] = state["visual_encoder.pos_embed"].clone()  # resized too (Deviation)
    state["image_queue"] = torch.randn(32, 99)  # another queue size: dropped
    torch.save({"model": state}, tmp_path / "model_base_capfilt_large.pth")
    dst = build_model(tiny_config())
    missing, dropped = load_pretrained(dst, str(tmp_path / "model_base_capfilt_large.pth"))
    assert any("message_blocks" in k for k in missing)
    assert any("video_queue" in k for k in dropped)
    torch.testing.assert_close(
        dst.text_encoder.encoder.layer[1].crossattention.self.key.weight,
        src.text_encoder.encoder.layer[1].crossattention.self.key.weight,
    )
    torch.testing.assert_close(
        dst.visual_encoder.encoder.layers[2].self_attn.qkv.weight,
        src.visual_encoder.encoder.layers[2].self_attn.qkv.weight,
    )
    pe = dst.visual_encoder.embeddings.position_embedding
    assert pe.shape == (1, 17, 64) and torch.equal(pe[:, 0], state["visual_encoder.pos_embed"][:, 0])
    assert torch.equal(dst.visual_encoder_m.embeddings.position_embedding, pe)


def test_queue_pointer_of_dropped_queues_is_not_loaded(tmp_path):
    # a BLIP pre-training checkpoint holds queues of another (longer) size and their pointer; the queues are
    # dropped, so a pointer into them (here 40, past this model's 16 slots) must not be loaded either
    state = dict(build_model(tiny_config()).state_dict())
    state.update(video_queue=torch.randn(32, 64), text_queue=torch.randn(32, 64), queue_ptr=torch.tensor([40]))
    torch.save({"model": state}, tmp_path / "blip.pth")
    model = build_model(tiny_config())
    _, dropped = load_pretrained(model, str(tmp_path / "blip.pth"))
    assert int(model.queue_ptr) == 0 and any(k.startswith("queue_ptr") for k in dropped)
    model.enqueue(torch.randn(8, 32), torch.randn(8, 32), torch.arange(8))  # fails with the pointer at 40
    assert int(model.queue_ptr) == 8
    # queues of the model's size: the pointer comes with them
    state.update(video_queue=torch.randn(32, 16), text_queue=torch.randn(32, 16), queue_ptr=torch.tensor([8]))
    torch.save({"model": state}, tmp_path / "same.pth")
    model = build_model(tiny_config())
    load_pretrained(model, str(tmp_path / "same.pth"))
    assert int(model.queue_ptr) == 8 and torch.equal(model.video_queue, state["video_queue"])
    model.queue_ptr[0] = 12  # a pointer left by another global batch: the batch wraps at the end of the queue
    feats = torch.randn(8, 32)
    model.enqueue(feats, feats, torch.arange(8))
    assert int(model.queue_ptr) == 4
    assert torch.equal(model.video_queue[:, [12, 13, 14, 15, 0, 1, 2, 3]], feats.T)
    assert torch.equal(model.video_queue[:, 4:12], state["video_queue"][:, 4:12])  # the checkpoint's other keys stay


@pytest.mark.parametrize("task", ["retrieval", "multiple_choice"])
def test_checkpoint_without_momentum_copies_initialises_them_from_the_online_weights(tmp_path, task):
    # a transformers BLIP folder (vision_model.* names) has no *_m copies: the momentum encoders must start as the
    # loaded online weights, not at the random init they were built with
    from safetensors.torch import save_file

    src = build_model(tiny_config(task))
    momentum = {head for head, _ in src.named_children() if head.endswith("_m")}
    state = {}
    for key, value in src.state_dict().items():
        head = key.split(".")[0]
        if head in momentum or "message_blocks" in key or "temporal_embedding" in key or "queue" in key:
            continue
        if head == "visual_encoder":
            key = "vision_model." + key[len("visual_encoder.") :]
        state[key] = value.clone().contiguous()
    (tmp_path / "blip").mkdir()
    save_file(state, str(tmp_path / "blip" / "model.safetensors"))
    dst = build_model(tiny_config(task))
    missing, _ = load_pretrained(dst, str(tmp_path / "blip"))
    checked = 0
    for online, ema in dst.momentum_pairs():
        own = dict(online.named_parameters())
        for name, p_m in ema.named_parameters():
            torch.testing.assert_close(p_m, own[name], rtol=0, atol=0)
            checked += 1
    assert checked > 20
    # the online weights are the checkpoint's (not the destination's own init)
    assert torch.equal(
        dst.text_encoder_m.embeddings.word_embeddings.weight, src.text_encoder.embeddings.word_embeddings.weight
    )
    assert not any(k.split(".")[0] in momentum and "message_blocks" not in k and "temporal" not in k for k in missing)
    # a folder whose weight file was cut short (a copy or download that stopped) names the key and the file
    (tmp_path / "blip" / "model.safetensors").write_bytes((tmp_path / "blip" / "model.safetensors").read_bytes()[:99])
    with pytest.raises(
        ValueError, match=r"model\.config\.pretrained_path '.*model\.safetensors' cannot be read as safetensors"
    ):
        load_pretrained(build_model(tiny_config(task)), str(tmp_path / "blip"))
    (tmp_path / "blip" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "blip" / "pytorch_model.bin")
    (tmp_path / "blip" / "pytorch_model.bin").write_bytes((tmp_path / "blip" / "pytorch_model.bin").read_bytes()[:999])
    with pytest.raises(
        ValueError, match=r"model\.config\.pretrained_path '.*pytorch_model\.bin' cannot be read as a torch"
    ):
        load_pretrained(build_model(tiny_config(task)), str(tmp_path / "blip"))


def test_missing_checkpoint_and_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.config\.pretrained_path=.*model_base_capfilt_large\.pth"):
        build_model(tiny_config(pretrained_path=str(tmp_path / "nope.pth")))
        load_pretrained(build_model(tiny_config()), str(tmp_path / "nope.pth"))
    cfg = tiny_config()
    cfg.text.vocab_path = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.config\.text\.vocab_path="):
        build_model(cfg)


def test_build_model_names_the_task_key():
    cfg = tiny_config()
    cfg.task = "ranking"  # set after the config's own check
    with pytest.raises(ValueError, match=r"model\.config\.task='ranking': expected"):
        build_model(cfg)


def test_bad_video_shape():
    enc = RTQVisionEncoder(tiny_vision())
    with pytest.raises(ValueError, match=r"model\.config\.vision\.num_frames"):
        enc(torch.randn(2, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"model\.config\.vision\.image_size"):
        enc(torch.randn(2, 4, 3, 16, 16))
    with pytest.raises(ValueError, match="num_segments"):
        tiny_vision(num_segments=3)


def test_rerank_full_k_equals_itm_plus_cosine():
    m = build_model(tiny_config()).eval()
    video = torch.randn(3, 4, 3, 32, 32)
    _, tokens = m.encode_video(video)
    ids, mask = m.tokenize(["red square", "blue square on the left", "a dog"], "cpu")
    sim = torch.randn(3, 3)
    t2v, v2t = m.rerank(sim, tokens, ids, mask, k=10)
    for i in range(3):
        for j in range(3):
            logit = m.itm_logits(tokens[j : j + 1], ids[i : i + 1], mask[i : i + 1])[0, 1]
            assert torch.allclose(t2v[i, j], logit + sim[i, j], atol=1e-5)
            assert torch.allclose(v2t[j, i], logit + sim[i, j], atol=1e-5)
    t2v1, _ = m.rerank(sim, tokens, ids, mask, k=1)
    assert ((t2v1 == -100).sum(dim=1) == 2).all()


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().pow(2).mean().sqrt())


def test_from_scratch_init_is_the_official_one():
    """A model built without a checkpoint gets the official from-scratch init (LAVIS VisionTransformer + RTQ
    encoder): CLS / position embedding trunc-normal 0.02 — not the std-1 ``torch.randn`` of transformers'
    ``BlipVisionEmbeddings``, which only ``BlipPreTrainedModel.post_init`` (not used here) would reset —, Linear
    weights trunc-normal 0.02 with zero bias, LayerNorm 1 / 0, E_t = 0; the text side gets transformers'
    ``post_init`` with ``BlipTextConfig.initializer_range`` 0.02 (BERT's normal 0.02)."""
    model = build_model(tiny_config())
    enc = model.visual_encoder
    for p in (enc.embeddings.class_embedding, enc.embeddings.position_embedding):
        assert 0.01 < _rms(p) < 0.03
    blocks = [m for layer in enc.encoder.layers for m in layer.modules()]
    for m in blocks:
        if isinstance(m, torch.nn.Linear):
            assert 0.015 < _rms(m.weight) < 0.025 and not m.bias.any()
        elif isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
    assert not enc.temporal_embedding.any()
    assert 0.015 < _rms(model.text_encoder.embeddings.word_embeddings.weight) < 0.025
    assert 0.015 < _rms(model.text_encoder.encoder.layer[0].attention.self.query.weight) < 0.025
    # the repro's init_std redraws Linear / Embedding weights only: CLS, position and temporal embeddings keep
    # the official init
    big = build_model(tiny_config(init_std=0.2)).visual_encoder
    assert 0.01 < _rms(big.embeddings.position_embedding) < 0.03 and not big.temporal_embedding.any()


def test_init_std_redraws_weights_and_syncs_momentum():
    model = build_model(tiny_config(init_std=0.2))
    w = model.visual_encoder.encoder.layers[0].self_attn.qkv.weight
    assert 0.15 < float(w.std()) < 0.25  # trunc-normal(0.2) clipped at ±2
    # the message attention's packed q/k/v weight is the official block's qkv Linear: redrawn like every Linear
    attns = [m for m in model.visual_encoder.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attns and all(0.15 < float(a.in_proj_weight.std()) < 0.25 for a in attns)
    for online, ema in model.momentum_pairs():
        for a, b in zip(online.parameters(), ema.parameters(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="init_std"):
        tiny_config(init_std=0.0)
