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
    assert len(ds.rows) == 6 and len(ds) == len(ds.videos) == 5  # 5 lines + one caption shared by two videos
    gt = ds.gt_matrix()
    assert gt.sum(1).max() == 2  # the shared caption has two ground-truth videos
    reads = []
    store_read = ds.store.read
    ds.store.read = lambda clip, *a, **k: reads.append(clip) or store_read(clip, *a, **k)
    batch = collate([ds[i] for i in range(len(ds))])
    assert sorted(reads) == sorted(ds.videos)  # every test video decoded exactly once
    assert batch["frames"].shape == (5, 3, 3, 32, 32)
    assert sorted(batch["text_index"].tolist()) == list(range(6)) and batch["input_ids"].shape == (6, 16)
    for line, vid in zip(batch["text_index"].tolist(), batch["text_video_index"].tolist()):
        assert ds.videos[vid] == ds.rows[line]["clip_name"]
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


def test_mc_answer_must_index_an_option(synthetic_root, tmp_path):
    """Spec §4.4: ``answer`` is the 0-based index of the right option; one that no option has raises naming the
    file and the question instead of counting that question wrong."""
    lines = Path(synthetic_root, "msrvtt_retrieval", "mc_test.jsonl").read_text().splitlines()
    for bad in ("5", "b", "-1"):  # 5 = one past the last of 5 options (a 1-based file)
        row = json.loads(lines[1])
        row["answer"] = bad
        (tmp_path / "mc.jsonl").write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
        with pytest.raises(ValueError, match=r"mc\.jsonl: question 'mc1'.*'answer' = '" + bad):
            dm(synthetic_root, "msrvtt_mc", annotation_files={"test": [str(tmp_path / "mc.jsonl")]}).setup("test")


def test_lmdb_key_is_the_basename_without_extension(synthetic_root):
    """Spec §4: the LMDB key is the video basename without extension, whatever folders ``clip_name`` names."""
    store = VideoStore(Path(synthetic_root) / "msrvtt_videos.lmdb")
    raw, _ = store.source("test00001")
    for name in ("test00001.mp4", "clips/test00001", "clips/test00001.mp4"):
        assert store.source(name)[0] == raw


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


def test_folder_store_finds_a_clip_of_another_extension(tmp_path):
    (tmp_path / "a.avi").write_bytes(b"x")  # MSVD's clips are .avi; the annotation names them without extension
    (tmp_path / "b.avi").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    store = VideoStore(tmp_path)
    assert store.source("a")[0] == str(tmp_path / "a.avi")
    assert store.source("b")[0] == str(tmp_path / "b.mp4")  # .mp4 first, as the spec says
    assert store.source("c")[0] == str(tmp_path / "c.mp4")  # none: the .mp4 name, which the reader then reports
    assert store.source("a.webm")[0] == str(tmp_path / "a.webm")  # an explicit extension is kept


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
        placeholder = d2.datasets["val"][bad_index]
    assert "bad.mp4" in caplog.text
    # evaluation keeps the item (blank frames, flagged) so the test set and batch sizes do not change
    assert bool(placeholder["unreadable"]) and placeholder["frames"].shape == (3, 3, 32, 32)
    batch = collate([d2.datasets["val"][i] for i in range(2)])
    assert batch["frames"].shape[0] == 2 and batch["unreadable"].tolist() == [i == bad_index for i in range(2)]


def _mini_webvid(root: Path, synthetic_root, rows: list[dict], videos: dict[str, bytes], split: str) -> Path:
    (root / "webvid" / "videos").mkdir(parents=True)
    (root / "webvid" / "annotations").mkdir(parents=True)
    for name in ("vocab.txt", "count_reprocess_synthetic.json", "vocab_simi_list_new.json"):
        (root / name).write_text((Path(synthetic_root) / name).read_text())
    for name, data in videos.items():
        (root / "webvid" / "videos" / f"{name}.mp4").write_bytes(data)
    (root / "webvid" / "annotations" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_training_skip_substitutes_and_keeps_full_batches(synthetic_root, tmp_path, caplog):
    src = Path(synthetic_root) / "webvid" / "videos"
    videos = {"bad": b"not a video", **{f"good{i}": (src / f"train0000{i}.mp4").read_bytes() for i in range(3)}}
    rows = [{"clip_name": n, "caption": f"a red {n} rises", "type": "video"} for n in videos]
    root = _mini_webvid(tmp_path / "r", synthetic_root, rows, videos, "train")
    d = dm(
        root, images_root="webvid", on_corrupt="skip", annotation_files={"train": ["webvid/annotations/train.jsonl"]}
    )
    d.datasets["train"] = d.make_dataset("train")
    ds = d.datasets["train"]
    bad = next(i for i, (k, _) in enumerate(ds.groups) if k[0] == "bad")
    with caplog.at_level("WARNING"):
        item = ds[bad]
        batches = list(d.train_dataloader())
    assert item is not None and int(item["video_index"]) == (bad + 1) % len(ds)  # the next readable item
    assert "bad.mp4" in caplog.text and "replacements so far" in caplog.text
    assert [b["frames"].shape[0] for b in batches] == [4]  # never shrinks (DDP ranks stay in step)
    d_raise = dm(root, images_root="webvid", annotation_files={"train": ["webvid/annotations/train.jsonl"]})
    with pytest.raises(Exception, match="bad.mp4"):
        d_raise.make_dataset("train")[bad]


def test_substitution_count_adds_up_over_loader_workers(synthetic_root, tmp_path, caplog):
    """Under ``on_corrupt: skip`` every DataLoader worker substitutes in its own copy of the dataset; the reported
    count is the total over all workers (it used to be each worker's own count, and 0 in the main process)."""
    from torch.utils.data import DataLoader

    src = Path(synthetic_root) / "webvid" / "videos"
    videos = {
        **{f"bad{i}": b"not a video" for i in range(3)},
        **{f"good{i}": (src / f"train0000{i}.mp4").read_bytes() for i in range(3)},
    }
    rows = [{"clip_name": n, "caption": f"a red {n} rises", "type": "video"} for n in videos]
    root = _mini_webvid(tmp_path / "w", synthetic_root, rows, videos, "train")
    d = dm(
        root, images_root="webvid", on_corrupt="skip", annotation_files={"train": ["webvid/annotations/train.jsonl"]}
    )
    ds = d.make_dataset("train")
    bad = sorted(i for i, (k, _) in enumerate(ds.groups) if k[0].startswith("bad"))
    assert bad == [0, 1, 2] and ds.num_substituted == 0
    # workers 0 and 1 take alternate items: worker 0 replaces items 0 and 2, worker 1 item 1
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate, multiprocessing_context="fork")
    assert sum(b["frames"].shape[0] for b in loader) == len(ds)
    assert ds.num_substituted == 3
    with caplog.at_level("WARNING"):
        ds[bad[0]]  # the main process adds to the same total
    assert ds.num_substituted == 4
    assert "in the main process (4 replacements so far on this rank" in caplog.text


def test_retrieval_eval_reports_unreadable_videos(synthetic_root, tmp_path, make_config):
    import lightning.pytorch as pl

    from snps3.module import SNPS3Module

    root = tmp_path / "ret"
    (root / "msrvtt_retrieval").mkdir(parents=True)
    (root / "videos").mkdir()
    (root / "vocab.txt").write_text((Path(synthetic_root) / "vocab.txt").read_text())
    good = (Path(synthetic_root) / "webvid" / "videos" / "train00000.mp4").read_bytes()
    (root / "videos" / "good.mp4").write_bytes(good)
    (root / "videos" / "bad.mp4").write_bytes(b"not a video")
    rows = [{"caption": "a red one rises", "clip_name": "good"}, {"caption": "a blue two falls", "clip_name": "bad"}]
    (root / "msrvtt_retrieval" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = dm(root, "msrvtt_7k", video_store="videos", on_corrupt="skip", masking="none", significant_words=None)
    config = make_config(num_layers=1, num_answers=0)
    module = SNPS3Module(config=config, task="retrieval", with_moco=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    with pytest.warns(UserWarning, match=r"1 evaluation item\(s\) have unreadable videos.*'bad'"):
        trainer.test(module, datamodule=d)
    assert "test/l2_simi_t2v-R@1" in trainer.callback_metrics  # the 2x2 matrix: the test set is unchanged


def test_long_side_official_and_at_most_sizes():
    sizes = {}
    for mode in ("at_most", "official"):
        t = FrameTransform("long_side", long_side=448, randaugment=False, hflip=0.0, long_side_scale=mode)
        for h, w in ((480, 640), (240, 320)):
            img = torch.zeros(1, 3, h, w, dtype=torch.uint8)
            sizes[mode, w, "eval"] = tuple(t(img, False, random.Random(0)).shape[-2:])
            sizes[mode, w, "train"] = {tuple(t(img, True, random.Random(s)).shape[-2:]) for s in range(60)}
    assert sizes["at_most", 640, "eval"] == (336, 448) and sizes["at_most", 320, "eval"] == (240, 320)  # no upscale
    assert all(336 <= max(s) <= 448 for s in sizes["at_most", 640, "train"])
    assert sizes["at_most", 320, "train"] == {(240, 320)}
    assert sizes["official", 640, "eval"] == (336, 448) and sizes["official", 320, "eval"] == (336, 448)  # up-scaled
    for w in (640, 320):
        longs = {s[1] for s in sizes["official", w, "train"]}
        assert longs <= set(range(224, 449, 32)) and len(longs) >= 5  # long side from {224, 256, ..., 448}
        assert all(s[0] == int(s[1] * 0.75) for s in sizes["official", w, "train"])
    with pytest.raises(ValueError, match="long_side_scale"):
        FrameTransform("long_side", long_side_scale="bigger")


def test_empty_caption_uses_asr_or_warns(synthetic_root, tmp_path, caplog):
    good = (Path(synthetic_root) / "webvid" / "videos" / "train00000.mp4").read_bytes()
    rows = [{"clip_name": "v", "caption": "", "type": "video", "start": 0.0, "end": 0.5}]
    root = _mini_webvid(tmp_path / "asr", synthetic_root, rows, {"v": good}, "val")
    (root / "asr").mkdir()
    (root / "asr" / "v.json").write_text(json.dumps({"start": [0.0, 5.0], "end": [1.0, 6.0], "text": ["red", "blue"]}))
    vocab = (root / "vocab.txt").read_text().splitlines()
    with caplog.at_level("WARNING"):
        d = dm(root, images_root="webvid")
        d.setup("validate")
        plain = d.datasets["val"][0]
    assert "empty caption" in caplog.text and int(plain["attention_mask"].sum()) == 2  # [CLS] [SEP]
    d = dm(root, images_root="webvid", asr_root="asr")
    d.setup("validate")
    item = d.datasets["val"][0]
    assert int(item["attention_mask"].sum()) == 3 and vocab[int(item["input_ids"][1])] == "red"  # overlapping only


def test_asr_file_with_the_official_extensionless_name_is_read(synthetic_root, tmp_path):
    """The official reader opens ``<asr_root>/<video basename>`` with no extension; such a file must be found."""
    good = (Path(synthetic_root) / "webvid" / "videos" / "train00000.mp4").read_bytes()
    rows = [{"clip_name": "v.mp4", "caption": " ", "type": "video"}]
    root = _mini_webvid(tmp_path / "asr", synthetic_root, rows, {"v": good}, "val")
    (root / "asr").mkdir()
    (root / "asr" / "v").write_text(json.dumps({"start": [0.0, 5.0], "end": [1.0, 6.0], "text": ["red", "blue"]}))
    vocab = (root / "vocab.txt").read_text().splitlines()
    d = dm(root, images_root="webvid", asr_root="asr")
    d.setup("validate")
    item = d.datasets["val"][0]
    words = [vocab[int(i)] for i in item["input_ids"][item["attention_mask"].bool()]]
    assert words[1:-1] == ["red", "blue"]  # no time span on the line: every segment


def test_official_pretraining_val_names_and_qa_answer_count(synthetic_root):
    from snps3.data import DATASETS

    assert DATASETS["coco_vg"]["val"] == DATASETS["coco_vg"]["test"] == ["coco_vg/image_val.jsonl"]
    assert DATASETS["cc3m"]["val"] == ["cc3m/image_val.jsonl"]
    with pytest.raises(ValueError, match="data.num_answers=0"):
        dm(synthetic_root, "msrvtt_qa", num_answers=0).setup("fit")


def test_caption_window_truncation_shares_raw_and_masked(synthetic_root):
    d = dm(synthetic_root, max_text_len=6)
    proc: CaptionProcessor = d.processor()
    out = proc("a red seven rises the of with it while", True, random.Random(3), mask=True)
    assert out["input_ids"].shape == (6,) and out["attention_mask"].sum() == 6
    lab = out["mlm_labels"] >= 0
    torch.testing.assert_close(torch.where(lab, out["mlm_labels"], out["mlm_input_ids"]), out["input_ids"])


def test_answers_past_num_answers_warn_once_per_file(synthetic_root, monkeypatch, caplog):
    """The answer list has 18 answers; with data.num_answers=14 the last 4 (the motions) and every label pointing at
    them fall outside the vocabulary: one warning per file with the count and the limit, also when the split's
    dataset is built again."""
    import snps3.data as data

    monkeypatch.setattr(data, "_WARNED_ANSWER_FILES", set(), raising=False)  # a fresh process
    root = Path(synthetic_root)
    names = json.loads((root / "msrvtt_qa_antmmf" / "answers.json").read_text())
    with caplog.at_level("WARNING", logger="snps3.data"):
        for _ in range(2):
            d = dm(root, "msrvtt_qa", num_answers=14)
            d.setup("fit")
            d.setup("test")
    messages = [r.getMessage() for r in caplog.records if "data.num_answers=14" in r.getMessage()]
    expected = {str(root / "msrvtt_qa_antmmf" / "answers.json"): len(names) - 14}
    for split in ("train", "val", "test"):
        path = root / "msrvtt_qa_antmmf" / f"{split}_antmmf.jsonl"
        count = 0
        for line in path.read_text().splitlines():
            labels = json.loads(line)["label"]
            for x in labels if isinstance(labels, list) else [labels]:
                count += (names.index(x) if isinstance(x, str) else x) >= 14
        expected[str(path)] = count
    assert all(expected.values())  # every file has answers past the limit
    assert len(messages) == len(expected)  # once per file
    for path, count in expected.items():
        (msg,) = [m for m in messages if m.startswith(f"{path}: ")]
        assert f": {count} " in msg and "out of vocabulary" in msg
    assert d.datasets["val"]._index(names[-1]) == d.datasets["val"]._index(len(names) - 1) == -1  # still dropped
    caplog.clear()
    with caplog.at_level("WARNING", logger="snps3.data"):
        dm(root, "msrvtt_qa", num_answers=len(names)).setup("fit")  # the whole list fits: nothing to report
    assert "num_answers" not in caplog.text


# A misspelt choice used to run another variant without a word: no masking at all, the long-side resize, skipping
# unreadable clips. Data modules, readers and transforms built in Python refuse it, naming the key as a config does.
@pytest.mark.parametrize(
    "key,value", [("masking", "bert"), ("transform", "center"), ("long_side_scale", "bigger"), ("on_corrupt", "skp")]
)
def test_datamodule_refuses_unknown_choices_when_built(synthetic_root, key, value):
    with pytest.raises(ValueError, match=f"data.{key}='{value}': expected one of"):
        dm(synthetic_root, "msrvtt_7k", **{key: value})


def test_caption_processor_refuses_an_unknown_masking(synthetic_root):
    tok = dm(synthetic_root, "msrvtt_7k").build_tokenizer()
    with pytest.raises(ValueError, match="data.masking='MLM': expected one of"):
        CaptionProcessor(tok, 16, "MLM")


def test_frame_transform_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="data.transform='centre': expected one of"):
        FrameTransform("centre")


def test_reader_refuses_an_unknown_on_corrupt(synthetic_root):
    d = dm(synthetic_root, "msrvtt_7k")
    args = dict(
        processor=CaptionProcessor(d.build_tokenizer(), 16), transform=d._transform(), num_frames=3, train=False
    )
    assert len(RetrievalDataset(str(synthetic_root), "test", "msrvtt_7k", **args)) == 5
    with pytest.raises(ValueError, match="data.on_corrupt='warn': expected one of"):
        RetrievalDataset(str(synthetic_root), "test", "msrvtt_7k", on_corrupt="warn", **args)


def test_a_significant_word_table_of_another_vocabulary_is_refused(synthetic_root, tmp_path):
    table = json.loads((Path(synthetic_root) / "count_reprocess_synthetic.json").read_text())
    table["name"][5], table["name"][6] = table["name"][6], table["name"][5]  # mined with another word order
    (tmp_path / "other.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match=r"other\.json': 'name'\[5\] is .* the table was mined with another vocab"):
        dm(synthetic_root, significant_words=str(tmp_path / "other.json")).setup("fit")
    dm(synthetic_root).setup("fit")  # the generated table matches its vocabulary
