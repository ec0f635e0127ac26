import json
import random
from pathlib import Path

import pytest
import torch

from snps3.data import (
    CaptionProcessor,
    FrameTransform,
    MCDataset,
    PretrainDataset,
    QADataset,
    RetrievalDataset,
    SNPS3DataModule,
    VideoStore,
    collate,
)


def dm(root, dataset="webvid", **kw):
    args = dict(
        data_root=str(root),
        dataset=dataset,
        tokenizer="vocab.txt",
        num_frames=3,
        max_text_len=16,
        masking="mssm",
        significant_words="count_reprocess_synthetic.json",
        same_lemma="vocab_simi_list_new.json",
        words_top_k=17,
        crop_size=32,
        train_scale=(32, 36),
        eval_short_side=32,
        randaugment=False,
        num_answers=18,
        answer_list="msrvtt_qa_antmmf/answers.json",
        batch_size=4,
        eval_batch_size=4,
    )
    args.update(kw)
    return SNPS3DataModule(**args)


def test_pretrain_batch_shapes_and_masking(synthetic_root):
    d = dm(synthetic_root)
    d.setup("fit")
    ds = d.datasets["train"]
    assert isinstance(ds, PretrainDataset)
    kinds = {k[3] for k, _ in ds.groups}
    assert kinds == {"video", "image"}
    assert any(k[1] is not None for k, _ in ds.groups)  # start/end segments
    batch = next(iter(d.train_dataloader()))
    assert batch["frames"].shape == (4, 3, 3, 32, 32) and batch["frames"].dtype == torch.float32
    for k in ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels", "neg_input_ids", "word_significant"):
        assert batch[k].shape == (4, 16), k
    labelled = batch["mlm_labels"] >= 0
    # MSSM masks only significant (content) words when enough exist; raw ids restore the masked caption
    assert batch["word_significant"][labelled].all()
    torch.testing.assert_close(torch.where(labelled, batch["mlm_labels"], batch["mlm_input_ids"]), batch["input_ids"])
    assert batch["input_ids"][:, 0].eq(101).all()


def test_retrieval_eval_items_and_multi_gt(synthetic_root):
    d = dm(synthetic_root, "msrvtt_7k")
    d.setup("test")
    ds = d.datasets["test"]
    assert isinstance(ds, RetrievalDataset) and ds.store.is_lmdb
    assert len(ds) == 6 and len(ds.videos) == 5  # 5 lines + one caption shared by two videos
    gt = ds.gt_matrix()
    assert gt.sum(1).max() == 2  # the shared caption has two ground-truth videos
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["frames"].shape == (6, 3, 3, 32, 32)
    assert batch["text_index"].tolist() == list(range(6))
    d.setup("fit")
    assert len(d.datasets["train"]) == 12  # one item per training video


def test_qa_int_str_and_list_labels(synthetic_root):
    d = dm(synthetic_root, "msrvtt_qa")
    d.setup("test")
    ds = d.datasets["test"]
    assert isinstance(ds, QADataset) and ds.multi_label
    item = ds[0]
    assert item["labels"].shape == (18,) and item["labels"].sum() == 1
    d.setup("fit")
    assert "label" in d.datasets["train"][0]


def test_mc_items(synthetic_root):
    d = dm(synthetic_root, "msrvtt_mc")
    d.setup("test")
    ds = d.datasets["test"]
    assert isinstance(ds, MCDataset)
    batch = collate([ds[0], ds[1]])
    assert batch["option_ids"].shape == (2, 5, 16) and batch["answer"].tolist() == [0, 1]


def test_folder_store_and_padding_collate(synthetic_root):
    store = VideoStore(Path(synthetic_root) / "webvid" / "videos")
    assert not store.is_lmdb
    frames = store.read("train00000", 4, train=False)
    assert frames.shape == (4, 3, 32, 32) and frames.dtype == torch.uint8
    a = {"frames": torch.zeros(2, 3, 32, 40), "x": torch.tensor(1)}
    b = {"frames": torch.ones(2, 3, 36, 32), "x": torch.tensor(2)}
    out = collate([a, None, b])
    assert out["frames"].shape == (2, 2, 3, 36, 40)
    assert out["pad_mask"][0, 33:, :].all() and not out["pad_mask"][0, :32, :40].any()
    assert out["pad_mask"][1, :, 33:].all()
    assert collate([None]) is None


def test_long_side_transform_keeps_aspect():
    t = FrameTransform("long_side", long_side=64, randaugment=False)
    out = t(torch.zeros(2, 3, 60, 120, dtype=torch.uint8), False, random.Random(0))
    assert out.shape == (2, 3, 32, 64)


def test_missing_files_and_keys(synthetic_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="Data preparation"):
        dm(tmp_path, "msrvtt_7k").setup("test")
    bad = tmp_path / "bad"
    (bad / "msrvtt_retrieval").mkdir(parents=True)
    (bad / "msrvtt_retrieval" / "test.jsonl").write_text(json.dumps({"clip_name": "x"}) + "\n")
    (bad / "vocab.txt").write_text((Path(synthetic_root) / "vocab.txt").read_text())
    with pytest.raises(KeyError, match="caption"):
        dm(bad, "msrvtt_7k").setup("test")
    (bad / "msrvtt_retrieval" / "test.jsonl").write_text(json.dumps({"clip_name": "x", "caption": "a"}) + "\n")
    with pytest.raises(FileNotFoundError, match="msrvtt_videos.lmdb"):
        dm(bad, "msrvtt_7k").setup("test")
    with pytest.raises(ValueError, match="significant_words"):
        dm(synthetic_root, significant_words=None).setup("fit")


def test_corrupt_video_raise_or_skip(synthetic_root, tmp_path, caplog):
    root = tmp_path / "corrupt"
    (root / "webvid" / "videos").mkdir(parents=True)
    (root / "webvid" / "annotations").mkdir(parents=True)
    for name in ("vocab.txt", "count_reprocess_synthetic.json", "vocab_simi_list_new.json"):
        (root / name).write_text((Path(synthetic_root) / name).read_text())
    (root / "webvid" / "videos" / "bad.mp4").write_bytes(b"not a video")
    good = (Path(synthetic_root) / "webvid" / "videos" / "train00000.mp4").read_bytes()
    (root / "webvid" / "videos" / "good.mp4").write_bytes(good)
    rows = [
        {"clip_name": "bad", "caption": "a red one rises", "type": "video"},
        {"clip_name": "good", "caption": "a blue two falls", "type": "video"},
    ]
    (root / "webvid" / "annotations" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = dm(root, images_root="webvid")
    d.setup("validate")
    ds = d.datasets["val"]
    bad_index = next(i for i, (k, _) in enumerate(ds.groups) if k[0] == "bad")
    from mmzoo.video import VideoDecodeError

    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        ds[bad_index]
    d2 = dm(root, images_root="webvid", on_corrupt="skip")
    d2.setup("validate")
    with caplog.at_level("WARNING"):
        assert d2.datasets["val"][bad_index] is None
    assert "bad.mp4" in caplog.text
    batch = collate([d2.datasets["val"][i] for i in range(2)])
    assert batch["frames"].shape[0] == 1


def test_caption_window_truncation_shares_raw_and_masked(synthetic_root):
    d = dm(synthetic_root, max_text_len=6)
    proc: CaptionProcessor = d.processor()
    out = proc("a red seven rises the of with it while", True, random.Random(3), mask=True)
    assert out["input_ids"].shape == (6,) and out["attention_mask"].sum() == 6
    lab = out["mlm_labels"] >= 0
    torch.testing.assert_close(torch.where(lab, out["mlm_labels"], out["mlm_input_ids"]), out["input_ids"])
