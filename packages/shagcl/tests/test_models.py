import math

import pytest
import torch
from shagcl_testlib import tiny_config

from shagcl.models import (
    SHAGCL,
    FrequencyBias,
    RectFeatures,
    SHAEncoder,
    UnionFeatures,
    encode_box_geometry,
    frequency_bias_init,
    later_nms_relabel,
)


def _toy_batch() -> dict:
    """Two images (3 + 2 objects, 16-d features, 5 classes) and four candidate pairs."""
    return {
        "obj_feats": torch.randn(5, 16),
        "boxes": torch.tensor([[0.0, 0, 5, 5], [3, 3, 9, 9], [1, 1, 4, 8], [0, 0, 5, 5], [2, 2, 7, 7]]),
        "obj_image_sizes": torch.full((5, 2), 20.0),
        "num_objs": [3, 2],
        "labels": torch.tensor([1, 2, 3, 4, 1]),
        "det_logits": torch.randn(5, 5),
        "pair_idx": torch.tensor([[0, 1], [1, 2], [2, 0], [3, 4]]),
        "union_feats": torch.randn(4, 16),
        "pair_image_sizes": torch.full((4, 2), 20.0),
    }


def test_box_geometry_known_box():
    geo = encode_box_geometry(torch.tensor([[0.0, 0.0, 9.0, 19.0]]), torch.tensor([[100.0, 50.0]]))
    torch.testing.assert_close(geo[0], torch.tensor([0.1, 0.4, 0.05, 0.2, 0.0, 0.0, 0.09, 0.38, 0.04]))


def test_sha_padding_and_permutation():
    torch.manual_seed(0)
    enc = SHAEncoder(2, 16, 2, 8, 32, 0.1).eval()
    v, t = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    both = enc(v, t, pad)
    alone = enc(v[1:, :3], t[1:, :3], torch.zeros(1, 3, dtype=torch.bool))
    torch.testing.assert_close(both[1, :3], alone[0], atol=1e-5, rtol=1e-5)  # padding does not leak
    assert (both[1, 3:] == 0).all()
    perm = torch.tensor([2, 0, 4, 1, 3])
    out_perm = enc(v[:1, perm], t[:1, perm], pad[:1])
    torch.testing.assert_close(out_perm[0], both[0, perm], atol=1e-5, rtol=1e-5)  # permutation equivariant
    # the output is V_L + T_L of the last layer
    vv, tt = v, t
    for layer in enc.layers:
        vv, tt = layer(vv, tt, pad)
    torch.testing.assert_close(both, vv + tt)


def test_frequency_bias_init_and_indexing():
    fg = torch.zeros(3, 3, 4)
    fg[1, 2] = torch.tensor([2.0, 6.0, 1.0, 1.0])
    fg[..., 0] += 1
    init = frequency_bias_init(fg, 2)  # S = {0, 1, 2}
    row = init[1 * 3 + 2]
    torch.testing.assert_close(row, (torch.tensor([3.0, 6.0, 1.0]) / 10 + 1e-3).log())
    fb = FrequencyBias(3, 3)
    fb.reset_from_counts(fg)
    torch.testing.assert_close(fb(torch.tensor([1]), torch.tensor([2]))[0], row)


def test_later_nms_relabel():
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.2, 0.7, 0.1]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    assert later_nms_relabel(probs, boxes, 0.5).tolist() == [1, 2, 1]  # box 1 loses class 1 to overlapping box 0


def test_later_nms_retired_boxes_keep_their_class_and_every_box_gets_a_foreground_class():
    # three identical boxes, two foreground classes: box 0 takes class 1, box 1 class 2; both classes are then
    # suppressed on box 2, whose class must still be foreground, while boxes 0 and 1 keep theirs (spec §3.4 step 5)
    probs = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.2, 0.8], [0.0, 0.5, 0.5]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    labels = later_nms_relabel(probs, boxes, 0.5)
    assert labels[:2].tolist() == [1, 2]
    assert bool((labels >= 1).all())


def test_rect_features_and_model_shapes():
    rect = RectFeatures(8, 27, feature_dim=16)
    masks = rect.rasterise(torch.tensor([[0.0, 0.0, 49.0, 99.0]]), torch.tensor([[100.0, 100.0]]))
    assert masks.shape == (1, 27, 27) and masks[0, :, :15].all() and not masks[0, :, 15:].any()  # ceil(13.23) = 14
    assert rect(torch.rand(3, 4) * 10, torch.rand(3, 4) * 10 + 10, torch.full((3, 2), 40.0)).shape == (3, 16)
    for protocol in ("predcls", "sgcls", "sgdet"):
        model = SHAGCL(tiny_config(protocol=protocol))
        model.build_decoder([2, 3], torch.ones(5, 5, 6))
        batch = _toy_batch()
        model.eval()
        out = model(batch)
        assert [t.shape for t in out.rel_logits] == [(4, 3), (4, 6)]
        assert (out.obj_logits is None) == (protocol == "predcls")
        assert (out.obj_labels >= 1).all() and out.obj_scores.shape == (5,)


def test_rect_masks_hand_example():
    """Official rasterisation: the box scaled by (27/W, 27/H); cell (y, x) in the mask iff
    floor(x1) <= x <= ceil(x2) and floor(y1) <= y <= ceil(y2)."""
    rect = RectFeatures(8, 27)
    head = torch.tensor([[4.6, 8.0, 11.2, 16.0]])  # image 54 x 27: x scaled by 1/2 -> [2.3, 5.6], y by 1 -> [8, 16]
    tail = torch.tensor([[0.0, 0.0, 53.0, 26.0]])  # the whole image
    size = torch.tensor([[54.0, 27.0]])
    expected = torch.zeros(27, 27)
    expected[8:17, 2:7] = 1  # rows 8..16, columns 2..6
    torch.testing.assert_close(rect.rasterise(head, size)[0], expected)
    assert rect.rasterise(tail, size)[0].all()
    maps = rect(head, tail, size)  # (M, C, 7, 7): added to the pooled union map
    assert maps.shape == (1, 8, 7, 7)


def test_union_channel_reduction_init_is_he_normal_over_fan_out():
    """The 3x3 conv that reduces the all-level union maps is maskrcnn-benchmark's make_conv3x3: weights
    N(0, 2 / (C·9)) (He-normal over the fan-out), bias 0 — not the box head's Kaiming-uniform(a=1), whose std
    would be sqrt(1 / (L·C·9))."""
    torch.manual_seed(0)
    union = UnionFeatures(tiny_config(union_features="official", roi_channels=32))
    w = union.reduce.weight  # (32, 128, 3, 3)
    expected = math.sqrt(2.0 / (32 * 9))  # 0.083; the uniform init would give 0.029
    assert abs(float(w.std()) - expected) < 0.05 * expected
    assert float(w.abs().max()) > math.sqrt(3.0) * expected  # unbounded tails: not a uniform draw
    assert not union.reduce.bias.any()


def test_official_union_path_and_trainable_box_head(tmp_path):
    cfg = tiny_config(trainable_box_head=True, union_features="official", roi_channels=8)
    union = UnionFeatures(cfg)
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 9.0, 9.0], [1.0, 1.0, 4.0, 8.0]])
    out = union(torch.randn(3, 4 * 8, 7, 7), boxes, boxes.flip(0), torch.full((3, 2), 20.0))
    assert out.shape == (3, 16) and (out >= 0).all()  # fc7 + ReLU of the union branch
    assert union.reduce.in_channels == 32 and union.reduce.out_channels == 8  # 4 levels -> C, 3x3 conv
    model = SHAGCL(cfg)
    model.build_decoder([2, 3], torch.ones(5, 5, 6))
    batch = {
        "obj_pooled": torch.randn(5, 8, 7, 7),
        "boxes": torch.tensor([[0.0, 0, 5, 5], [3, 3, 9, 9], [1, 1, 4, 8], [0, 0, 5, 5], [2, 2, 7, 7]]),
        "obj_image_sizes": torch.full((5, 2), 20.0),
        "num_objs": [3, 2],
        "labels": torch.tensor([1, 2, 3, 4, 1]),
        "pair_idx": torch.tensor([[0, 1], [1, 2], [2, 0], [3, 4]]),
        "union_pooled": torch.randn(4, 32, 7, 7),
        "pair_image_sizes": torch.full((4, 2), 20.0),
    }
    assert [t.shape for t in model(batch).rel_logits] == [(4, 3), (4, 6)]
    with pytest.raises(ValueError, match=r"object_stage pooled` \(or set data\.synthetic\.pooled: true\)"):
        model({**batch, "obj_pooled": None, "obj_feats": torch.randn(5, 16)})
    with pytest.raises(ValueError, match=r"union_stage pooled` \(or set data\.synthetic\.pooled: true\)"):
        model({**batch, "union_pooled": None, "union_feats": torch.randn(4, 16)})
    # fc6/fc7 copies start from a detector's box head (torchvision key names)
    state = {
        "roi_heads.box_head.fc6.weight": torch.randn(16, 8 * 49),
        "roi_heads.box_head.fc6.bias": torch.randn(16),
        "roi_heads.box_head.fc7.weight": torch.randn(16, 16),
        "roi_heads.box_head.fc7.bias": torch.randn(16),
        "roi_heads.box_predictor.cls_score.weight": torch.randn(5, 16),
    }
    torch.save({"model": state}, tmp_path / "det.pth")
    assert model.load_box_head(tmp_path / "det.pth") == 2
    for head in (model.box_head, model.union.box_head):
        torch.testing.assert_close(head.fc6.weight, state["roi_heads.box_head.fc6.weight"])
        torch.testing.assert_close(head.fc7.bias, state["roi_heads.box_head.fc7.bias"])
    with pytest.raises(FileNotFoundError, match="box_head_checkpoint"):
        model.load_box_head(tmp_path / "missing.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "det.pth").read_bytes()[:500])  # a copy that stopped
    with pytest.raises(ValueError, match=r"model\.config\.box_head_checkpoint '.*cut\.pth' cannot be read"):
        model.load_box_head(tmp_path / "cut.pth")


def test_self_attention_encoder_is_transformer_context():
    """encoder='self' (§3.9 ablation): the official TransformerContext, one fused stream
    Linear([r; text; box]) → SA layers, then Linear([r; O; Emb2[label]]) → SA layers (no separate streams)."""
    from shagcl.models import SelfAttentionEncoder

    for protocol in ("predcls", "sgcls"):
        cfg = tiny_config(protocol=protocol, encoder="self")
        model = SHAGCL(cfg)
        ctx = model.context
        assert isinstance(ctx.obj_encoder, SelfAttentionEncoder) and len(ctx.obj_encoder.layers) == cfg.obj_layers
        assert isinstance(ctx.edge_encoder, SelfAttentionEncoder) and len(ctx.edge_encoder.layers) == cfg.edge_layers
        assert ctx.lin_obj.in_features == cfg.feature_dim + cfg.word_dim + 128
        assert ctx.lin_edge.in_features == cfg.feature_dim + cfg.hidden_dim + cfg.word_dim
        assert not hasattr(ctx, "lin_obj_textual") and not hasattr(ctx, "lin_edge_textual")
        model.build_decoder([2, 3], torch.ones(5, 5, 6))
        model.eval()
        batch = _toy_batch()
        out = model(batch)
        assert [t.shape for t in out.rel_logits] == [(4, 3), (4, 6)]
        assert all(torch.isfinite(t).all() for t in out.rel_logits)
        # attention stays inside an image: the second image's logits ignore the first image's features
        other = dict(batch, obj_feats=torch.cat([torch.randn(3, 16), batch["obj_feats"][3:]]))
        torch.testing.assert_close(model(other).rel_logits[-1][3:], out.rel_logits[-1][3:])


def test_load_glove_reads_the_text_and_pt_formats(tmp_path):
    from shagcl.models import load_glove

    rows = {"man": [1.0, 2.0, 3.0], "table": [4.0, 5.0, 6.0], "wine": [0.5, 0.5, 0.5], "glass": [7.0, 8.0, 9.0]}
    txt = tmp_path / "glove.6B.3d.txt"
    txt.write_text("the 0.1 0.1 0.1\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()))
    names = ["man", "wine glass", "table", "zebra"]
    torch.manual_seed(0)
    got = load_glove(txt, names, 3)
    torch.testing.assert_close(got[0], torch.tensor(rows["man"]))
    torch.testing.assert_close(got[1], torch.tensor(rows["glass"]))  # a multi-word name: its longest word
    torch.testing.assert_close(got[2], torch.tensor(rows["table"]))
    torch.manual_seed(0)
    torch.testing.assert_close(got[3], torch.randn(4, 3)[3])  # not in the file: N(0, 1)
    pt = tmp_path / "glove.pt"
    torch.save({"words": list(rows), "vectors": torch.tensor(list(rows.values()))}, pt)
    torch.manual_seed(0)
    torch.testing.assert_close(load_glove(pt, names, 3), got)
    with pytest.raises(ValueError, match=r"vectors have 3 dims, model\.config\.word_dim=4"):
        load_glove(txt, names, 4)
    txt.write_text("man 1.0 2,0 3.0\n")
    with pytest.raises(ValueError, match=r"glove\.6B\.3d\.txt' line 1: the vector of 'man' is not a list of numbers"):
        load_glove(txt, names, 3)
    torch.save({"words": ["man"], "vectors": torch.zeros(2, 3)}, pt)
    with pytest.raises(ValueError, match=r"glove\.pt'?: 1 words but 2 vectors"):
        load_glove(pt, names, 3)
    torch.save({"vectors": torch.zeros(2, 3)}, pt)
    with pytest.raises(KeyError, match=r"glove\.pt'?: a \.pt GloVe file holds a dict with 'words'"):
        load_glove(pt, names, 3)
    pt.write_bytes(pt.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"model\.config\.glove_path '.*glove\.pt' cannot be read as a torch file"):
        load_glove(pt, names, 3)


def test_sgcls_without_detector_logits_names_the_protocol_key():
    model = SHAGCL(tiny_config(protocol="sgcls"))
    model.build_decoder([2, 3], torch.ones(5, 5, 6))
    with pytest.raises(ValueError, match=r"model\.config\.protocol=sgcls needs detector logits"):
        model({**_toy_batch(), "det_logits": None})
