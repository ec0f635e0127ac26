import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from mmzoo.cli import resolve_config
from torch_geometric.utils import softmax

from radartag.models import (
    FOLLOWED_BY,
    HAS_TAG,
    SUBTOPIC,
    SUPERTOPIC,
    AdversarialAggregation,
    CommonReducer,
    CommonUniqueAggregation,
    GatedUpdater,
    GGTConv,
    LMFReducer,
    Radar,
    RadarConfig,
    RadarLayer,
    SelfAttentionReducer,
    grad_reverse,
)


def test_ggt_attention_normalised_zero_message_and_permutation():
    torch.manual_seed(0)
    conv = GGTConv()
    q, k, v = torch.randn(3, 2, 4), torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    pri = torch.ones(2)
    ei = torch.tensor([[0, 1, 2, 3, 4, 0], [0, 0, 1, 1, 1, 0]])  # destination 2 has no neighbour
    out = conv(q, k, v, pri, ei)
    alpha = conv.last_alpha
    sums = torch.zeros(3, 2).index_add_(0, ei[1], alpha)
    torch.testing.assert_close(sums[:2], torch.ones(2, 2))
    assert out[2].abs().max() == 0  # zero message without neighbours
    perm = torch.tensor([5, 3, 1, 0, 4, 2])
    torch.testing.assert_close(conv(q, k, v, pri, ei[:, perm]), out)
    # plain loop reference for destination 1, head 0
    e = torch.stack([(q[1, 0] * k[j, 0]).sum() / 2.0 for j in (2, 3, 4)])
    ref = (torch.softmax(e, 0)[:, None] * v[[2, 3, 4], 0]).sum(0)
    torch.testing.assert_close(out[1, :4], ref)


def test_per_relation_softmax_differs_from_joint():
    e_r1 = torch.tensor([1.0, 2.0])  # two r1 edges into node 0
    e_r2 = torch.tensor([0.5])  # one r2 edge into node 0
    per_rel = torch.cat(
        [softmax(e_r1, torch.zeros(2, dtype=torch.long)), softmax(e_r2, torch.zeros(1, dtype=torch.long))]
    )
    joint = softmax(torch.cat([e_r1, e_r2]), torch.zeros(3, dtype=torch.long))
    assert per_rel[2] == 1.0 and joint[2] < 1.0
    assert not torch.allclose(per_rel, joint)


def test_gate_equation():
    torch.manual_seed(0)
    gate = GatedUpdater(6, dropout=0.0)
    h, m = torch.randn(4, 6), torch.randn(4, 6)
    z = torch.sigmoid(gate.w_z(m) + gate.u_z(h))
    torch.testing.assert_close(gate(m, h), z * F.gelu(gate.w_s(h + m)) + (1 - z) * h)
    z0 = torch.sigmoid(gate.u_z(h))
    torch.testing.assert_close(gate(torch.zeros_like(h), h), z0 * F.gelu(gate.w_s(h)) + (1 - z0) * h)


def test_aan_formula_and_labels():
    torch.manual_seed(0)
    aan = AdversarialAggregation(6, dropout=0.0).eval()
    x1, x2 = torch.randn(5, 6), torch.randn(5, 6)
    fused, logits = aan(x1, x2)
    u1, u2, c1, c2 = aan.unique1(x1), aan.unique2(x2), aan.common(x1), aan.common(x2)
    ref = 0.5 * (torch.tanh(aan.attend1(c1)) * c1 + torch.tanh(aan.attend2(c2)) * c2 + torch.maximum(u1, u2))
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(logits["unique"], torch.cat([u1, u2]) @ aan.disc_weight[0] + aan.disc_bias)
    assert float(aan.disc_bias) == 1.0


def test_grl_identity_forward_negated_backward():
    x = torch.randn(3, requires_grad=True)
    y = grad_reverse(x)
    torch.testing.assert_close(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, -torch.tensor([1.0, 2.0, 3.0]))


def test_common_encoder_gradient_reversed_and_scaled():
    from radartag.losses import discriminator_losses

    torch.manual_seed(0)
    aan = AdversarialAggregation(4, dropout=0.0)
    x1, x2 = torch.randn(6, 4), torch.randn(6, 4)

    def grads(lam):
        aan.zero_grad()
        _, logits = aan(x1, x2)
        _, dc = discriminator_losses([logits], lam)
        dc.backward()
        return aan.common[0].weight.grad.clone(), aan.disc_weight.grad.clone()

    enc, disc = grads(0.5)
    # reference without the GRL: the encoder gradient has the opposite sign, the discriminator's is unchanged
    aan.zero_grad()
    c = torch.cat([aan.common(x1), aan.common(x2)])
    y = torch.cat([torch.zeros(6), torch.ones(6)])
    loss = 0.5 * F.binary_cross_entropy_with_logits(aan.discriminate(c), y) / 2
    loss.backward()
    torch.testing.assert_close(enc, -aan.common[0].weight.grad)
    torch.testing.assert_close(disc, aan.disc_weight.grad)
    enc2, _ = grads(1.0)
    torch.testing.assert_close(enc2, 2 * enc)  # scaled by λ_p


def test_radar_layer_and_model_shapes():
    cfg = RadarConfig(video_dim=8, tag_dim=8, num_tags=5, hidden_dim=8, num_heads=2)
    layer = RadarLayer(cfg)
    assert layer.rel_att.shape == (3, 2, 4, 4) and torch.all(layer.rel_pri == 1)
    x = {"video": torch.randn(6, 8), "tag": torch.randn(5, 8)}
    edges = {FOLLOWED_BY: torch.tensor([[3, 4], [0, 1]]), SUBTOPIC: torch.tensor([[0, 1], [4, 4]]),
             HAS_TAG: torch.tensor([[5, 2], [0, 3]])}  # fmt: skip
    out, disc = layer(x, {"video": 2, "tag": 5}, edges)
    assert out["video"].shape == (2, 8) and out["tag"].shape == (5, 8) and disc["unique"].shape == (10,)
    model = Radar(cfg)
    blocks = [({"video": 6, "tag": 5}, {HAS_TAG: torch.tensor([[6, 7], [0, 1]])}), ({"video": 2, "tag": 5}, edges)]
    res = model(torch.randn(8, 8), torch.randn(5, 8), torch.arange(5), blocks, 2)
    assert res.scores.shape == (2, 5) and len(res.discriminator_logits) == 2


def test_ablation_variants_run():
    for kw in (dict(use_follow=False, video_emb_layer=0, reducer="mean"), dict(use_topic=False),
               dict(bidirectional_topic=True), dict(updater="sum"), dict(reducer="common"), dict(reducer="lmf"),
               dict(reducer="self_attention"), dict(num_layers=1, video_emb_layer=1), dict(attention="mutual"),
               dict(attention="mutual", updater="sum", reducer="common_unique", adv_layers=1)):  # fmt: skip
        cfg = RadarConfig(video_dim=8, tag_dim=8, num_tags=5, hidden_dim=8, num_heads=2, **kw)
        model = Radar(cfg)
        blocks = [({"video": 2, "tag": 5}, {})] * cfg.num_layers
        out = model(torch.randn(2, 8), torch.randn(5, 8), torch.arange(5), blocks, 2)
        assert out.scores.shape == (2, 5) and torch.isfinite(out.scores).all()


def _mutual_inputs():
    torch.manual_seed(0)
    x = {"video": torch.randn(6, 8), "tag": torch.randn(5, 8)}
    edges = {FOLLOWED_BY: torch.tensor([[3, 4, 5], [0, 1, 1]]), SUBTOPIC: torch.tensor([[0, 1, 2], [4, 4, 3]]),
             HAS_TAG: torch.tensor([[5, 2, 3], [4, 3, 0]])}  # fmt: skip
    return x, {"video": 2, "tag": 5}, edges


def test_mutual_attention_joint_softmax_over_relations():
    """Ablation 'mutual attention' (reconstruction): one softmax per destination and head over the incoming edges of
    all relations into that type; videos (only r3 enters them) are unchanged w.r.t. per-relation attention."""
    x, num_dst, edges = _mutual_inputs()
    cfg = RadarConfig(video_dim=8, tag_dim=8, num_tags=5, hidden_dim=8, num_heads=2, dropout=0.0, attention="mutual")
    mutual = RadarLayer(cfg).eval()
    per_rel = RadarLayer(RadarConfig(**{**cfg.__dict__, "attention": "relation"})).eval()
    per_rel.load_state_dict(mutual.state_dict())
    with torch.no_grad():
        for p in (mutual.rel_att, mutual.rel_msg):
            p.normal_()  # larger relation matrices than the tiny xavier init, so attention is not uniform
        per_rel.load_state_dict(mutual.state_dict())
        m_mut = mutual.relation_messages(x, num_dst, edges)
        m_rel = per_rel.relation_messages(x, num_dst, edges)
    torch.testing.assert_close(m_mut[FOLLOWED_BY], m_rel[FOLLOWED_BY])  # a single relation into videos
    assert not torch.allclose(m_mut[HAS_TAG], m_rel[HAS_TAG])
    # plain-loop reference of the jointly normalised message of tag 4 (one r1 edge pair 0->4, 1->4 and one r2 edge
    # 5->4), head 0, before the (sum) update: recompute alphas by hand
    H, d_k = 2, 4
    pri = mutual.rel_pri.detach()
    r_sub, r_has = mutual.relations.index(SUBTOPIC), mutual.relations.index(HAS_TAG)
    q = mutual.query["tag"](x["tag"]).view(-1, H, d_k)[4, 0]
    k_tag = torch.einsum("nhd,hde->nhe", mutual.key["tag"](x["tag"]).view(-1, H, d_k), mutual.rel_att[r_sub])
    k_vid = torch.einsum("nhd,hde->nhe", mutual.key["video"](x["video"]).view(-1, H, d_k), mutual.rel_att[r_has])
    v_tag = torch.einsum("nhd,hde->nhe", mutual.value["tag"](x["tag"]).view(-1, H, d_k), mutual.rel_msg[r_sub])
    v_vid = torch.einsum("nhd,hde->nhe", mutual.value["video"](x["video"]).view(-1, H, d_k), mutual.rel_msg[r_has])
    e = torch.stack([(q * k_tag[0, 0]).sum() * pri[r_sub, 0], (q * k_tag[1, 0]).sum() * pri[r_sub, 0],
                     (q * k_vid[5, 0]).sum() * pri[r_has, 0]]) / 2.0  # fmt: skip
    a = torch.softmax(e, 0)  # joint over both relations
    assert float(a.sum()) == pytest.approx(1.0) and float(a[:2].sum()) < 1.0
    conv = GGTConv()
    with torch.no_grad():
        ei_sub = edges[SUBTOPIC]
        qs = mutual.query["tag"](x["tag"]).view(-1, H, d_k)
        from radartag.models import mutual_attention

        alphas = mutual_attention([GGTConv.logits(qs, k_tag, pri[r_sub], ei_sub),
                                   GGTConv.logits(qs, k_vid, pri[r_has], edges[HAS_TAG])],
                                  [ei_sub[1], edges[HAS_TAG][1]], 5)  # fmt: skip
        msg_sub = conv(qs, k_tag, v_tag, pri[r_sub], ei_sub, alphas[0])
        msg_has = conv(qs, k_vid, v_vid, pri[r_has], edges[HAS_TAG], alphas[1])
    torch.testing.assert_close(msg_sub[4, :d_k], a[0] * v_tag[0, 0] + a[1] * v_tag[1, 0])
    torch.testing.assert_close(msg_has[4, :d_k], a[2] * v_vid[5, 0])
    # attention over all relations into a tag sums to 1 per destination and head (tags with any in-edge)
    sums = torch.zeros(5, H).index_add_(0, ei_sub[1], alphas[0]).index_add_(0, edges[HAS_TAG][1], alphas[1])
    torch.testing.assert_close(sums[[0, 3, 4]], torch.ones(3, H))


def test_common_unique_reducer_formula_and_adv_layers():
    torch.manual_seed(0)
    red = CommonUniqueAggregation(6, dropout=0.0).eval()
    x1, x2 = torch.randn(5, 6), torch.randn(5, 6)
    fused, logits = red(x1, x2)
    u1, u2, c1, c2 = red.unique1(x1), red.unique2(x2), red.common(x1), red.common(x2)
    torch.testing.assert_close(fused, red.fusion(0.5 * ((c1 + c2) / 2 + torch.maximum(u1, u2))))
    assert logits["unique"].shape == logits["common"].shape == (10,)
    cfg = RadarConfig(video_dim=8, tag_dim=8, num_tags=5, hidden_dim=8, num_heads=2, reducer="common_unique",
                      attention="mutual", updater="sum", adv_layers=1)  # fmt: skip
    out = Radar(cfg)(torch.randn(2, 8), torch.randn(5, 8), torch.arange(5), [({"video": 2, "tag": 5}, {})] * 2, 2)
    assert len(out.discriminator_logits) == 1  # one discriminator layer, as in the official ablation configs


def _is_layer_normed(t: torch.Tensor) -> bool:
    """Rows with mean 0 and variance 1 (a fresh LayerNorm: weight 1, bias 0)."""
    mean_ok = torch.allclose(t.mean(1), torch.zeros(len(t)), atol=1e-4)
    return mean_ok and torch.allclose(t.var(1, unbiased=False), torch.ones(len(t)), atol=1e-2)


def _repro_variants() -> dict:
    spec = importlib.util.spec_from_file_location("radartag_repro", Path(__file__).parents[1] / "repro.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


def _yaml_model_config(name: str) -> dict:
    raw = yaml.safe_load(open(resolve_config(name, "radartag")))["model"]["config"]
    keep = ("use_follow", "use_topic", "bidirectional_topic", "updater", "attention", "reducer", "combine_norm",
            "adv_layers", "video_emb_layer")  # fmt: skip
    return {k: raw[k] for k in keep}


# Official Table 3 configs (configs/recommendation/ourgnn/) as config keys, and where the official reducer applies a
# LayerNorm: (videos, tags); None = videos receive no relation and keep their previous state (no reducer at all).
# CommonUniqueReducer / CommonReducer always norm; MeanReducer only with use_norm=True (the wo_follow and
# wo_topic_follow configs); LMFReducer never; SelfAttentionReducer only with use_norm=True (never set).
OFFICIAL_NORM_ROWS = {
    "ourgnn_l2_kwai_v (main)": (dict(), (True, True)),
    "_wo_gated": (dict(updater="sum", adv_layers=1), (True, True)),
    "_bi": (dict(bidirectional_topic=True), (True, True)),
    "_common_only": (dict(reducer="common"), (True, True)),
    "_mean_reduce": (dict(reducer="mean"), (False, False)),
    "_lmf3": (dict(reducer="lmf"), (False, False)),
    "_selfatt_reduce": (dict(reducer="self_attention"), (False, False)),
    "wo_topic": (dict(use_topic=False, reducer="mean"), (False, False)),
    "wo_follow": (dict(use_follow=False, video_emb_layer=0, reducer="mean", combine_norm=True), (None, True)),
    "wo_topic_follow": (
        dict(use_follow=False, use_topic=False, video_emb_layer=0, reducer="mean", combine_norm=True),
        (None, True),
    ),  # fmt: skip
    "cosmetic_mutual_attention.yaml": (_yaml_model_config("cosmetic_mutual_attention"), (True, True)),
    "demo.yaml": (_yaml_model_config("demo"), (True, True)),
    "repro wo_follow": (_repro_variants()["wo_follow"], (None, True)),
    "repro wo_topic": (_repro_variants()["wo_topic"], (False, False)),
}


@pytest.mark.parametrize("row", OFFICIAL_NORM_ROWS)
def test_combine_norm_where_the_official_reducer_norms(row):
    kw, (video_norm, tag_norm) = OFFICIAL_NORM_ROWS[row]
    torch.manual_seed(0)
    n_video, n_tag, h = 6, 5, 8
    edges = {FOLLOWED_BY: torch.tensor([[0, 1, 2], [1, 2, 3]]), SUBTOPIC: torch.tensor([[0, 1], [3, 4]]),
             SUPERTOPIC: torch.tensor([[3, 4], [0, 1]]), HAS_TAG: torch.tensor([[0, 1, 2], [0, 1, 2]])}  # fmt: skip
    x = {"video": 3 * torch.randn(n_video, h) + 2, "tag": 3 * torch.randn(n_tag, h) + 2}  # far from normed
    layer = RadarLayer(RadarConfig(video_dim=h, tag_dim=h, num_tags=n_tag, hidden_dim=h, num_heads=2, **kw)).eval()
    with torch.no_grad():
        out, _ = layer(x, {"video": n_video, "tag": n_tag}, {r: edges[r] for r in layer.relations})
    if video_norm is None:
        assert torch.equal(out["video"], x["video"])  # no relation into videos: previous state, no norm
    else:
        assert _is_layer_normed(out["video"]) == video_norm
    assert _is_layer_normed(out["tag"]) == tag_norm
    assert (len(layer.norms) > 0) == (tag_norm or bool(video_norm))  # no unused LayerNorm parameters


def test_combine_norm_defaults_and_older_key():
    def cfg(**kw):
        return RadarConfig(video_dim=8, tag_dim=8, num_tags=5, hidden_dim=8, num_heads=2, **kw)

    expected = {"aan": True, "common_unique": True, "common": True, "mean": False, "lmf": False,
                "self_attention": False}  # fmt: skip
    assert {r: cfg(reducer=r).norm_combined for r in expected} == expected
    assert cfg(reducer="lmf", combine_norm=True).norm_combined and not cfg(combine_norm=False).norm_combined
    assert cfg(reducer="mean", layer_norm_mean_reducer=True).norm_combined  # older configs keep their meaning
    assert not cfg(reducer="lmf", layer_norm_mean_reducer=True).norm_combined  # only read for the mean reducer
    with pytest.raises(ValueError, match="combine_norm"):
        cfg(reducer="mean", combine_norm=False, layer_norm_mean_reducer=True)


def test_common_reducer_dropout_on_both_inputs():
    """Official CommonReducer: Dropout on x1 and x2 before the shared encoder C, then (C x1' + C x2') / 2."""
    torch.manual_seed(0)
    red = CommonReducer(6, dropout=0.5).train()
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    torch.manual_seed(1)
    out = red(x1, x2)
    torch.manual_seed(1)
    d1, d2 = F.dropout(x1, 0.5, True), F.dropout(x2, 0.5, True)
    assert not torch.equal(d1, x1)
    torch.testing.assert_close(out, 0.5 * (red.common(d1) + red.common(d2)))
    red.eval()
    torch.testing.assert_close(red(x1, x2), 0.5 * (red.common(x1) + red.common(x2)))  # no dropout at evaluation


def test_self_attention_reducer_hand_case():
    """Official SelfAttentionReducer: per head softmax over the 2 messages, residual, mean; Q/K/V linears only."""
    torch.manual_seed(0)
    h, H = 6, 2
    red = SelfAttentionReducer(h, H)
    assert {n for n, _ in red.named_parameters()} == {f"{p}.{w}" for p in ("query", "key", "value")
                                                      for w in ("weight", "bias")}  # fmt: skip
    x1, x2 = torch.randn(3, h), torch.randn(3, h)
    out = red(x1, x2)
    d = h // H
    for n in range(3):
        xs = [x1[n], x2[n]]
        rows = []
        for i in range(2):
            q = red.query(xs[i])
            heads = []
            for head in range(H):
                s = slice(head * d, (head + 1) * d)
                logits = torch.stack([(q[s] * red.key(xs[j])[s]).sum() / math.sqrt(d) for j in range(2)])
                a = torch.softmax(logits, 0)
                heads.append(a[0] * red.value(xs[0])[s] + a[1] * red.value(xs[1])[s])
            rows.append(xs[i] + torch.cat(heads))
        torch.testing.assert_close(out[n], (rows[0] + rows[1]) / 2)


def test_lmf_factors_drawn_per_input_like_two_official_parameters():
    """The official LMF reducer holds two (R, h+1, h) factor tensors, each xavier-normal initialised on its own
    (fan_in (h+1)·h, fan_out R·h). Both of ours must be exactly those two draws, in that order."""
    h, rank = 64, 3
    torch.manual_seed(3)
    lmf = LMFReducer(h, rank)
    torch.manual_seed(3)
    ref = [torch.nn.init.xavier_normal_(torch.empty(rank, h + 1, h)) for _ in range(2)]
    torch.testing.assert_close(lmf.factors.data[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(lmf.factors.data[1], ref[1], rtol=0, atol=0)
    std = math.sqrt(2.0 / ((h + 1) * h + rank * h))
    for k in range(2):
        assert abs(float(lmf.factors.data[k].std()) / std - 1) < 0.05


def _layer_by_hand(layer, x, num_dst, edges):
    """One RADAR layer written out per destination, head and relation with plain loops (spec §3.3, §3.4; the
    official message passer, gated updater and common/unique reducer composed in that order), dropout off."""
    heads, d_k = layer.num_heads, layer.d_k
    updated = {}
    for r, rel in enumerate(layer.relations):
        src, _, dst = rel
        state = x[dst][: num_dst[dst]]
        ei = edges[rel]
        msg = torch.zeros_like(state)
        for i in range(len(state)):
            nbrs = ei[0][ei[1] == i]
            for head in range(heads):
                cols = slice(head * d_k, (head + 1) * d_k)
                q = layer.query[dst](state[i])[cols]
                keys = layer.key[src](x[src][nbrs])[:, cols] @ layer.rel_att[r, head]
                vals = layer.value[src](x[src][nbrs])[:, cols] @ layer.rel_msg[r, head]
                weights = torch.softmax(layer.rel_pri[r, head] * (keys @ q) / math.sqrt(d_k), 0)
                msg[i, cols] = weights @ vals  # no neighbour: an empty sum, zero
        upd = layer.updaters[dst]
        z = torch.sigmoid(upd.w_z(msg) + upd.u_z(state))
        updated[rel] = z * F.gelu(upd.w_s(state + msg)) + (1 - z) * state
    video = layer.norms["video"](updated[FOLLOWED_BY])
    visual = updated[HAS_TAG]
    linguistic = 0.5 * (updated[SUBTOPIC] + updated[SUPERTOPIC])
    aan = layer.reducer
    u1, u2 = aan.unique1(visual), aan.unique2(linguistic)
    c1, c2 = aan.common(visual), aan.common(linguistic)
    fused = 0.5 * (torch.tanh(aan.attend1(c1)) * c1 + torch.tanh(aan.attend2(c2)) * c2 + torch.maximum(u1, u2))
    w, b = aan.disc_weight[0], aan.disc_bias
    logits = {"unique": torch.cat([u1, u2]) @ w + b, "common": torch.cat([c1, c2]) @ w + b}
    return {"video": video, "tag": layer.norms["tag"](fused)}, logits


def test_layer_and_scores_match_the_equations_written_out():
    torch.manual_seed(0)
    cfg = RadarConfig(video_dim=6, tag_dim=6, num_tags=5, hidden_dim=8, num_heads=2, dropout=0.0,
                      bidirectional_topic=True)  # fmt: skip
    model = Radar(cfg)
    with torch.no_grad():  # the official init leaves W_att, W_msg tiny and μ = 1: make every term visible
        for layer in model.layers:
            layer.rel_att.normal_()
            layer.rel_msg.normal_()
            layer.rel_pri.uniform_(0.5, 2.0)
            for norm in layer.norms.values():
                norm.weight.normal_()
                norm.bias.normal_()
    layer = model.layers[1]
    x = {"video": torch.randn(7, 8), "tag": torch.randn(5, 8)}
    edges = {
        FOLLOWED_BY: torch.tensor([[3, 4, 5, 6, 0], [0, 0, 0, 1, 1]]),  # video 2 has no followee
        SUBTOPIC: torch.tensor([[0, 1, 2], [3, 3, 4]]),
        SUPERTOPIC: torch.tensor([[3, 3, 4], [0, 1, 2]]),
        HAS_TAG: torch.tensor([[0, 5, 6, 1], [0, 0, 2, 4]]),  # tags 1 and 3 have no video
    }
    num_dst = {"video": 3, "tag": 5}
    out, logits = layer(x, num_dst, edges)
    ref, ref_logits = _layer_by_hand(layer, x, num_dst, edges)
    for key in ("video", "tag"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5)
    for key in ("unique", "common"):
        torch.testing.assert_close(logits[key], ref_logits[key], rtol=1e-5, atol=1e-5)

    # whole model, evaluation mode: layer 0 embedding by hand, both layers, then <normalize(h_v), h_t>
    model.eval()
    video_x, tag_x = torch.randn(9, 6), torch.randn(5, 6)
    blocks = [({"video": 7, "tag": 5}, {**edges, FOLLOWED_BY: torch.tensor([[7, 8, 2], [0, 0, 6]])}),
              (num_dst, edges)]  # fmt: skip
    emb = model.embedding
    h = {"video": F.gelu(emb.video_proj(emb.video_norm(video_x))),
         "tag": F.gelu(emb.tag_proj(emb.tag_norm(tag_x + emb.tag_embedding.weight)))}  # fmt: skip
    for lay, (nd, ed) in zip(model.layers, blocks, strict=True):
        h, _ = lay(h, nd, ed)
    scores = model(video_x, tag_x, torch.arange(5), blocks, 3).scores
    torch.testing.assert_close(scores, F.normalize(h["video"], dim=-1) @ h["tag"].T, rtol=1e-5, atol=1e-5)


def test_mean_reducer_weighs_every_relation_into_tags_alike_in_the_bidirectional_variant():
    torch.manual_seed(0)
    cfg = RadarConfig(video_dim=6, tag_dim=6, num_tags=5, hidden_dim=8, num_heads=2, dropout=0.0,
                      bidirectional_topic=True, reducer="mean")  # fmt: skip
    layer = Radar(cfg).layers[0]
    x = {"video": torch.randn(7, 8), "tag": torch.randn(5, 8)}
    edges = {
        FOLLOWED_BY: torch.tensor([[3, 4], [0, 1]]),
        SUBTOPIC: torch.tensor([[0, 1, 2], [3, 3, 4]]),
        SUPERTOPIC: torch.tensor([[3, 3, 4], [0, 1, 2]]),
        HAS_TAG: torch.tensor([[0, 5, 6, 1], [0, 0, 2, 4]]),
    }
    num_dst = {"video": 3, "tag": 5}
    m = layer.relation_messages(x, num_dst, edges)
    out, _ = layer(x, num_dst, edges)
    thirds = (m[HAS_TAG] + m[SUBTOPIC] + m[SUPERTOPIC]) / 3
    torch.testing.assert_close(out["tag"], thirds, rtol=1e-5, atol=1e-6)
    # one topic direction: the plain mean of the two messages, as before
    layer = Radar(RadarConfig(video_dim=6, tag_dim=6, num_tags=5, hidden_dim=8, num_heads=2, dropout=0.0,
                              reducer="mean")).layers[0]  # fmt: skip
    edges.pop(SUPERTOPIC)
    m = layer.relation_messages(x, num_dst, edges)
    out, _ = layer(x, num_dst, edges)
    torch.testing.assert_close(out["tag"], 0.5 * (m[HAS_TAG] + m[SUBTOPIC]))
