"""SHE-Net components against plain-loop references (spec §3.3-3.6, §8d)."""

import pytest
import torch
import torch.nn.functional as F

from shenet.models import (
    SHENet,
    SHENetConfig,
    TextFeatures,
    VideoFeatures,
    aggregate_similarity,
    hierarchy_enhance,
    masked_softmax,
    syntax_guided_similarity,
)

D, V, M, T, P = 8, 2, 3, 4, 3


def norm(x):
    return F.normalize(x, dim=-1)


def make_text(Bt=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    verbs, nouns = norm(torch.randn(Bt, V, D, generator=g)), norm(torch.randn(Bt, M, D, generator=g))
    verb_mask = torch.tensor([[True, True], [True, False], [False, False]])[:Bt]
    noun_mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])[:Bt]
    noun_parent = torch.tensor([[0, 1, -1], [0, -1, -1], [-1, -1, -1]])[:Bt]
    return TextFeatures(
        norm(torch.randn(Bt, D, generator=g)),
        verbs,
        nouns,
        norm(verbs + 0.1),
        norm(nouns - 0.1),
        verb_mask,
        noun_mask,
        noun_parent,
    )


def make_video(Bv=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    frames, patches = norm(torch.randn(Bv, T, D, generator=g)), norm(torch.randn(Bv, T, P, D, generator=g))
    mask = torch.tensor([[True] * T, [True, True, False, False]])[:Bv]
    video = norm((frames * mask[..., None]).sum(1))
    return VideoFeatures(video, frames, patches, mask)


def loop_similarity(text, video, tau_f, tau_p):
    """Spec §3.5-3.6 written as plain loops."""
    Bt, Bv = len(text), len(video)
    S1, S2, S3 = torch.zeros(Bt, Bv), torch.zeros(Bt, Bv), torch.zeros(Bt, Bv)
    for i in range(Bt):
        for k in range(Bv):
            valid = [t for t in range(T) if video.frame_mask[k, t]]
            f = video.frames[k, valid]
            p = video.patches[k, valid]
            S1[i, k] = text.sentence[i] @ video.video[k]
            a0 = torch.softmax(f @ text.sentence[i] / tau_f, 0)
            alphas, s2 = {}, []
            for j in range(V):
                alphas[j] = torch.softmax(f @ text.verbs[i, j] / tau_f, 0)
                if text.verb_mask[i, j]:
                    g = norm(sum(alphas[j][t] * f[t] for t in range(len(valid))))
                    s2.append(text.verbs_enh[i, j] @ g)
            s3 = []
            for m in range(M):
                if not text.noun_mask[i, m]:
                    continue
                par = int(text.noun_parent[i, m])
                w = alphas[par] if par >= 0 else a0
                r = torch.zeros(D)
                for t in range(len(valid)):
                    beta = torch.softmax(p[t] @ text.nouns[i, m] / tau_p, 0)
                    r = r + w[t] * sum(beta[q] * p[t, q] for q in range(P))
                s3.append(text.nouns_enh[i, m] @ norm(r))
            S2[i, k] = torch.stack(s2).mean() if s2 else 0.0
            S3[i, k] = torch.stack(s3).mean() if s3 else 0.0
    return S1, S2, S3


def test_guided_similarity_matches_loops():
    text, video = make_text(), make_video()
    got = syntax_guided_similarity(text, video, 0.5, 0.3)
    for a, b in zip(got, loop_similarity(text, video, 0.5, 0.3), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_verb_frame_weights_masked_and_sharp():
    logits = torch.tensor([[0.1, 0.9, 0.3, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    w = masked_softmax(logits / 0.01, mask)
    assert w[0, 3] == 0 and torch.allclose(w.sum(), torch.tensor(1.0))
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), atol=1e-6)  # τ→0: the argmax valid frame
    assert masked_softmax(logits, torch.zeros_like(mask)).sum() == 0  # all masked: no weight, no NaN


def test_noun_pooling_uses_parent_weights():
    """A noun attached to verb 1 takes verb 1's frames; with τ tiny the region comes from verb 1's best frame."""
    text, video = make_text(1), make_video(1)
    text.noun_parent[0] = torch.tensor([1, 1, 1])
    text.verb_mask[0] = True
    S_parent = syntax_guided_similarity(text, video, 1e-4, 1e-4)[2]
    best_t = int((video.frames[0] @ text.verbs[0, 1]).argmax())
    expected = []
    for m in range(M):
        q = int((video.patches[0, best_t] @ text.nouns[0, m]).argmax())
        expected.append(text.nouns_enh[0, m] @ video.patches[0, best_t, q])
    torch.testing.assert_close(S_parent[0, 0], torch.stack(expected).mean(), atol=1e-4, rtol=1e-4)
    S_root = syntax_guided_similarity(text, video, 1e-4, 1e-4, noun_temporal="root")[2]
    S_nov = syntax_guided_similarity(text, video, 1e-4, 1e-4, use_verbs=False)[2]
    torch.testing.assert_close(S_root, S_nov)


def test_max_pooling_is_token_max():
    text, video = make_text(), make_video()
    S1, S2, S3 = syntax_guided_similarity(text, video, pooling="max")
    for i in range(3):
        for k in range(2):
            valid = video.frame_mask[k]
            vs = [(text.verbs_enh[i, j] @ video.frames[k, valid].T).max() for j in range(V) if text.verb_mask[i, j]]
            ns = [
                (text.nouns_enh[i, m] @ video.patches[k, valid].reshape(-1, D).T).max()
                for m in range(M)
                if text.noun_mask[i, m]
            ]
            assert torch.allclose(S2[i, k], torch.stack(vs).mean() if vs else torch.tensor(0.0), atol=1e-5)
            assert torch.allclose(S3[i, k], torch.stack(ns).mean(), atol=1e-5)


def test_unguided_visual_uses_means():
    text, video = make_text(), make_video()
    _, S2, S3 = syntax_guided_similarity(text, video, guide_visual=False)
    k = 1
    g = norm(video.frames[k, :2].mean(0))
    r = norm(video.patches[k, :2].reshape(-1, D).mean(0))
    assert torch.allclose(S2[0, k], (text.verbs_enh[0] @ g).mean(), atol=1e-5)
    assert torch.allclose(S3[1, k], (text.nouns_enh[1, :2] @ r).mean(), atol=1e-5)
    # spec §3.9: guide_visual=False means mean frame / mean patch also when the guided pooling is the hard max
    _, S2_max, S3_max = syntax_guided_similarity(text, video, guide_visual=False, pooling="max")
    assert torch.allclose(S2_max[0, k], (text.verbs_enh[0] @ g).mean(), atol=1e-5)
    assert torch.allclose(S3_max[1, k], (text.nouns_enh[1, :2] @ r).mean(), atol=1e-5)


def test_aggregation_renormalises_missing_levels():
    levels = torch.tensor([[[0.9]], [[0.3]], [[0.6]]]).expand(3, 2, 1)  # (3, B_t=2, B_v=1)
    avail = torch.tensor([[True, True, True], [True, False, True]])
    S = aggregate_similarity(levels, avail, torch.tensor([2.0, 1.0, 1.0]))
    assert torch.allclose(S[:, 0], torch.tensor([(1.8 + 0.3 + 0.6) / 4, (1.8 + 0.6) / 3]))


def test_hierarchy_enhance_formula():
    g = torch.Generator().manual_seed(0)
    verbs, nouns, adjs = (norm(torch.randn(1, n, D, generator=g)) for n in (2, 3, 2))
    noun_mask = torch.tensor([[True, True, True]])
    adj_mask = torch.tensor([[True, True]])
    noun_parent = torch.tensor([[0, 0, -1]])
    adj_parent = torch.tensor([[1, 1]])
    u2, n2 = hierarchy_enhance(verbs, nouns, adjs, noun_mask, adj_mask, noun_parent, adj_parent, "mean")
    n_ref = nouns.clone()
    n_ref[0, 1] = norm(nouns[0, 1] + (adjs[0, 0] + adjs[0, 1]) / 2)
    torch.testing.assert_close(n2, n_ref)
    u_ref = verbs.clone()
    u_ref[0, 0] = norm(verbs[0, 0] + (n_ref[0, 0] + n_ref[0, 1]) / 2)
    torch.testing.assert_close(u2, u_ref)  # verb 1 has no children: only normalised
    same = hierarchy_enhance(verbs, nouns, adjs, noun_mask, adj_mask, noun_parent, adj_parent, "none")
    assert same[0] is verbs and same[1] is nouns
    gate = torch.zeros(2 * D)
    ug, ng = hierarchy_enhance(verbs, nouns, adjs, noun_mask, adj_mask, noun_parent, adj_parent, "gated", gate, gate)
    torch.testing.assert_close(ng[0, 1], norm(nouns[0, 1] + 0.5 * (adjs[0, 0] + adjs[0, 1]) / 2))


def tiny(**kw):
    return SHENet(SHENetConfig(clip_model="custom", random_init=True, max_frames=T, **kw))


def text_batch(Bt=3, L=8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (Bt, L), generator=g)
    ids[:, 0], ids[:, -1] = 49406, 49407
    pool = lambda n: torch.softmax(torch.randn(Bt, n, L, generator=g), -1)  # noqa: E731
    return {
        "text_input_ids": ids,
        "text_verb_pool": pool(4),
        "text_noun_pool": pool(8),
        "text_adj_pool": pool(8),
        "text_verb_mask": torch.rand(Bt, 4, generator=g) > 0.3,
        "text_noun_mask": torch.rand(Bt, 8, generator=g) > 0.3,
        "text_adj_mask": torch.rand(Bt, 8, generator=g) > 0.5,
        "text_noun_parent": torch.randint(-1, 4, (Bt, 8), generator=g),
        "text_adj_parent": torch.randint(-1, 8, (Bt, 8), generator=g),
    }


def test_model_guidance_off_is_meanP_and_chunking_exact():
    torch.manual_seed(0)
    model = tiny()
    text = model.encode_text(text_batch(5))
    video = model.encode_video(
        torch.randn(3, T, 3, 32, 32), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    )
    assert video.patches.shape == (3, T, 4, 32) and video.frames.shape == (3, T, 32)
    full = model.similarity(text, video)["S"].detach()
    chunked = model.similarity_matrix(text, video, text_chunk=2, video_chunk=2)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    model.config.guide_similarity = False
    meanp_ref = model.similarity(text, video)["S"]  # spec §3.6 with guide_visual on: S = S1 = cos(s, mean frame)
    model.config.sentence_guidance = True  # text-conditioned sentence level: attention over frames
    a0 = torch.softmax((text.sentence @ video.frames[1, :2].T) / model.config.tau_frame, -1)  # (B_t, 2)
    guided = (text.sentence * norm(a0 @ video.frames[1, :2])).sum(-1)
    torch.testing.assert_close(model.similarity(text, video)["S"][:, 1], guided, atol=1e-5, rtol=1e-5)
    model.config.guide_visual = False
    meanp = model.similarity(text, video)["S"]
    frames = video.frames * video.frame_mask[..., None]
    ref = text.sentence @ norm(frames.sum(1) / video.frame_mask.sum(1, keepdim=True)).T
    torch.testing.assert_close(meanp, ref)
    torch.testing.assert_close(meanp_ref, ref)  # why sentence_guidance exists: without it the row equals meanP


def test_guide_visual_without_effect_warns(caplog):
    with caplog.at_level("WARNING", logger="shenet.models"):
        tiny(guide_similarity=False)
    assert "guide_visual has no effect" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="shenet.models"):
        tiny(guide_similarity=False, sentence_guidance=True)
        tiny(guide_similarity=False, guide_visual=False)
    assert "guide_visual has no effect" not in caplog.text


def test_seqtransf_and_learned_weights_run():
    model = tiny(
        temporal="seqTransf",
        temporal_layers=1,
        temporal_heads=2,
        text_enhance="gated",
        learnable_tau=True,
        sim_weighting="learned",
    )
    text = model.encode_text(text_batch(2))
    video = model.encode_video(torch.randn(2, T, 3, 32, 32), torch.ones(2, T, dtype=torch.bool))
    S = model.similarity(text, video)["S"]
    S.sum().backward()
    assert model.sim_logits.grad is not None and model.log_tau.grad is not None and model.gate_noun.grad is not None


def test_config_errors():
    with pytest.raises(ValueError, match="model.config.pretrained"):
        SHENetConfig()
    with pytest.raises(ValueError, match="levels"):
        SHENetConfig(clip_model="custom", levels=["verb"])
    with pytest.raises(FileNotFoundError, match="model.config.pretrained"):
        SHENet(SHENetConfig(pretrained="/nonexistent/ViT-B-32.pt"))
    with pytest.raises(ValueError, match="expected video"):
        tiny().encode_video(torch.randn(2, 3, 32, 32), torch.ones(2, 1, dtype=torch.bool))


def test_similarity_matrix_moves_each_video_chunk_once(monkeypatch):
    """Patch features dominate evaluation traffic: each video chunk goes to the device once, not once per text chunk."""
    import shenet.models as models

    torch.manual_seed(0)
    model = tiny()
    text = model.encode_text(text_batch(5))
    video = model.encode_video(torch.randn(3, T, 3, 32, 32), torch.ones(3, T, dtype=torch.bool))
    moved = []
    to = models._to
    monkeypatch.setattr(models, "_to", lambda x, *a: moved.append(tuple(x.shape)) or to(x, *a))
    with torch.no_grad():
        out = model.similarity_matrix(text, video, text_chunk=2, video_chunk=2)
    assert [s for s in moved if len(s) == 4] == [(2, T, 4, 32), (1, T, 4, 32)]  # (B_v, T, P, D) patch chunks
    torch.testing.assert_close(out, model.similarity(text, video)["S"].detach(), atol=1e-5, rtol=1e-5)


def _noun_batch(Bt=2):
    b = text_batch(Bt)
    b["text_verb_mask"][:, 0] = True
    b["text_noun_mask"][:, :2] = True
    b["text_noun_parent"][:, :2] = 0  # nouns under the first verb
    return b


def test_noun_level_off_keeps_nouns_out_of_S():
    torch.manual_seed(0)
    video = torch.randn(2, T, 3, 32, 32)
    vmask = torch.ones(2, T, dtype=torch.bool)
    base = _noun_batch()
    moved = {**base, "text_noun_pool": base["text_noun_pool"].flip(-1)}  # other tokens under the noun nodes
    masked = {**base, "text_noun_mask": torch.zeros_like(base["text_noun_mask"])}  # no noun nodes at all
    scores = {}
    for levels in (["sentence", "verb", "noun", "adj"], ["sentence", "verb"]):
        torch.manual_seed(0)
        model = tiny(levels=levels).eval()
        with torch.no_grad():
            v = model.encode_video(video, vmask)
            scores[len(levels)] = [model.similarity(model.encode_text(b), v)["S"] for b in (base, moved, masked)]
    assert not torch.allclose(scores[4][0], scores[4][1])  # with the noun level, nouns do move S
    assert not torch.allclose(scores[4][0], scores[4][2])
    torch.testing.assert_close(scores[2][1], scores[2][0], rtol=0, atol=0)  # without it, they must not
    torch.testing.assert_close(scores[2][2], scores[2][0], rtol=0, atol=0)


def test_hierarchy_enhance_without_nouns_only_normalises_verbs():
    g = torch.Generator().manual_seed(0)
    verbs, nouns = torch.randn(1, 2, D, generator=g), norm(torch.randn(1, 3, D, generator=g))
    mask, parent = torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.long)
    on, _ = hierarchy_enhance(verbs, nouns, None, mask, None, parent, None)
    off, _ = hierarchy_enhance(verbs, nouns, None, mask, None, parent, None, use_nouns=False)
    torch.testing.assert_close(off, norm(verbs))
    assert not torch.allclose(on[0, 0], off[0, 0])


def test_seqtransf_uses_quick_gelu():
    from open_clip.transformer import QuickGELU

    model = tiny(temporal="seqTransf", temporal_layers=2, temporal_heads=2)
    acts = {type(b.mlp.gelu) for b in model.temporal.transformer.resblocks}
    assert acts == {QuickGELU}  # CLIP4Clip's TransformerClip blocks


def _act(clip):
    return {type(b.mlp.gelu) for b in [*clip.transformer.resblocks, *clip.visual.transformer.resblocks]}


def test_quick_gelu_state_dict_file_custom(tmp_path):
    from open_clip.transformer import QuickGELU

    from shenet.models import build_clip

    torch.manual_seed(0)
    ref = build_clip(SHENetConfig(clip_model="custom", random_init=True, quick_gelu=True)).eval()
    assert _act(ref) == {QuickGELU}
    path = tmp_path / "quickgelu.pt"
    torch.save(ref.state_dict(), path)
    loaded = build_clip(SHENetConfig(clip_model="custom", pretrained=str(path), quick_gelu=True)).eval()
    assert _act(loaded) == {QuickGELU}
    ids = torch.randint(1, 1000, (2, 32))  # the custom context length
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(ids), ref.encode_text(ids))
    gelu = build_clip(SHENetConfig(clip_model="custom", pretrained=str(path))).eval()  # auto: custom = nn.GELU
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:4096])  # a copy that stopped
    with pytest.raises(ValueError, match=r"model\.config\.pretrained '.*cut\.pt' cannot be read as a torch file"):
        build_clip(SHENetConfig(clip_model="custom", pretrained=str(tmp_path / "cut.pt")))
    assert _act(gelu) == {torch.nn.GELU}
    with torch.no_grad():
        assert not torch.allclose(gelu.encode_text(ids), ref.encode_text(ids))


def test_openai_architectures_get_quick_gelu(tmp_path, monkeypatch):
    """ViT-B-32 with OpenAI weights as a state-dict file or the ``openai`` tag: open_clip's create_model must be
    asked for QuickGELU (it builds nn.GELU otherwise); ``quick_gelu: false`` overrides for GELU checkpoints."""
    import open_clip
    from open_clip.model import CLIP

    from shenet.models import build_clip

    calls = []

    def create_model(name, pretrained=None, force_quick_gelu=False, **kw):
        calls.append((name, pretrained, force_quick_gelu))
        vision = dict(image_size=32, patch_size=16, width=64, layers=1, head_width=32)
        return CLIP(32, vision, dict(context_length=16, width=32, heads=2, layers=1), quick_gelu=force_quick_gelu)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    path = tmp_path / "ViT-B-32-openai.pt"
    torch.save({}, path)  # an open_clip state-dict file (not TorchScript)
    build_clip(SHENetConfig(pretrained=str(path)))
    build_clip(SHENetConfig(pretrained="openai"))
    build_clip(SHENetConfig(pretrained=str(path), quick_gelu=False))
    build_clip(SHENetConfig(pretrained="laion2b_s34b_b79k"))  # a GELU-trained open_clip tag
    assert calls == [
        ("ViT-B-32", str(path), True),
        ("ViT-B-32", "openai", True),
        ("ViT-B-32", str(path), False),
        ("ViT-B-32", "laion2b_s34b_b79k", False),
    ]
    with pytest.raises(ValueError, match="quick_gelu"):
        SHENetConfig(pretrained="openai", quick_gelu=False)


def test_random_vit_b32_is_quick_gelu_and_architecture_checked():
    from open_clip.transformer import QuickGELU

    from shenet.models import build_clip, check_architecture

    clip = build_clip(SHENetConfig(random_init=True))  # the real open_clip ViT-B-32 (random weights)
    assert _act(clip) == {QuickGELU}
    check_architecture(clip, "ViT-B-32", "ViT-B-32.pt")
    with pytest.raises(ValueError, match=r"patch size 32 \(expected 16\).*model.config.clip_model"):
        check_architecture(clip, "ViT-B-16", "ViT-B-32.pt")


def test_torchscript_checkpoint_of_other_architecture_raises(tmp_path, monkeypatch):
    import open_clip

    import shenet.models as models

    other = models.build_clip(SHENetConfig(clip_model="custom", random_init=True))  # patch 16, width 64
    monkeypatch.setattr(models, "_is_torchscript", lambda path: True)
    monkeypatch.setattr(open_clip, "load_openai_model", lambda *a, **k: other)
    path = tmp_path / "ViT-B-16.pt"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="does not hold a ViT-B-32 CLIP: patch size 16 \\(expected 32\\)") as err:
        models.build_clip(SHENetConfig(pretrained=str(path)))
    assert "model.config.clip_model" in str(err.value)
    with pytest.raises(ValueError, match="quick_gelu=false"):
        models.build_clip(SHENetConfig(pretrained=str(path), quick_gelu=False))


# ------------------------------------------------------------------- a video without any valid frame (all padding)


def test_seqtransf_all_padding_video_is_finite(plain_attention):
    """An all-padding video has no frame to attend to; with the attention formula (NaN for a fully masked row) its
    outputs must still be finite, and the other videos' outputs must be what they are without it."""
    from shenet.models import TemporalTransformer

    torch.manual_seed(0)
    head = TemporalTransformer(D, 2, 2, T)
    frames = torch.randn(3, T, D)
    mask = torch.tensor([[True] * T, [False] * T, [True, True, False, False]])
    for train in (True, False):
        head.train(train)
        with torch.set_grad_enabled(train):
            out = head(frames, mask)
            alone = head(frames[[0, 2]], mask[[0, 2]])
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[[0, 2]], alone)


EMPTY_VIDEO_MODES = {
    "meanP_baseline": dict(guide_visual=False, guide_similarity=False),
    "guided_softmax": dict(),
    "seqTransf": dict(temporal="seqTransf", temporal_layers=1, temporal_heads=2),
    "max_pooling": dict(guided_pooling="max"),
    "unguided_visual": dict(guide_visual=False),
    "sentence_guidance": dict(guide_similarity=False, sentence_guidance=True),
    "uniform_noun_time_learned": dict(noun_temporal="uniform", learnable_tau=True, sim_weighting="learned"),
}


@pytest.mark.parametrize("mode", list(EMPTY_VIDEO_MODES))
def test_all_padding_video_in_every_mode(plain_attention, mode):
    """Video 1 has no valid frame: its embedding is zero and every score with it is 0 (finite, no NaN gradient);
    training leaves its pair out (the loss is 3/4 of the loss without it); evaluation ranks it last (−inf)."""
    from shenet.losses import SHENetContrastiveLoss

    torch.manual_seed(0)
    model = tiny(**EMPTY_VIDEO_MODES[mode])
    batch = text_batch(4)
    frames = torch.randn(4, T, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    text, video = model.encode_text(batch), model.encode_video(frames * mask[..., None, None, None], mask)
    assert torch.isfinite(video.frames).all() and torch.isfinite(video.patches).all()
    assert torch.equal(video.video[1], torch.zeros_like(video.video[1]))
    levels = model.similarity(text, video)
    for name, S in levels.items():
        assert torch.isfinite(S).all(), name
        assert torch.equal(S[:, 1], torch.zeros_like(S[:, 1])), name

    loss = SHENetContrastiveLoss(aux_weight=0.5)(text, video, model.similarity, model.logit_scale)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    keep = [0, 2, 3]
    rest = SHENetContrastiveLoss(aux_weight=0.5)(
        text.apply(lambda x: x[keep]), video.apply(lambda x: x[keep]), model.similarity, model.logit_scale
    )["loss"]
    torch.testing.assert_close(loss, rest * 3 / 4)

    with torch.no_grad():
        scores = model.similarity_matrix(text, video, text_chunk=3, video_chunk=3)
    assert torch.isneginf(scores[:, 1]).all()
    assert torch.isfinite(scores[:, keep]).all()
    torch.testing.assert_close(scores[:, keep], levels["S"].detach()[:, keep])


def test_l2_normalize_zero_vector_in_every_dtype():
    """F.normalize's ε = 1e-12 is 0 in float16, so a zero row gave 0/0 = NaN; l2_normalize keeps it zero there, and
    is F.normalize bit for bit in float32 and bfloat16."""
    from shenet.models import l2_normalize

    x = torch.randn(3, 5, D)
    x[1, 2] = 0.0
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(l2_normalize(x.to(dtype)), F.normalize(x.to(dtype), dim=-1))
    half = x.half().requires_grad_()
    y = l2_normalize(half)
    assert torch.equal(y[1, 2], torch.zeros(D, dtype=torch.float16))
    torch.testing.assert_close(y.float(), F.normalize(x, dim=-1), atol=2e-3, rtol=0)
    (y * torch.randn(y.shape).half()).sum().backward()
    assert torch.isfinite(half.grad).all()


@pytest.mark.parametrize("mode", list(EMPTY_VIDEO_MODES))
def test_all_padding_video_in_float16(plain_attention, mode):
    """``precision: 16-true``: with an all-padding video (zero embedding, zero guided features) the scores, the loss
    and every gradient stay finite, and the video's scores are 0."""
    from shenet.losses import SHENetContrastiveLoss

    torch.manual_seed(0)
    model = tiny(**EMPTY_VIDEO_MODES[mode]).half()
    frames = torch.randn(4, T, 3, 32, 32).half()
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    text, video = model.encode_text(text_batch(4)), model.encode_video(frames * mask[..., None, None, None], mask)
    assert video.video.dtype == torch.float16 and torch.equal(video.video[1], torch.zeros_like(video.video[1]))
    for name, S in model.similarity(text, video).items():
        assert torch.isfinite(S).all(), name
        assert torch.equal(S[:, 1], torch.zeros_like(S[:, 1])), name
    loss = SHENetContrastiveLoss(aux_weight=0.5)(text, video, model.similarity, model.logit_scale)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_level_switched_off_has_no_per_level_loss_term():
    """Spec §3.7/§3.9: the per-level terms β Σ_l L(S_l) run over the levels in use. With the noun level switched off
    the total is L(S) + β L(S2), computed here by hand, and the noun nodes get no gradient."""
    from shenet.losses import SHENetContrastiveLoss, symmetric_infonce_loss

    torch.manual_seed(0)
    model = tiny(levels=["sentence", "verb"])
    batch = _noun_batch(3)
    batch["text_noun_pool"].requires_grad_(True)
    text = model.encode_text(batch)
    video = model.encode_video(torch.randn(3, T, 3, 32, 32), torch.ones(3, T, dtype=torch.bool))
    levels = model.similarity(text, video)
    assert set(levels) == {"S", "S1", "S2"}
    beta, scale = 0.5, model.logit_scale
    out = SHENetContrastiveLoss(beta)(text, video, model.similarity, scale)
    labels = torch.arange(3)
    by_hand = symmetric_infonce_loss(levels["S"], levels["S"].T, scale, labels) + beta * symmetric_infonce_loss(
        levels["S2"], levels["S2"].T, scale, labels
    )
    assert "loss_S3" not in out
    torch.testing.assert_close(out["loss"], by_hand)
    out["loss"].backward()
    assert batch["text_noun_pool"].grad is None or not batch["text_noun_pool"].grad.any()
