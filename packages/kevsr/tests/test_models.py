"""Components of spec §3.3 against their equations (spec §8d)."""

import torch

from kevsr.models import KeywordFusion, LabelMatchingHead, LocalAttentionPool


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
