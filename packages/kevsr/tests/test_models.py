"""Components of spec §3.3 against their equations (spec §8d)."""

import pytest
import torch
from mmzoo.testing import repeated_index_reads

from kevsr.models import (
    FrameRefiner,
    KEVSRConfig,
    KeywordFusion,
    KeywordOffsets,
    LabelMatchingHead,
    LocalAttentionPool,
)


def test_keyword_fusion_single_keyword_and_frame_axis():
    torch.manual_seed(0)
    fusion = KeywordFusion(kg_dim=5, dim=4, softmax_over="keywords", dropout=0.0).eval()
    frames = torch.randn(1, 3, 4)
    kw = torch.randn(1, 2, 5)
    mask = torch.tensor([[True, False]])  # one real keyword, one padded
    a = fusion.assignment(frames, kw, mask)
    torch.testing.assert_close(a[..., 0], torch.ones(1, 3))  # a_{j,1} = 1
    assert (a[..., 1] == 0).all()
    z = fusion.phi_z(kw)[:, 0]  # (1, D)
    expected_kw = frames.sum(dim=1) - 3 * z  # Σ_j f'_j − N_f z
    expected = fusion.out(expected_kw + frames.mean(dim=1))
    torch.testing.assert_close(fusion(frames, kw, mask), expected)
    fusion.softmax_over = "frames"
    a = fusion.assignment(frames, torch.randn(1, 2, 5), torch.tensor([[True, True]]))
    torch.testing.assert_close(a.sum(dim=1), torch.ones(1, 2))


def test_keyword_softmax_leaves_the_frame_part_independent_of_the_assignment():
    """With the softmax over keywords (the default), Σ_k a_jk = 1, so (1/|K|) Σ_k Σ_j a_jk f'_j = (N_f/|K|)·mean_j f'_j:
    e' = (1 + N_f/|K|)·mean_j f'_j − (1/|K|) Σ_k A_k z_k, A_k = Σ_j a_jk. The assignment (φ_w, φ_c) reaches e' only
    through the weights A_k of the keyword vectors z_k; over frames it also weights the frames."""
    torch.manual_seed(0)
    frames, kw, mask = (
        torch.randn(2, 5, 4),
        torch.randn(2, 3, 5),
        torch.tensor([[True, True, True], [True, True, False]]),
    )
    for axis in ("keywords", "frames"):
        fusion = KeywordFusion(5, 4, axis, 0.0).eval()
        with torch.no_grad():  # z_k = 0: what remains is the frame part of e'
            fusion.phi_z[-1].weight.zero_()
            fusion.phi_z[-1].bias.zero_()
        before = fusion(frames, kw, mask)
        with torch.no_grad():
            for p in (*fusion.phi_w.parameters(), *fusion.phi_c.parameters()):
                p.normal_()  # a different assignment
        after = fusion(frames, kw, mask)
        if axis == "keywords":
            k = mask.sum(1, keepdim=True).float()
            torch.testing.assert_close(before, fusion.out((1 + 5 / k) * frames.mean(1)))
            torch.testing.assert_close(after, before)
        else:
            assert not torch.allclose(after, before, atol=1e-4)


def test_keyword_fusion_without_keywords_uses_frame_mean():
    fusion = KeywordFusion(5, 4, "keywords", 0.0).eval()
    frames = torch.randn(2, 3, 4)
    out = fusion(frames, torch.randn(2, 2, 5), torch.zeros(2, 2, dtype=torch.bool))
    torch.testing.assert_close(out, fusion.out(frames.mean(dim=1)))


def test_local_attention_masks_and_empty_frame():
    pool = LocalAttentionPool(4)
    frame, regions = torch.randn(1, 2, 4), torch.randn(1, 2, 3, 4)
    mask = torch.tensor([[[True, True, False], [False, False, False]]])
    alpha = pool.attention(frame, regions, mask)
    torch.testing.assert_close(alpha[0, 0].sum(), torch.tensor(1.0))
    assert alpha[0, 0, 2] == 0 and (alpha[0, 1] == 0).all()
    out = pool(frame, regions, mask)
    assert torch.isfinite(out).all() and (out[0, 1] == 0).all()


def test_appending_a_kg_label_changes_no_existing_score():
    torch.manual_seed(0)
    head = LabelMatchingHead(dim=4, kg_dim=5, num_labels=3, dropout=0.0, freeze_kg=True).eval()
    head.set_label_vectors(torch.randn(3, 5), torch.tensor([True, True, False]))
    video = torch.randn(2, 4)
    before = head(video)
    extended = torch.cat([head.label_embeddings(), torch.randn(1, 5)])
    after = head.score(video, extended)
    torch.testing.assert_close(after[:, :3], before)
    assert after.shape == (2, 4)


def _batch(b=3, t=2, r=2, k=3, g=5, dims=(6, 4, 3, 6)):
    d2, d3, dt, dr = dims
    return {
        "f2d": torch.randn(b, t, d2),
        "f3d": torch.randn(b, t, d3),
        "text": torch.randn(b, dt),
        "regions": torch.randn(b, t, r, dr),
        "region_mask": torch.ones(b, t, r, dtype=torch.bool),
        "keywords": torch.randn(b, k, g),
        "keyword_mask": torch.tensor([[True, True, False]] * b),
        "keyword_ids": torch.tensor([[0, 2, 0], [1, 2, 0], [3, 0, 0]]),
        "target1": torch.tensor([[1.0, 0.0]] * b),
        "target2": torch.tensor([[1.0, 0.0, 0.0]] * b),
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_keyword_kg_vectors_tuned_only_when_unfrozen(freeze):
    from kevsr.module import KEVSRModule

    torch.manual_seed(0)
    cfg = _toy_cfg(dim=8, freeze_keyword_kg=freeze)
    module = KEVSRModule(cfg, streams="nontemporal")
    stream = module.model.nontemporal
    assert stream.tune_keywords is not freeze
    if not freeze:
        with pytest.raises(RuntimeError, match="keyword vocabulary is empty"):
            stream.keyword_vectors(_batch())
        stream.keyword_delta.set_vocabulary(["a", "b", "c", "d"])
    batch = _batch()
    before = stream.keyword_vectors(batch)[0].detach().clone()
    torch.testing.assert_close(before, batch["keywords"])  # starts at the KG vectors
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0)
    module.compute_losses(batch)["loss"].backward()
    opt.step()
    after = stream.keyword_vectors(batch)[0].detach()
    valid = batch["keyword_mask"]
    if freeze:
        torch.testing.assert_close(after, before)
    else:
        assert not torch.allclose(after[valid], before[valid])
        assert stream.keyword_delta.delta.grad[1:4].abs().sum() > 0
        # a checkpoint with tuned vectors loads into a fresh model (the vocabulary size comes from the state)
        fresh = KEVSRModule(cfg, streams="nontemporal")
        fresh.load_state_dict(module.state_dict())
        torch.testing.assert_close(fresh.model.nontemporal.keyword_vectors(batch)[0], after)


def test_s2_uses_the_keyword_kg_vectors_at_inference_and_s1_does_not():
    """The KG path of claim 4: S2's scores of a video change with its keywords' KG vectors (e.g. an unseen label's
    synonyms at test time), S1's do not."""
    from kevsr.models import KEVSRModel

    torch.manual_seed(0)
    model = KEVSRModel(_toy_cfg(dim=8)).eval()
    batch = _batch()
    other = dict(batch, keywords=torch.randn_like(batch["keywords"]))
    with torch.no_grad():
        a, b = model(batch), model(other)
    torch.testing.assert_close(a["t"]["level2"], b["t"]["level2"])
    assert not torch.allclose(a["nt"]["level2"], b["nt"]["level2"])
    masked = dict(other, keywords=torch.where(batch["keyword_mask"][..., None], batch["keywords"], 9.0))
    with torch.no_grad():
        torch.testing.assert_close(model(masked)["nt"]["level2"], a["nt"]["level2"])  # padded keywords ignored


def _toy_problem(seed=0, b=32):
    """A learnable toy batch: level-2 label = argmax of the first 3 f2d dims averaged over frames."""
    g = torch.Generator().manual_seed(seed)
    batch = _batch(b=b)
    batch["f2d"] = torch.randn(b, 2, 6, generator=g)
    batch["keywords"] = torch.randn(b, 3, 5, generator=g)
    batch["keyword_ids"] = torch.zeros(b, 3, dtype=torch.long)
    batch["keyword_mask"] = torch.ones(b, 3, dtype=torch.bool)
    label = batch["f2d"][:, :, :3].mean(1).argmax(1)
    batch["target2"] = torch.nn.functional.one_hot(label, 3).float()
    batch["target1"] = torch.stack([label < 2, label >= 2], 1).float()
    return batch


def _toy_cfg(dim=16, **kw):
    return KEVSRConfig(
        dim=dim,
        f2d_dim=6,
        f3d_dim=4,
        text_dim=3,
        region_dim=6,
        kg_dim=5,
        num_frames=2,
        num_regions=2,
        num_keywords=3,
        num_level1=2,
        num_level2=3,
        temporal_heads=2,
        region_heads=2,
        dropout=0.0,
        **kw,
    )


def test_s2_scores_do_not_vanish_at_init():
    """Regression: with BERT's fixed std 0.02 at a small d, S2's bilinear label scores were ~1000x smaller than
    S1's at init and S2 sat at a saddle (repro: S2 F1 0.2 ± 0.18, w/o-kw 0.0). The default 1/sqrt(fan_in)
    init keeps both streams' scores within an order of magnitude."""
    from kevsr.models import KEVSRModel

    torch.manual_seed(0)
    model = KEVSRModel(
        KEVSRConfig(
            dim=64,
            f2d_dim=64,
            f3d_dim=64,
            text_dim=32,
            region_dim=64,
            kg_dim=32,
            num_frames=6,
            num_regions=5,
            num_level1=3,
            num_level2=10,
            temporal_heads=4,
            region_heads=4,
            dropout=0.0,
        )
    )  # the demo / repro sizes
    for head in (model.nontemporal.head1, model.nontemporal.head2):
        head.set_label_vectors(torch.randn_like(head.label_kg), torch.ones(len(head.label_kg), dtype=torch.bool))
    batch = _batch(b=16, t=6, r=5, k=3, g=32, dims=(64, 64, 32, 64))
    batch["keyword_ids"] = torch.zeros(16, 3, dtype=torch.long)
    with torch.no_grad():
        out = model(batch)
    ratio = out["nt"]["level2"].std() / out["t"]["level2"].std()
    assert 0.1 < ratio < 10, f"S2 / S1 score scale at init = {ratio:.2g}"


def test_full_model_s1_learns_under_mutual_distillation():
    """Both streams with the spec's mutual distillation (stop_grad none) on one easy batch: S1 still fits it
    (F1 > 0.5). A sanity check only: on the harder digits miniature the mutual Euclidean distillation collapses
    both streams (see README, Results)."""
    from kevsr.metrics import micro_f1
    from kevsr.module import KEVSRModule

    torch.manual_seed(0)
    module = KEVSRModule(_toy_cfg(), streams="both", distill_stop_grad="none")
    for head in (module.model.nontemporal.head1, module.model.nontemporal.head2):
        head.set_label_vectors(torch.randn_like(head.label_kg), torch.ones(len(head.label_kg), dtype=torch.bool))
    module.model.set_hierarchy(torch.tensor([0, 0, 1]))
    batch = _toy_problem()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for _ in range(60):
        loss = module.compute_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s1 = module.model.forward_temporal(batch)["level2"]
    assert micro_f1(s1, batch["target2"]) > 0.5


@pytest.mark.parametrize(
    "streams, overrides",
    [
        ("both", {}),
        ("temporal", {}),
        ("nontemporal", {}),
        ("nontemporal", {"nt_fusion": "transformer"}),  # koubei_s2_wo_know_w_temp
        ("nontemporal", {"nt_fusion": "mean"}),  # koubei_s2_wo_know
        ("nontemporal", {"keyword_source": "random_shared"}),  # koubei_s2_wo_kw
        ("nontemporal", {"nt_fusion": "mean", "keyword_source": "random_shared"}),
        ("both", {"freeze_keyword_kg": False}),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(streams, overrides):
    """DDP (find_unused_parameters=False, Lightning's default) stops with "parameters that were not used in
    producing the loss" when a built module never enters the loss, e.g. the region reasoning of the
    w/o-know & w-temp row, whose Transformer fusion reads the raw regions."""
    from kevsr.module import KEVSRModule

    torch.manual_seed(0)
    module = KEVSRModule(_toy_cfg(dim=8, **overrides), streams=streams)
    if streams != "temporal" and module.model.nontemporal.tune_keywords:
        module.model.nontemporal.keyword_delta.set_vocabulary(["a", "b", "c", "d"])
    module.model.set_hierarchy(torch.tensor([0, 0, 1]))
    batch = _batch()
    with repeated_index_reads() as repeated:  # a parent of several labels, a repeated keyword: fixed-order sums
        loss = module.compute_losses(batch)["loss"]
    assert repeated == []
    loss.backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters outside the loss (DDP would stop): {unused}"


def _refiner_inputs(b=4, t=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, t, 6, generator=g), torch.randn(b, t, 4, generator=g), torch.randn(b, 3, generator=g)


@pytest.mark.parametrize("hidden_dropout", [True, False])
def test_frame_refiner_hidden_dropout_only_in_training_and_only_when_on(hidden_dropout):
    """Spec §3.1: dropout after each MLP hidden layer, here W2 · Dropout(GELU(W1 e^con)); the input of W2 is the GELU
    output with a fraction p of its entries zeroed and the rest scaled by 1/(1 − p), in train mode only."""
    torch.manual_seed(0)
    refiner = FrameRefiner(13, 64, dropout=0.5, hidden_dropout=hidden_dropout)
    seen = {}
    refiner.mlp[1][0].register_forward_hook(lambda m, args, out: seen.update(gelu=out.detach()))
    refiner.mlp[2].register_forward_pre_hook(lambda m, args: seen.update(w2_in=args[0].detach()))
    refiner.train()(*_refiner_inputs())
    gelu, w2_in = seen["gelu"], seen["w2_in"]
    if hidden_dropout:
        dropped = w2_in == 0
        assert 0.4 < dropped.float().mean() < 0.6  # p = 0.5 of 4 · 5 · 64 entries
        torch.testing.assert_close(w2_in[~dropped], 2 * gelu[~dropped])
    else:
        torch.testing.assert_close(w2_in, gelu)
    refiner.eval()(*_refiner_inputs())
    torch.testing.assert_close(seen["w2_in"], seen["gelu"])


@pytest.mark.parametrize("hidden_dropout", [True, False])
def test_refine_hidden_dropout_reaches_both_streams(hidden_dropout):
    from dataclasses import replace

    from kevsr.models import KEVSRModel

    cfg = replace(_toy_cfg(), dropout=0.3, refine_hidden_dropout=hidden_dropout)
    model = KEVSRModel(cfg)
    for refiner in (model.temporal.refine, model.nontemporal.refine):
        hidden = refiner.mlp[1][1]
        assert isinstance(hidden, torch.nn.Dropout if hidden_dropout else torch.nn.Identity)
        assert not hidden_dropout or hidden.p == 0.3
        assert refiner.dropout.p == 0.3  # the equation's Dropout on e^ref either way


def test_frame_refiner_loads_state_dicts_of_the_layout_without_hidden_dropout():
    """The Linear layers keep the keys mlp.0 / mlp.2 of the earlier Linear → GELU → Linear layout, so checkpoints
    written before the hidden dropout load strictly and, in eval mode, compute the same features."""
    from torch import nn

    earlier = nn.Module()
    earlier.mlp = nn.Sequential(nn.Linear(13, 8), nn.GELU(), nn.Linear(8, 8))
    earlier.residual = nn.Linear(13, 8, bias=False)
    earlier.norm = nn.LayerNorm(8)
    for hidden_dropout in (True, False):
        refiner = FrameRefiner(13, 8, dropout=0.5, hidden_dropout=hidden_dropout)
        assert refiner.state_dict().keys() == earlier.state_dict().keys()
        refiner.load_state_dict(earlier.state_dict())  # strict
        f2d, f3d, text = _refiner_inputs()
        e_con = torch.cat([f2d, f3d, text[:, None].expand(-1, 5, -1)], dim=-1)
        with torch.no_grad():
            torch.testing.assert_close(
                refiner.eval()(f2d, f3d, text), earlier.norm(earlier.mlp(e_con) + earlier.residual(e_con))
            )


def test_keyword_offsets_are_mapped_by_term_when_loaded():
    trained = KeywordOffsets(kg_dim=2)
    trained.set_vocabulary(["broth", "cinema", "spicy"])
    with torch.no_grad():
        trained.delta.copy_(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    state = trained.state_dict()
    assert KeywordOffsets.saved_vocabulary(state, "") == ["broth", "cinema", "spicy"]

    # the data give another vocabulary (a term sorted in between shifts the ids, one term gone): moved by term
    now = KeywordOffsets(kg_dim=2)
    now.set_vocabulary(["broth", "movie", "spicy", "ticket"])
    now.load_state_dict(state)
    torch.testing.assert_close(now.delta.detach(), torch.tensor([[1.0, 1.0], [0.0, 0.0], [3.0, 3.0], [0.0, 0.0]]))
    assert now.vocabulary == ["broth", "movie", "spicy", "ticket"]
    assert KeywordOffsets.saved_vocabulary(now.state_dict(), "") == now.vocabulary
    assert state["delta"].shape == (3, 2)  # the caller's state dict is left as it was

    # no data yet: the checkpoint's vocabulary; data set later: moved by term
    fresh = KeywordOffsets(kg_dim=2)
    fresh.load_state_dict(state)
    assert fresh.vocabulary == ["broth", "cinema", "spicy"]
    fresh.set_vocabulary(["cinema", "karaoke"])
    torch.testing.assert_close(fresh(torch.tensor([[0, 1]])), torch.tensor([[[2.0, 2.0], [0.0, 0.0]]]))


def test_keyword_offsets_from_a_checkpoint_without_vocabulary():
    """Checkpoints written before the vocabulary was saved: applied by row (with a warning) when the sizes agree,
    a ValueError naming both sizes when they do not."""
    legacy = {"delta": torch.arange(6.0).view(3, 2)}
    same = KeywordOffsets(kg_dim=2)
    same.set_vocabulary(["a", "b", "c"])
    with pytest.warns(UserWarning, match="without their vocabulary"):
        same.load_state_dict(legacy)  # strict: the missing vocabulary is not a missing key
    torch.testing.assert_close(same.delta.detach(), legacy["delta"])
    other = KeywordOffsets(kg_dim=2)
    other.set_vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="have 3 rows but the data's keyword vocabulary .* has 2 terms"):
        other.load_state_dict(legacy)
    loaded = KeywordOffsets(kg_dim=2)
    loaded.load_state_dict(legacy)  # no data yet
    with pytest.raises(ValueError, match="have 3 rows"):
        loaded.set_vocabulary(["a", "b"])


def test_optimizer_state_of_keyword_offsets_is_mapped_by_term_on_resume():
    """KEVSRModule.on_load_checkpoint moves AdamW's per-term moments to the data's vocabulary, as the offsets move."""
    from kevsr.module import KEVSRModule

    torch.manual_seed(0)
    cfg = _toy_cfg(dim=8, freeze_keyword_kg=False)
    a = KEVSRModule(cfg, streams="nontemporal")
    a.model.nontemporal.keyword_delta.set_vocabulary(["a", "b", "c", "d"])
    opt_a = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad])
    a.compute_losses(_batch())["loss"].backward()
    opt_a.step()
    checkpoint = {"state_dict": a.state_dict(), "optimizer_states": [opt_a.state_dict()]}

    b = KEVSRModule(cfg, streams="nontemporal")
    offsets = b.model.nontemporal.keyword_delta
    offsets.set_vocabulary(["a", "aa", "b", "c", "d"])  # as setup() does with the new data
    b.on_load_checkpoint(checkpoint)
    b.load_state_dict(checkpoint["state_dict"])
    opt_b = torch.optim.AdamW([p for p in b.parameters() if p.requires_grad])
    opt_b.load_state_dict(checkpoint["optimizer_states"][0])
    old = opt_a.state[a.model.nontemporal.keyword_delta.delta]
    new = opt_b.state[offsets.delta]
    for key in ("exp_avg", "exp_avg_sq"):
        assert old[key][1:4].abs().sum() > 0  # rows b, c, d were trained (batch keyword ids 1–3)
        torch.testing.assert_close(new[key][[0, 2, 3, 4]], old[key])
        assert (new[key][1] == 0).all()
    b.compute_losses(_batch())["loss"].backward()
    opt_b.step()  # shapes agree


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: _toy_cfg(assign_softmax_over="keyword"),
            r"model.config.assign_softmax_over='keyword': expected one of",
        ),
        (lambda: _toy_cfg(nt_fusion="knowledg"), r"model.config.nt_fusion='knowledg': expected one of"),
        (lambda: _toy_cfg(keyword_source="random"), r"model.config.keyword_source='random': expected one of"),
        (lambda: KeywordFusion(5, 4, "frame", 0.0), r"softmax_over='frame': expected one of"),
        (lambda: _module(streams="s1"), r"model\.streams='s1': expected one of"),
        (lambda: _module(distill_stop_grad="s1"), r"model\.distill_stop_grad='s1': expected one of"),
        (lambda: _module(rp_mode="thresholds"), r"model\.rp_mode='thresholds': expected one of"),
        (lambda: _distill(stop_grad="s1"), r"stop_grad='s1': expected one of"),
        (lambda: _rp(mode="thresholds"), r"mode='thresholds': expected one of"),
    ],
)
def test_misspelt_choices_are_refused(build, message):
    """A misspelt choice used to select another variant in silence: any assign_softmax_over but "keywords" meant
    the frames axis, any nt_fusion but knowledge/mean the Transformer replacement, any keyword_source but
    random_shared the KG, any distill_stop_grad but nt/t mutual distillation, any rp_mode but threshold top-1;
    unknown streams built a model without either stream."""
    with pytest.raises(ValueError, match=message):
        build()


def _distill(**kw):
    from kevsr.losses import self_distillation_loss

    s = torch.zeros(2, 3)
    return self_distillation_loss(s, s, s, s, 1.0, 1.0, **kw)


def _rp(**kw):
    from kevsr.metrics import rp_at_accuracy

    return rp_at_accuracy(torch.randn(4, 3), torch.ones(4, 3), 0.9, **kw)


def _module(**kw):
    from kevsr.module import KEVSRModule

    return KEVSRModule(_toy_cfg(dim=8), **kw)


def test_transformer_fusion_cls_is_gaussian_initialised():
    """The [CLS] vector of the w/o-know & w-temp Transformer fusion used to stay at exactly zero, unlike S1's
    [CLS] and every other weight (spec §3.1: Gaussian init; std ``init_std`` or 0.02)."""
    from kevsr.models import KEVSRModel

    torch.manual_seed(0)
    for init_std, expected in ((None, 0.02), (0.3, 0.3)):
        cfg = _toy_cfg(dim=256, nt_fusion="transformer", init_std=init_std)
        cls = KEVSRModel(cfg, "both").nontemporal.fusion_cls.detach()
        assert cls.shape == (1, 1, 256)
        assert abs(float(cls.std()) - expected) < 0.2 * expected
        assert abs(float(cls.mean())) < 0.2 * expected
