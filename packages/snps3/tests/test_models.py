import pytest
import torch

from snps3.models import SNPS3Config, SNPS3Model, StrideOnePatchEmbed3d, VideoSwinEncoder, convert_video_swin_checkpoint


def cfg(**kw):
    base = dict(
        bert=None,
        vocab_size=209,
        hidden_size=16,
        num_layers=4,
        num_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        visual_encoder="tiny_cnn",
        tiny_cnn_channels=8,
    )
    base.update(kw)
    return SNPS3Config(**base)


def test_snp_shares_the_text_encoder_and_p3e_does_not():
    snp = SNPS3Model(cfg())
    assert snp.cross_bert is snp.bert
    assert snp.cross_pooler.dense.weight is not snp.bert.pooler.dense.weight
    torch.testing.assert_close(snp.cross_pooler.dense.weight, snp.bert.pooler.dense.weight)  # initialised as a copy
    p3e = SNPS3Model(cfg(arch="p3e", p3e_cross_layers=3))
    assert p3e.cross_bert is not p3e.bert
    assert len(p3e.cross_bert.encoder.layer) == 3
    torch.testing.assert_close(
        p3e.cross_bert.encoder.layer[0].output.dense.weight, p3e.bert.encoder.layer[0].output.dense.weight
    )
    n_snp = sum(p.numel() for p in snp.parameters())
    n_p3e = sum(p.numel() for p in p3e.parameters())
    emb = sum(p.numel() for p in snp.bert.embeddings.parameters())
    layer = sum(p.numel() for p in snp.bert.encoder.layer[0].parameters())
    assert n_p3e - n_snp == emb + 3 * layer  # Table II: one embedding block + the P3E cross layers


def test_cross_input_assembly():
    torch.manual_seed(0)
    m = SNPS3Model(cfg(num_layers=2)).eval()
    b, length, t, d = 2, 7, 3, 16
    ids = torch.randint(104, 209, (b, length))
    ids[:, 0], ids[:, 5], ids[:, 6] = 101, 102, 0
    attn = (ids != 0).long()
    visual = torch.randn(b, t, d)
    out = m.cross(ids, attn, visual)
    assert out.text_hidden.shape == (b, length, d) and out.visual_hidden.shape == (b, t, d)
    # reference: the same sequence built by hand through the BERT embedding tables
    e = m.bert.embeddings
    text = e.LayerNorm(
        e.word_embeddings(ids) + e.position_embeddings(torch.arange(length)) + e.token_type_embeddings.weight[0]
    )
    vis_in = torch.cat([visual, e.word_embeddings.weight[102].expand(b, 1, d)], 1)
    vis = e.LayerNorm(vis_in + e.position_embeddings(torch.arange(t + 1)) + e.token_type_embeddings.weight[1])
    mask = torch.cat([attn, torch.ones(b, t + 1, dtype=torch.long)], 1)
    h = torch.cat([text, vis], 1)
    ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    h = m.bert.encoder(h, attention_mask=ext).last_hidden_state
    torch.testing.assert_close(out.text_hidden, h[:, :length])
    torch.testing.assert_close(out.visual_hidden, h[:, length : length + t])  # trailing visual [SEP] dropped
    torch.testing.assert_close(out.pooled, m.cross_pooler(h))
    with torch.no_grad():
        m.cross_pooler.dense.weight.add_(1.0)
    assert not torch.allclose(m.cross(ids, attn, visual).pooled, out.pooled)


def test_heads_and_shapes():
    m = SNPS3Model(cfg(num_layers=2, num_answers=7)).eval()
    frames = torch.randn(2, 3, 3, 64, 64)
    vis = m.encode_visual(frames)
    assert vis.shape == (2, 3, 16)
    v = m.clip_embed(vis)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, 3))
    ids = torch.tensor([[101, 150, 151, 102, 0], [101, 160, 102, 0, 0]])
    text = m.encode_text(ids, (ids != 0).long(), output_attentions=True)
    assert len(text.attentions) == 2 and text.attentions[0].shape == (2, 2, 5, 5)
    assert m.mlm_logits(text.hidden, "text").shape == (2, 5, 209)
    cross = m.cross(ids, (ids != 0).long(), vis)
    assert m.sim_score(cross.pooled).shape == (2,) and m.qa_logits(cross.pooled).shape == (2, 7)
    with pytest.raises(ValueError, match="B, T, 3, H, W"):
        m.encode_visual(torch.randn(2, 3, 64, 64))


def test_padding_mask_excludes_padded_positions():
    m = SNPS3Model(cfg(num_layers=1)).eval()
    frames = torch.randn(1, 2, 3, 64, 128)
    mask = torch.zeros(1, 64, 128, dtype=torch.bool)
    mask[:, :, 64:] = True
    full = m.encode_visual(frames[..., :64], None)
    torch.testing.assert_close(m.encode_visual(frames, mask), full, atol=1e-5, rtol=1e-5)


def tiny_video_swin() -> VideoSwinEncoder:
    """Video Swin with embed 8, one block of one head per stage, window (2, 7, 7), projected to 16."""
    swin = dict(swin_embed_dim=8, swin_depths=[1, 1, 1, 1], swin_heads=[1, 1, 1, 1], swin_window=[2, 7, 7])
    return VideoSwinEncoder(cfg(visual_encoder="video_swin", **swin), 16)


def test_video_swin_patch_embedding_keeps_time_steps():
    pe = StrideOnePatchEmbed3d([2, 4, 4], 3, 8, torch.nn.LayerNorm)
    assert pe(torch.randn(1, 3, 5, 32, 32)).shape == (1, 5, 8, 8, 8)
    enc = tiny_video_swin()
    assert enc(torch.randn(2, 3, 3, 64, 64)).shape == (2, 3, 16)


def test_video_swin_checkpoint_key_mapping():
    state = {
        "module.patch_embed.proj.weight": 1,
        "layers.1.blocks.0.mlp.fc1.weight": 2,
        "layers.2.downsample.reduction.weight": 3,
        "norm.bias": 4,
        "layers.0.blocks.1.attn.qkv.weight": 5,
    }
    out = convert_video_swin_checkpoint(state)
    assert out == {
        "patch_embed.proj.weight": 1,
        "features.2.0.mlp.0.weight": 2,
        "features.5.reduction.weight": 3,
        "norm.bias": 4,
        "features.0.1.attn.qkv.weight": 5,
    }
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    keys = set(SwinTransformer3d([2, 4, 4], 8, [1, 1, 1, 1], [1, 1, 1, 1], [2, 7, 7]).state_dict())
    assert {"features.2.0.mlp.0.weight", "features.5.reduction.weight", "features.0.0.attn.qkv.weight"} <= keys


@pytest.mark.parametrize("size", [(4, 14, 14), (2, 7, 14)])  # the whole window, and a clip smaller than it
def test_video_swin_fixed_order_bias_equals_torchvision(size):
    # same outputs and gradients as torchvision's attention with the same weights, and the same state-dict keys
    from mmzoo.testing import repeated_index_reads
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    from snps3.swin_attention import FixedOrderWindowAttention3d

    torch.manual_seed(0)
    args = dict(dim=8, window_size=[4, 7, 7], shift_size=[2, 3, 3], num_heads=2)
    ref, ours = ShiftedWindowAttention3d(**args), FixedOrderWindowAttention3d(**args)
    with torch.no_grad():
        ref.relative_position_bias_table.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, *size, 8)
    out_ref = ref(x)
    with repeated_index_reads() as repeated:
        out = ours(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert repeated == []
    (out_ref * torch.linspace(-1, 1, out_ref.numel()).view_as(out_ref)).sum().backward()
    torch.testing.assert_close(out, out_ref)
    g, g_ref = ours.relative_position_bias_table.grad, ref.relative_position_bias_table.grad
    assert g_ref.abs().sum() > 0
    torch.testing.assert_close(g, g_ref)
    with repeated_index_reads() as repeated:  # torchvision's own lookup is what the replacement avoids
        ref(x).sum().backward()
    assert any("swin_transformer" in place for place in repeated)
    enc = tiny_video_swin()
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    tv = SwinTransformer3d([2, 4, 4], 8, [1, 1, 1, 1], [1, 1, 1, 1], [2, 7, 7], num_classes=1)
    assert set(enc.swin.features.state_dict()) == set(tv.features.state_dict())


def test_missing_weights_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.config.visual_weights"):
        SNPS3Model(cfg(visual_encoder="resnet50", visual_weights=str(tmp_path / "r50.pth")))
    with pytest.raises(FileNotFoundError, match="model.config.bert"):
        SNPS3Model(cfg(bert=str(tmp_path / "no_bert_here")))


def test_weight_files_cut_short_name_the_key_and_file(tmp_path):
    from snps3.module import SNPS3Module

    cut = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:600])  # a download or copy that stopped
    with pytest.raises(ValueError, match=r"model\.init_checkpoint '.*cut\.pth' cannot be read as a torch file"):
        SNPS3Module(config=cfg(), task="retrieval", init_checkpoint=str(cut))
    swin = dict(swin_embed_dim=8, swin_depths=[1, 1, 1, 1], swin_heads=[1, 1, 1, 1], swin_window=[2, 7, 7])
    for encoder, extra in (("video_swin", swin), ("resnet50", {}), ("pvt_v2_b2", {})):
        with pytest.raises(ValueError, match=r"model\.config\.visual_weights '.*cut\.pth' cannot be read"):
            SNPS3Model(cfg(visual_encoder=encoder, visual_weights=str(cut), **extra))


def test_config_validation():
    with pytest.raises(ValueError, match="num_heads"):
        cfg(num_heads=3)


def _to_pvt_release_names(key: str) -> str:
    """timm pvt_v2 key -> the PVT release naming (patch_embed1, block1.0, norm1, dwconv.dwconv)."""
    import re

    key = key.replace("patch_embed.", "patch_embed1.")
    for i in (1, 2, 3):
        key = key.replace(f"stages.{i}.downsample.", f"patch_embed{i + 1}.")
    key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}", key)
    key = re.sub(r"^stages\.(\d+)\.norm", lambda m: f"norm{int(m.group(1)) + 1}", key)
    return key.replace(".dwconv.", ".dwconv.dwconv.")


def test_pvt_release_checkpoint_loads_every_tensor(tmp_path, caplog):
    timm = pytest.importorskip("timm")
    from snps3.models import PVTv2Encoder, is_pvt_release_format

    src = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=0, global_pool="")
    torch.manual_seed(0)
    ref = {k: v + 1.0 if v.is_floating_point() else v for k, v in src.state_dict().items()}  # perturbed weights
    release = {_to_pvt_release_names(k): v for k, v in ref.items()}
    release["head.weight"], release["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)  # classifier
    assert is_pvt_release_format(release) and not is_pvt_release_format(ref)
    assert not set(release) & set(ref) - {"head.weight"}  # no name in common: strict=False alone loads nothing
    torch.save(release, tmp_path / "pvt_v2_b0.pth")
    with caplog.at_level("WARNING"):
        enc = PVTv2Encoder(16, str(tmp_path / "pvt_v2_b0.pth"), variant="pvt_v2_b0")
    got = enc.body.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert "missing" not in caplog.text  # only the classifier is left over, and that is expected
    assert enc(torch.zeros(1, 1, 3, 64, 64)).shape == (1, 1, 16)


def test_wrong_weight_files_raise_naming_key_and_file(tmp_path, caplog):
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"module.model.foo.weight": torch.zeros(3)}}, wrong)
    from snps3.module import SNPS3Module

    with pytest.raises(ValueError, match=r"model\.init_checkpoint=.*wrong\.ckpt"):
        SNPS3Module(config=cfg(), task="retrieval", init_checkpoint=str(wrong))
    with pytest.raises(ValueError, match=r"model\.config\.visual_weights=.*wrong\.ckpt"):
        SNPS3Model(
            cfg(
                visual_encoder="video_swin",
                visual_weights=str(wrong),
                swin_embed_dim=8,
                swin_depths=[1, 1, 1, 1],
                swin_heads=[1, 1, 1, 1],
                swin_window=[2, 7, 7],
            )
        )
    # a partial checkpoint loads but warns about the tensors it lacks; a missing QA head is expected (info)
    src = SNPS3Module(config=cfg(), task="retrieval")
    state = {f"model.{k}": v for k, v in src.model.state_dict().items() if not k.startswith("sim_head.")}
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with caplog.at_level("WARNING"):
        m = SNPS3Module(config=cfg(num_answers=7), task="qa", init_checkpoint=str(tmp_path / "partial.ckpt"))
    assert "sim_head.1.weight" in caplog.text and "qa_head" not in caplog.text
    assert torch.equal(m.model.bert.embeddings.word_embeddings.weight, src.model.bert.embeddings.word_embeddings.weight)


def test_a_pretrained_bert_trains_with_its_dropout(tmp_path):
    """from_pretrained hands BERT over in eval mode, and Lightning keeps submodule modes when fit starts: the text
    encoder of every real config (bert-base-uncased) trained without dropout."""
    from transformers import BertConfig, BertModel

    bert = BertConfig(vocab_size=209, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(bert, add_pooling_layer=True).save_pretrained(tmp_path / "bert")
    model = SNPS3Model(cfg(bert=str(tmp_path / "bert"), num_layers=2))
    assert [name for name, m in model.named_modules() if not m.training] == []
    assert model.bert.config.hidden_dropout_prob == 0.1
