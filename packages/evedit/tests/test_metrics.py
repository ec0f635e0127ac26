import zlib

import pytest
import torch
import torch.nn.functional as F

from evedit.metrics import (
    CLIPFrameConsistency,
    CLIPTextScore,
    DepthError,
    FrameAccuracy,
    PickScore,
    build_embedder,
    clip_frame_consistency,
    clip_text_score,
    depth_error,
    frame_accuracy,
    pick_score,
)


def test_clip_text_scale_and_frame_consistency_reference():
    img = torch.randn(5, 8)
    txt = torch.randn(8)
    ref = 100 * torch.stack([F.cosine_similarity(i, txt, dim=0) for i in img]).mean()
    assert clip_text_score(img, txt).item() == pytest.approx(ref.item(), rel=1e-5)
    e = F.normalize(img, dim=-1)
    cos = e @ e.T
    off = cos[~torch.eye(5, dtype=torch.bool)].mean()
    assert clip_frame_consistency(img, "all").item() == pytest.approx(off.item(), rel=1e-5)
    consec = sum(F.cosine_similarity(img[i], img[i + 1], dim=0) for i in range(4)) / 4
    assert clip_frame_consistency(img, "consecutive").item() == pytest.approx(consec.item(), rel=1e-5)
    same = torch.randn(1, 8).expand(4, -1)
    assert clip_frame_consistency(same).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 frames"):
        clip_frame_consistency(img[:1])


def test_frame_accuracy_and_pick_score_constructed():
    tgt, src = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    img = torch.tensor([[1.0, 0.1], [0.2, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert frame_accuracy(img, tgt, src).item() == pytest.approx(0.5)
    s = torch.tensor(2.0)
    assert pick_score(img[:1], tgt, s).item() == pytest.approx(
        torch.exp(s).item() * F.cosine_similarity(img[0], tgt, dim=0).item(), rel=1e-5
    )


def test_depth_error_normalises_per_clip():
    d = torch.rand(2, 4, 4)
    assert depth_error(d, d * 3 + 1).item() == pytest.approx(0.0, abs=1e-6)
    assert depth_error(torch.zeros(1, 2, 2), torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        depth_error(d, d[:1])


def test_metric_classes_average_over_clips_like_the_functions():
    clips = [torch.randn(4, 8) for _ in range(3)]
    texts = [torch.randn(8) for _ in range(3)]
    m_text, m_frame, m_acc, m_pick = CLIPTextScore(), CLIPFrameConsistency("consecutive"), FrameAccuracy(), PickScore()
    m_depth = DepthError()
    for img, txt in zip(clips, texts, strict=True):
        m_text.update(img, txt)
        m_frame.update(img)
        m_acc.update(img, txt, -txt)
        m_pick.update(img, txt, 1.0)
        m_depth.update(img.view(4, 2, 4), img.view(4, 2, 4).flip(0))
    ref = torch.stack([clip_text_score(i, t) for i, t in zip(clips, texts, strict=True)]).mean()
    assert m_text.compute().item() == pytest.approx(ref.item(), rel=1e-5)
    ref = torch.stack([clip_frame_consistency(i, "consecutive") for i in clips]).mean()
    assert m_frame.compute().item() == pytest.approx(ref.item(), rel=1e-5)
    ref = torch.stack([frame_accuracy(i, t, -t) for i, t in zip(clips, texts, strict=True)]).mean()
    assert m_acc.compute().item() == pytest.approx(ref.item(), rel=1e-5)
    assert m_pick.compute().item() == pytest.approx(torch.e * m_text.compute().item() / 100, rel=1e-5)
    assert 0 <= m_depth.compute().item() <= 1
    with pytest.raises(ValueError, match="no clip"):
        CLIPTextScore().compute()


def test_tiny_embedder_and_missing_weights(tmp_path):
    emb = build_embedder("tiny", 32)
    img = emb.embed_images(torch.randint(0, 255, (3, 3, 40, 40), dtype=torch.uint8))
    txt = emb.embed_text(["a red circle", "a blue square"])
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    with pytest.raises(FileNotFoundError, match=r"model\.metrics\.clip_path"):
        build_embedder(str(tmp_path / "nope"), 224)


def test_clip_preprocessing_matches_the_official_pil_pipeline(textured_frame):
    """LOVEU's run_eval.py: PIL resize to 480² (bicubic), then CLIPProcessor (bicubic short side 224, crop, norm).
    PIL antialiases its downsampling; a textured frame exposes an aliased resize."""
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from evedit.metrics import CLIPEmbedder

    frame = textured_frame(0.05)  # (1, 3, 512, 512)
    cfg = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=32,
    )
    emb = CLIPEmbedder(CLIPModel(cfg), tokenizer=None, resize=480)
    pil = Image.fromarray(frame[0].permute(1, 2, 0).numpy()).resize((480, 480), Image.BICUBIC)
    ref = CLIPImageProcessor()(images=[pil], return_tensors="pt").pixel_values  # OpenAI CLIP defaults
    diff = (emb.preprocess(frame) - ref).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2


def test_stage_means_leave_out_metrics_no_process_updated():
    """The epoch-end means: a metric no process updated (e.g. peak memory on CPU) is left out instead of raising,
    the count is summed through ``reduce_count`` before deciding (a process without clips still joins the sync),
    and every metric is reset for the next epoch."""
    from evedit.metrics import CLIPTextScore, ScalarMean, compute_clip_means

    metrics = {"clip_text": CLIPTextScore(), "time_s": ScalarMean(), "peak_mb": ScalarMean()}
    metrics["clip_text"].update(torch.tensor([[1.0, 0.0]]), torch.tensor([1.0, 0.0]))  # 100
    metrics["clip_text"].update(torch.tensor([[0.0, 1.0]]), torch.tensor([1.0, 0.0]))  # 0
    metrics["time_s"].update(3.0)
    metrics["time_s"].update(5.0)
    seen = []
    out = compute_clip_means(metrics, lambda c: seen.append(float(c)) or c)
    assert {k: float(v) for k, v in out.items()} == pytest.approx({"clip_text": 50.0, "time_s": 4.0})
    assert seen == [2.0, 2.0, 0.0] and all(int(m.count) == 0 for m in metrics.values())


def test_tiny_clip_text_embedding_is_read_at_the_end_token():
    # CLIP pools a prompt at its end token; the tiny embedder's word ids must not be taken for it
    emb = build_embedder("tiny", 32)
    prompts = ["a red car on a road", "zebra"]
    ids = emb.tokenizer(prompts, padding="max_length", max_length=16).input_ids  # (2, 16)
    end = [int((row != 0).nonzero().max()) for row in ids]  # the last token before the padding ends the prompt
    assert end == [7, 2]
    with torch.no_grad():
        states = emb.model.text_model(input_ids=ids).last_hidden_state  # (2, 16, D) after the final LayerNorm
        expected = F.normalize(emb.model.text_projection(states[torch.arange(2), end]), dim=-1)
    assert torch.allclose(emb.embed_text(prompts), expected, atol=1e-6)
    # the state at the end token sees every word: changing the last word changes the embedding
    assert not torch.allclose(emb.embed_text(["a red car on a road"]), emb.embed_text(["a red car on a river"]))


def test_word_tokenizer_keeps_its_end_id_for_the_end():
    from evedit.models import WordTokenizer

    tok = WordTokenizer(10, 8, end_id=9)
    words = [f"w{i}" for i in range(200)]
    assert {tok.word_id(w) for w in words} == set(range(3, 9))  # every id from 3 on but the end's
    assert tok(["w1 w2"]).input_ids[0].tolist()[:4] == [1, tok.word_id("w1"), tok.word_id("w2"), 9]
    assert WordTokenizer(10, 8).word_id("w1") == 3 + zlib.crc32(b"w1") % 7  # default ids unchanged
    with pytest.raises(ValueError, match="end_id=10"):
        WordTokenizer(10, 8, end_id=10)
