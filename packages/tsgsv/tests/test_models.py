import pytest
import torch
import torch.nn.functional as F

from tsgsv.models import (
    CQACompressor,
    DecoderStack,
    LanguageGuidedCompressor,
    SCDMCompressor,
    SentenceEncoder,
    SpanPredictor,
    StreamingTSGV,
    TSGSVConfig,
)


def _cfg(**kw):
    base = dict(
        video_dim=8,
        text_dim=6,
        hidden_dim=16,
        ffn_dim=32,
        num_heads=2,
        dropout=0.0,
        short_memory=4,
        long_memory=8,
        future_memory=8,
        gru_layers=1,
        compressor_tokens=[3, 2],
        num_decoder_layers=2,
    )
    base.update(kw)
    return TSGSVConfig(**base)


def _inputs(cfg, B=3, future=True):
    g = torch.Generator().manual_seed(0)
    x = {
        "short": torch.randn(B, cfg.short_memory, cfg.video_dim, generator=g),
        "short_mask": torch.zeros(B, cfg.short_memory, dtype=torch.bool),
        "long": torch.randn(B, cfg.long_memory, cfg.video_dim, generator=g),
        "long_mask": torch.zeros(B, cfg.long_memory, dtype=torch.bool),
        "sentence": torch.randn(B, cfg.max_text_len, cfg.text_dim, generator=g),
        "sentence_length": torch.tensor([5, 20, 1][:B]),
    }
    if future:
        x["future"] = torch.randn(B, cfg.future_memory, cfg.video_dim, generator=g)
        x["future_mask"] = torch.zeros(B, cfg.future_memory, dtype=torch.bool)
    return x


def test_compressor_maps_and_query_dependence():
    torch.manual_seed(0)
    comp = LanguageGuidedCompressor(16, 4, 0.0, 0.0).eval()
    x, q1, q2 = torch.randn(2, 10, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert comp(x, q1).shape == (2, 4, 16)
    s1, s2 = comp.selection(x, q1), comp.selection(x, q2)
    torch.testing.assert_close(s1["a_v"].sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(s1["a_q"].sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(s1["a_v"], s2["a_v"])  # query-agnostic selection
    assert not torch.allclose(s1["a_q"], s2["a_q"])  # language-guided selection follows the query
    # with g_v forced to 0 the output is LN(g_q · A_q X): it depends on the query
    with torch.no_grad():
        comp.visual_gate[3].weight.zero_()
        comp.visual_gate[3].bias.zero_()  # tanh(0) = 0, GELU(0) = 0
    assert float(comp.selection(x, q1)["g_v"].abs().max()) == 0.0
    z1, z2 = comp(x, q1), comp(x, q2)
    assert not torch.allclose(z1, z2)
    s = comp.selection(x, q1)
    ref = F.layer_norm(s["g_q"] * (s["a_q"] @ x), (16,))
    torch.testing.assert_close(z1, ref)


def test_scdm_compressor_by_hand():
    torch.manual_seed(0)
    comp = SCDMCompressor(8, 3, 0.0).eval()
    x, q1, q2 = torch.randn(2, 10, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    z1 = comp(x, q1)
    assert z1.shape == (2, 3, 8)
    assert not torch.allclose(z1, comp(x, q2))  # the modulation follows the query
    f = comp.visual_mlp(x).transpose(1, 2).softmax(-1) @ x  # TokenLearner selection (B, n, h)
    m = comp.modulation(f, q1)
    torch.testing.assert_close(m["rho"].sum(-1), torch.ones(2, 3))  # attention over the query tokens sums to 1
    # plain-loop reference of one token's attention and modulation
    b, i = 1, 2
    scores = torch.stack([comp.w_att(torch.tanh(comp.w_f(f[b, i]) + comp.w_q(q1[b, l])))[0] for l in range(5)])
    rho = scores.softmax(0)
    ctx = (rho[:, None] * q1[b]).sum(0)
    gamma, beta = torch.tanh(comp.w_gamma[1](ctx)), torch.tanh(comp.w_beta[1](ctx))
    torch.testing.assert_close(z1[b, i], F.layer_norm(f[b, i] + gamma * f[b, i] + beta, (8,)))
    # zero γ/β projections: no modulation, Z = LN(F), independent of the query
    with torch.no_grad():
        for lin in (comp.w_gamma[1], comp.w_beta[1]):
            lin.weight.zero_()
            lin.bias.zero_()
    torch.testing.assert_close(comp(x, q1), F.layer_norm(f, (8,)))
    torch.testing.assert_close(comp(x, q1), comp(x, q2))


def test_cqa_compressor_by_hand():
    torch.manual_seed(0)
    comp = CQACompressor(8, 3, 0.0).eval()
    x, q = torch.randn(2, 10, 8), torch.randn(2, 5, 8)
    z = comp(x, q)
    assert z.shape == (2, 3, 8)
    f = comp.select_norm(comp.visual_mlp(x).transpose(1, 2).softmax(-1) @ x)  # (B, n, h)
    att = comp.attention(f, q)
    torch.testing.assert_close(att["s_r"].sum(2), torch.ones(2, 3))  # row softmax over query tokens
    torch.testing.assert_close(att["s_c"].sum(1), torch.ones(2, 5))  # column softmax over selected tokens
    # plain loops: S[i,l] = <F_i, Q_l>; A_i = Σ_l S_r[i,l] Q_l; B_i = Σ_l Σ_j S_r[i,l] S_c[j,l] F_j
    for b in range(2):
        sim = torch.tensor([[float(f[b, i] @ q[b, l]) for l in range(5)] for i in range(3)])
        s_r, s_c = sim.softmax(1), sim.softmax(0)
        for i in range(3):
            a_i = sum(s_r[i, l] * q[b, l] for l in range(5))
            b_i = sum(s_r[i, l] * s_c[j, l] * f[b, j] for l in range(5) for j in range(3))
            torch.testing.assert_close(att["a"][b, i], a_i, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(att["b"][b, i], b_i, atol=1e-5, rtol=1e-4)
    w1, w2, w3, w4 = comp.proj
    ref = F.layer_norm(w1(f) + w2(att["a"]) + w3(f * att["a"]) + w4(f * att["b"]), (8,))
    torch.testing.assert_close(z, ref)
    # a query identical for every token gives a uniform row softmax: A = that query token
    same = q[:, :1].expand(-1, 5, -1)
    torch.testing.assert_close(comp.attention(f, same)["a"], q[:, :1].expand(-1, 3, -1))


def test_decoder_is_causal():
    torch.manual_seed(0)
    dec = DecoderStack(_cfg(), 2).eval()
    x, mem = torch.randn(1, 6, 16), torch.randn(1, 3, 16)
    y = dec(x, mem)
    x2 = x.clone()
    x2[0, 3] += 1.0
    y2 = dec(x2, mem)
    changed = (y - y2).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [False, False, False, True, True, True]


def test_model_causal_in_short_memory_and_twin_anticausal():
    cfg = _cfg()
    torch.manual_seed(0)
    model = StreamingTSGV(cfg).eval()
    x = _inputs(cfg, future=False)
    out = model(**x)
    x2 = {k: v.clone() for k, v in x.items()}
    x2["short"][:, 1] += 1.0
    out2 = model(**x2)
    changed = (out.logits - out2.logits).abs().amax((0, 2)) > 1e-6
    assert changed.tolist() == [False, True, True, True]
    # backward twin decoder: causal on the reversed sequence = each step attends to itself and later steps
    s, mem = torch.randn(1, 4, 16), torch.randn(1, 2, 16)
    y = model.twin_backward(s.flip(1), mem).flip(1)
    s2 = s.clone()
    s2[0, 2] += 1.0
    y2 = model.twin_backward(s2.flip(1), mem).flip(1)
    assert ((y - y2).abs().amax(-1)[0] > 1e-6).tolist() == [True, True, True, False]


def test_twin_runs_only_with_future():
    cfg = _cfg()
    model = StreamingTSGV(cfg)
    out = model(**_inputs(cfg))
    assert out.logits.shape == (3, 4, 3) and out.twin_logits.shape == (3, 4, 3)
    assert out.twin_head_features.shape == (3, 4, 3, 16)
    model.eval()
    out = model(**_inputs(cfg, future=False))  # eval needs no future inputs
    assert out.twin_logits is None


@pytest.mark.parametrize(
    "kw",
    [dict(compressor="token_learner"), dict(compressor="lstr"), dict(compressor="none"), dict(compressor="scdm"),
     dict(compressor="cqa"),
     dict(future_usage="anticipation"), dict(future_usage="none"), dict(use_long_memory=False),
     dict(num_decoder_layers=1, compressor_tokens=[4]), dict(pincer_memory="future"),
     dict(linear_before=False, video_dim=16, text_dim=16)],
)  # fmt: skip
def test_ablation_variants_run(kw):
    cfg = _cfg(**kw)
    out = StreamingTSGV(cfg)(**_inputs(cfg))
    assert out.logits.shape == (3, 4, 3) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()


def test_predictor_cosine_by_hand():
    head = SpanPredictor(4, temperature=16.0)
    frames, query = torch.randn(1, 1, 4), torch.randn(1, 4)
    logits, feats = head(frames, query)
    pv = head.frame_proj(frames[0, 0]).view(3, 4)
    ps = head.query_proj(query[0]).view(3, 4)
    expect = torch.stack([16 * torch.dot(pv[c], ps[c]) / (pv[c].norm() * ps[c].norm()) for c in range(3)])
    torch.testing.assert_close(logits[0, 0], expect)
    big = head(torch.randn(5, 7, 4) * 100, torch.randn(5, 4))[0]
    assert big.abs().max() <= 16.0 + 1e-4


@pytest.mark.parametrize("final_norm", [True, False])
def test_sentence_padding_is_ignored(final_norm):
    cfg = _cfg(sentence_final_norm=final_norm)
    enc = SentenceEncoder(cfg).eval()
    if final_norm:  # a non-trivial affine map, so the test sees where the norm sits
        torch.nn.init.normal_(enc.final_norm.weight)
        torch.nn.init.normal_(enc.final_norm.bias)
    tok = torch.randn(2, 20, 6)
    lengths = torch.tensor([5, 9])
    q_tokens, q = enc(tok, lengths)
    tok2 = tok.clone()
    tok2[0, 5:] = 7.0
    tok2[1, 9:] = -3.0
    q_tokens2, q2 = enc(tok2, lengths)
    torch.testing.assert_close(q_tokens, q_tokens2)
    torch.testing.assert_close(q, q2)
    torch.testing.assert_close(q, q_tokens.mean(1))  # mean over all L positions, padding included
    if final_norm:  # official norm_after=True: LayerNorm of the zero-padded GRU output, so padding = the bias
        torch.testing.assert_close(q_tokens[0, 5:], enc.final_norm.bias.expand(15, -1))
        plain = SentenceEncoder(_cfg(sentence_final_norm=False)).eval()
        plain.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("final_norm")})
        raw, _ = plain(tok, lengths)
        expect = F.layer_norm(raw, (16,), enc.final_norm.weight, enc.final_norm.bias)
        torch.testing.assert_close(q_tokens, expect)
    else:
        assert q_tokens[0, 5:].abs().max() == 0  # outputs padded back with zeros


def test_config_errors():
    with pytest.raises(ValueError, match="num_heads"):
        TSGSVConfig(hidden_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="linear_before"):
        TSGSVConfig(linear_before=False, video_dim=500, hidden_dim=512, text_dim=512)
    with pytest.raises(ValueError, match="video_dim"):
        cfg = _cfg()
        x = _inputs(cfg)
        x["short"] = torch.randn(3, 4, 5)
        StreamingTSGV(cfg)(**x)


def test_short_memory_only_keeps_no_unused_parameters():
    """Ablation 'short memory only' without a twin: every kept parameter gets a gradient (DDP refuses unused ones),
    and the other modules start from the same weights as when the compressors are kept (here: for a twin branch)."""
    kw = dict(video_dim=6, text_dim=5, hidden_dim=16, ffn_dim=16, num_heads=2, short_memory=4, long_memory=8,
              future_memory=8, compressor_tokens=[4], use_long_memory=False)  # fmt: skip
    torch.manual_seed(0)
    short_only = StreamingTSGV(TSGSVConfig(**kw, future_usage="none"))
    torch.manual_seed(0)
    with_long = StreamingTSGV(TSGSVConfig(**kw, future_usage="twin"))
    assert len(short_only.compressors) == 0 and len(with_long.compressors) == 1
    B = 2
    out = short_only(torch.randn(B, 4, 6), torch.zeros(B, 4, dtype=torch.bool), torch.randn(B, 8, 6),
                     torch.zeros(B, 8, dtype=torch.bool), torch.randn(B, 20, 5), torch.tensor([3, 5]))  # fmt: skip
    out.logits.sum().backward()
    assert [n for n, p in short_only.named_parameters() if p.grad is None] == []
    torch.testing.assert_close(short_only.decoder.state_dict(), with_long.decoder.state_dict())
    torch.testing.assert_close(short_only.head.state_dict(), with_long.head.state_dict())


def test_forward_and_twin_follow_the_official_composition():
    """Rebuild the main and twin logits step by step (spec §3.3–3.7, as the official TPNInteractor wires them) and
    compare with the model: PE from position 0 added before compressing, the same compressors for the long memory
    and the time-reversed future, PE re-added to the decoder output S (and to its reversal) in the twin decoders,
    X = S_f + flip(S_b), pincer cross-attention to both compressed memories, both heads on the pooled query."""
    cfg = _cfg()
    torch.manual_seed(1)
    model = StreamingTSGV(cfg).eval()
    x = _inputs(cfg)
    x["short_mask"][0, :2] = True  # the first window starts at the video start: padded rows
    x["long_mask"][0] = True
    x["future_mask"][1, 5:] = True  # the second window's future runs past the video end
    out = model(**x)

    h, M_s = cfg.hidden_dim, cfg.short_memory
    pos = torch.arange(cfg.max_positions, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, h, 2, dtype=torch.float64) / h)
    pe = torch.stack([torch.sin(pos * freq), torch.cos(pos * freq)], -1).flatten(1).float()  # sin even, cos odd

    def project(rows, invalid):
        return model.video_projection.project(rows) * (~invalid)[..., None].float()

    def compress(memory):
        z = memory + pe[: memory.shape[1]]
        for stage in model.compressors:
            z = stage(z, q_tokens)
        return z

    def decode(layers, seq, memory):
        causal = torch.ones(seq.shape[1], seq.shape[1], dtype=torch.bool).triu(1)
        for layer in layers:
            seq = layer(seq, memory, tgt_mask=causal)
        return seq

    q_tokens, q = model.sentence_encoder(x["sentence"], x["sentence_length"])
    z_long = compress(project(x["long"], x["long_mask"]))
    s = decode(model.decoder.layers, project(x["short"], x["short_mask"]) + pe[:M_s], z_long)
    torch.testing.assert_close(out.logits, model.head(s, q)[0])

    f_fut = compress(project(x["future"], x["future_mask"]).flip(1))
    s_f = decode(model.twin_forward.layers, s + pe[:M_s], z_long)
    s_b = decode(model.twin_backward.layers, s.flip(1) + pe[:M_s], f_fut)
    mix = s_f + s_b.flip(1)
    p = model.pincer
    mix = p.norm1(mix + p.self_attn(mix, mix, mix)[0])
    memory = torch.cat([z_long, f_fut], 1)
    mix = p.norm2(mix + p.cross_attn(mix, memory, memory)[0])
    torch.testing.assert_close(out.twin_logits, model.twin_head(mix, q)[0])
