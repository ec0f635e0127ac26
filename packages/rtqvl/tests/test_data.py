"""Readers of the official formats on tiny files written in those formats (spec §4, §8b)."""

from __future__ import annotations

import csv
import json
import logging
import re

import pytest
import torch

from rtqvl.data import (
    NEXTQA_CSV_HEADER,
    CaptionDataset,
    LMDBVideoStore,
    NExTQADataset,
    RetrievalDataset,
    RTQDataModule,
    VideoQADataset,
    collate,
    convert_nextqa_csv,
    head_tail_indices,
    normalize_text,
    uniform_eval_indices,
    write_lmdb,
)
from rtqvl.synthetic import encode_mp4, order_clip

COMMON = dict(num_frames=4, image_size=32, train=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtq_data")
    clip = encode_mp4(order_clip(("red", "left"), ("blue", "top"), num_frames=8))
    write_lmdb(root / "vis_db", {"video0": clip, "video1": clip, "video7010": clip, "bad": b"not a video"})
    ann = root / "ann"
    ann.mkdir()
    (ann / "ret.jsonl").write_text(
        json.dumps({"clip_name": "video0", "caption": "A man (is) cooking!"})
        + "\n"
        + json.dumps({"video": "video1", "caption": ["first caption", "second caption"]})
        + "\n"
        + json.dumps({"clip_name": "video0", "caption": "Named again"})
        + "\n"
    )
    (ann / "cap_test.json").write_text(
        json.dumps(
            [
                {"image_id": "video0.mp4", "caption": "a red square"},
                {"image_id": "video0.mp4", "caption": "red box"},
                {"image_id": "video1.mp4", "caption": "blue"},
            ]
        )
    )
    (ann / "cap_grouped.jsonl").write_text(json.dumps({"clip_name": "video0", "caption": ["x y", "y z"]}) + "\n")
    (ann / "qa_test.json").write_text(
        json.dumps(
            [
                {"video": "video7010.mp4", "question": "What is red?", "answer": "square", "question_id": 12},
            ]
        )
    )
    with open(ann / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "video",
                "frame_count",
                "width",
                "height",
                "question",
                "answer",
                "qid",
                "type",
                "a0",
                "a1",
                "a2",
                "a3",
                "a4",
            ]
        )
        w.writerow(["video1", 8, 32, 32, "what happens first", 2, 4, "TP", "blue", "green", "red", "white", "none"])
    return root


def test_text_normaliser_and_samplers():
    assert normalize_text('A "Man": (runs)!  fast~') == "a man runs fast"
    assert len(normalize_text(" ".join(["w"] * 80)).split()) == 50
    assert uniform_eval_indices(8, 4) == [0, 2, 4, 6]
    assert uniform_eval_indices(10, 4) == [0, 2, 5, 7]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = head_tail_indices(12, 4, g)
        assert idx[:2] == sorted(idx[:2]) and all(i < 6 for i in idx[:2]) and all(6 <= i < 12 for i in idx[2:])
        assert len(set(idx)) == 4


def test_retrieval_jsonl_string_and_list_captions(root):
    # evaluation: one item per video with all its captions (from every line naming it) and their text indices
    ds = RetrievalDataset(root, "test", ["ret.jsonl"], "ann", "vis_db", **COMMON)
    assert len(ds) == 2 and ds.num_videos == 2 and ds.num_texts == 4
    assert [x["video_index"] for x in ds.items] == [0, 1]
    assert ds.items[0]["captions"] == ["a man is cooking", "named again"]
    assert [x["text_index"] for x in ds.items] == [[0, 3], [1, 2]]
    batch = collate([ds[i] for i in range(2)])
    assert batch["video"].shape == (2, 4, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["video_index"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]
    assert batch["captions"] == ["a man is cooking", "named again", "first caption", "second caption"]
    assert batch["text_index"].tolist() == [0, 3, 1, 2] and batch["caption_video"].tolist() == [0, 0, 1, 1]
    assert "caption" not in batch
    # training: one item per caption (the contrastive sampling), in file order
    train = RetrievalDataset(root, "train", ["ret.jsonl"], "ann", "vis_db", num_frames=4, image_size=32, train=True)
    assert [(x["caption"], x["video_index"]) for x in train.items] == [
        ("a man is cooking", 0),
        ("first caption", 1),
        ("second caption", 1),
        ("named again", 0),
    ]
    assert train[1]["video"].shape == (4, 3, 32, 32)  # RandomResizedCrop + flip + RandAugment path
    assert collate([train[0], train[1]])["caption"] == ["a man is cooking", "first caption"]


def test_caption_json_and_grouped_jsonl(root):
    ev = CaptionDataset(root, "test", ["cap_test.json"], "ann", "vis_db", **COMMON)
    assert [x["video_id"] for x in ev.items] == ["video0", "video1"]
    assert ev.items[0]["references"] == ["a red square", "red box"]
    tr = CaptionDataset(root, "train", ["cap_grouped.jsonl"], "ann", "vis_db", num_frames=4, image_size=32, train=True)
    assert [x["caption"] for x in tr.items] == ["x y", "y z"]


def test_msrvtt_qa_json(root):
    ds = VideoQADataset(root, "test", ["qa_test.json"], "ann", "vis_db", **COMMON)
    item = ds[0]
    assert item["video_id"] == "video7010" and item["question"] == "what is red?"
    assert item["answer"] == "square" and item["weight"] == 1.0 and item["instance_id"] == 0
    assert item["question_id"] == 12


def test_nextqa_csv_conversion_and_reader(root):
    from mmzoo.testing import text_writes_stopped_midway

    out = root / "ann" / "nextqa_test.json"
    with text_writes_stopped_midway(), pytest.raises(KeyboardInterrupt):
        convert_nextqa_csv([root / "ann" / "test.csv"], out)
    assert not out.exists() and not list(out.parent.glob("*partial"))  # a stopped conversion leaves nothing
    assert convert_nextqa_csv([root / "ann" / "test.csv"], out) == 1
    ds = NExTQADataset(root, "test", ["nextqa_test.json"], "ann", "vis_db", **COMMON)
    item = ds[0]
    assert item["answer"] == 2 and item["type"] == "TP" and len(item["candidates"]) == 5
    assert item["candidates"][2] == "question what happens first? answer red"  # ":" removed by the normaliser
    b = collate([item, item])
    assert b["answer"].tolist() == [2, 2] and b["video"].shape == (2, 4, 3, 32, 32)


def test_missing_files_and_keys(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*README, Data preparation"):
        RetrievalDataset(root, "test", ["nope.jsonl"], "ann", "vis_db", **COMMON)
    with pytest.raises(FileNotFoundError, match="no LMDB"):
        RetrievalDataset(root, "test", ["ret.jsonl"], "ann", "missing_db", **COMMON)
    (tmp_path / "ann").mkdir()
    write_lmdb(tmp_path / "db", {"v": b"x"})
    (tmp_path / "ann" / "bad.json").write_text(json.dumps([{"video": "v.mp4", "question": "q"}]))
    with pytest.raises(KeyError, match=r"\['answer', 'question_id'\]"):
        VideoQADataset(tmp_path, "test", ["bad.json"], "ann", "db", **COMMON)
    with pytest.raises(KeyError, match="not in the LMDB"):
        LMDBVideoStore(root / "vis_db").get("video999")


def test_malformed_annotations_name_the_file_and_line(tmp_path):
    (tmp_path / "ann").mkdir()
    write_lmdb(tmp_path / "db", {"v": b"x"})
    ann = tmp_path / "ann"
    cases = [
        (
            RetrievalDataset,
            "a.jsonl",
            '{"clip_name": "v", "caption": "x"}\n\n{"clip_name": "v", caption: 1}\n',
            r"annotation file .*a\.jsonl' line 3 is not valid JSON",
        ),
        (VideoQADataset, "b.json", '[{"video": "v"},]', r"annotation file .*b\.json' is not valid JSON"),
        (RetrievalDataset, "c.jsonl", '["v", "a caption"]\n', r"c\.jsonl' item 0: expected a JSON object, got list"),
        (
            CaptionDataset,
            "d.jsonl",
            json.dumps({"clip_name": "v", "caption": ["ok", 5]}) + "\n",
            r"d\.jsonl' item 0: 'caption'",
        ),
    ]
    row = {"video": "v", "qid": 1, "type": "CW", "question": "why", "answer": 0, **{f"a{k}": "x" for k in range(5)}}
    for i, answer in enumerate(("two", 5)):
        text = json.dumps([row, {**row, "answer": answer}])  # item 0 is valid
        cases.append((NExTQADataset, f"n{i}.json", text, rf"n{i}\.json' item 1: 'answer' must be the index \(0\.\.4\)"))
    qa = {"video": "v", "question": "what is it?", "answer": "a dog", "question_id": 1}
    for i, bad in enumerate(({"answer": ["dog", "a dog"]}, {"answer": None}, {"question": ["what"]})):
        text = json.dumps([qa, {**qa, **bad}])  # item 0 is valid
        pattern = rf"q{i}\.json' item 1: 'question' must be a string and 'answer' one answer string"
        cases.append((VideoQADataset, f"q{i}.json", text, pattern))
    for cls, name, text, pattern in cases:
        (ann / name).write_text(text)
        with pytest.raises(ValueError, match=pattern):
            cls(tmp_path, "test", [name], "ann", "db", **COMMON)
    with open(ann / "bad.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NEXTQA_CSV_HEADER)
        w.writerow(["v", 8, 32, 32, "why", 1, 7, "CW", "a", "b", "c", "d", "e"])
        w.writerow(["v", 8, 32, 32, "why", "b", 8, "CW", "a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match=r"bad\.csv' line 3: 'qid' and 'answer' must be integers"):
        convert_nextqa_csv([ann / "bad.csv"], tmp_path / "out.json")


def test_corrupt_video_raise_or_skip(root, tmp_path, caplog):
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "c.jsonl").write_text(
        json.dumps({"clip_name": "bad", "caption": ["x", "z"]})
        + "\n"
        + json.dumps({"clip_name": "video0", "caption": "y"})
        + "\n"
    )
    import shutil

    shutil.copytree(root / "vis_db", tmp_path / "vis_db")
    strict = RetrievalDataset(tmp_path, "test", ["c.jsonl"], "ann", "vis_db", **COMMON)
    from mmzoo.video import VideoDecodeError

    with pytest.raises(VideoDecodeError):
        strict[0]
    skip = RetrievalDataset(tmp_path, "test", ["c.jsonl"], "ann", "vis_db", on_corrupt="skip", **COMMON)
    with caplog.at_level(logging.WARNING):
        assert skip[0] is None
    assert "bad" in caplog.text
    batch = collate([skip[0], skip[1]])
    assert batch["video"].shape[0] == 1
    # the skipped video's captions leave the evaluation with it
    assert batch["captions"] == ["y"] and batch["text_index"].tolist() == [2]
    assert batch["caption_video"].tolist() == [0]
    assert collate([None]) is None


def test_build_lmdb_command_packs_video_files(tmp_path):
    from mmzoo.testing import make_pattern_video
    from mmzoo.video import VideoReader

    from rtqvl.cli import main
    from rtqvl.data import LMDBVideoStore

    videos = tmp_path / "videos" / "sub"
    make_pattern_video(videos / "video7.mp4", num_frames=6)
    make_pattern_video(videos / "video9.mp4", num_frames=8)
    assert main(["build-lmdb", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "db")]) == 0
    store = LMDBVideoStore(tmp_path / "db")
    assert sorted(store.keys()) == ["video7", "video9"]
    with VideoReader(store.get("video9")) as r:
        assert r.num_frames == 8
    with pytest.raises(FileNotFoundError, match="no video files"):
        main(["build-lmdb", "--videos", str(tmp_path / "db"), "--out", str(tmp_path / "db2")])


def test_synthetic_event_decodes_identically_in_either_half():
    """All-intra clips: an order-blind model gets no position cue from codec drift (repro, temporal premise)."""
    from mmzoo.video import VideoReader

    a, b = ("red", "left"), ("blue", "top")
    with VideoReader(encode_mp4(order_clip(a, b))) as r:
        ab = r.get_frames(list(range(8)))
    with VideoReader(encode_mp4(order_clip(b, a))) as r:
        ba = r.get_frames(list(range(8)))
    assert torch.equal(ab[:4], ba[4:]) and torch.equal(ab[4:], ba[:4])


def test_order_task_test_set_has_distinct_clips(tmp_path):
    """Seed 201's first 16 shuffled pairs hold a pair and its reverse: with both, the gallery would hold two
    identical clips (and two identical captions), capping R@1 of their captions at ½ under the mean tie rule."""
    import random

    from rtqvl.synthetic import order_pairs, write_order_dataset

    plain = order_pairs(16, random.Random(201))
    assert any((b, a) in set(plain) for a, b in plain)  # the draw this guards against
    pairs = order_pairs(16, random.Random(201), unordered=True)
    assert len(pairs) == 16 and not any((b, a) in set(pairs) for a, b in pairs)
    for seed in (0, 1, 2):  # seeds without such a twin draw the same pairs as before
        assert order_pairs(16, random.Random(seed), unordered=True) == order_pairs(16, random.Random(seed))
    root = write_order_dataset(tmp_path, num_train=2, num_test=32, seed=201)
    rows = [json.loads(x) for x in (root / "txt_db/msrvtt_retrieval/test.jsonl").read_text().splitlines()]
    captions = [r["caption"] for r in rows]
    assert len(captions) == 32 and len(set(captions)) == 32
    train = (root / "txt_db/msrvtt_retrieval/train.jsonl").read_text().splitlines()
    assert not {json.loads(x)["caption"] for x in train} & set(captions)


def test_training_skip_replaces_an_unreadable_clip(root, tmp_path, caplog):
    # dropping it would shrink the batch: the ITC queue needs a constant global batch, DDP gathers equal shapes
    import shutil

    from mmzoo.video import VideoDecodeError

    (tmp_path / "ann").mkdir()
    rows = [{"clip_name": "bad", "caption": "x"}] + [{"clip_name": "video0", "caption": "y"}]
    (tmp_path / "ann" / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(root / "vis_db", tmp_path / "vis_db")
    common = {**COMMON, "train": True, "augment": False}
    ds = RetrievalDataset(tmp_path, "train", ["c.jsonl"], "ann", "vis_db", on_corrupt="skip", **common)
    with caplog.at_level(logging.WARNING):
        items = [ds[0] for _ in range(3)]
    assert "bad" in caplog.text
    assert all(x is not None and x["video_id"] == "video0" and x["index"] == 1 for x in items)
    assert collate([ds[0], ds[1]])["video"].shape[0] == 2
    (tmp_path / "ann" / "all_bad.jsonl").write_text(json.dumps(rows[0]) + "\n")
    ds = RetrievalDataset(tmp_path, "train", ["all_bad.jsonl"], "ann", "vis_db", on_corrupt="skip", **common)
    with pytest.raises(VideoDecodeError, match="substitutes"):
        ds[0]


def test_build_lmdb_keys_are_the_ids_the_readers_look_up(tmp_path):
    from mmzoo.testing import make_pattern_video

    from rtqvl.cli import main
    from rtqvl.data import LMDBVideoStore, video_key

    make_pattern_video(tmp_path / "videos" / "clip7.trim.mp4", num_frames=6)
    assert main(["build-lmdb", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "db")]) == 0
    assert LMDBVideoStore(tmp_path / "db").keys() == [video_key("clip7.trim.mp4")] == ["clip7"]
    make_pattern_video(tmp_path / "videos" / "other" / "clip7.mp4", num_frames=6)
    with pytest.raises(ValueError, match="share the video id 'clip7'"):
        main(["build-lmdb", "--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "db2")])


def test_nextqa_missing_option_named(tmp_path):
    """A null option would become the candidate "question: …? answer: none" (NaN: "answer: nan") and be scored as
    an answer the annotation never gave; it is an error naming the file, item and key. A number is its text."""
    (tmp_path / "ann").mkdir()
    write_lmdb(tmp_path / "db", {"v": b"x"})
    row = {
        "video": "v",
        "qid": 1,
        "type": "CW",
        "question": "why",
        "answer": 0,
        **{f"a{k}": f"opt {k}" for k in range(5)},
    }
    cases = [
        ({"a0": None}, r"option 'a0' must be a non-empty answer string, got None"),
        ({"a3": float("nan")}, r"option 'a3' must be a non-empty answer string, got nan"),
        ({"a4": "  "}, r"option 'a4' must be a non-empty answer string, got '  '"),
        ({"a1": ["x"]}, r"option 'a1' must be a non-empty answer string, got \['x'\]"),
        ({"question": None}, r"'question' must be a string, got None"),
    ]
    for i, (bad, pattern) in enumerate(cases):
        (tmp_path / "ann" / f"n{i}.json").write_text(json.dumps([row, {**row, **bad}]))  # item 0 is valid
        with pytest.raises(ValueError, match=rf"n{i}\.json' item 1: {pattern}"):
            NExTQADataset(tmp_path, "test", [f"n{i}.json"], "ann", "db", **COMMON)
    (tmp_path / "ann" / "ok.json").write_text(json.dumps([{**row, "a2": 2}]))
    ds = NExTQADataset(tmp_path, "test", ["ok.json"], "ann", "db", **COMMON)
    assert ds.items[0]["options"] == ["opt 0", "opt 1", "2", "opt 3", "opt 4"]
    assert ds.items[0]["candidates"][2] == "question why? answer 2"
    # the CSV converter: a short row (DictReader fills None, written as null) or an empty cell names the line
    with open(tmp_path / "ann" / "short.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NEXTQA_CSV_HEADER)
        w.writerow(["v", 8, 32, 32, "why", 1, 7, "CW", "a", "b", "c", "d", "e"])
        w.writerow(["v", 8, 32, 32, "why", 1, 8, "CW", "a", "", "c", "d"])
    with pytest.raises(ValueError, match=r"short\.csv' line 3: option\(s\) \['a1', 'a4'\] are empty or missing"):
        convert_nextqa_csv([tmp_path / "ann" / "short.csv"], tmp_path / "out.json")


def test_video_names_that_share_an_id_named(tmp_path):
    """Ids end at the first '.' (official, and the keys of build-lmdb): 'a.1.mp4' and 'a.2.mp4' would both read the
    LMDB entry 'a', their captions merged as one video's (one retrieval target, one set of references). Every reader
    refuses that, naming both places; the same video written with and without its file suffix is one video."""
    (tmp_path / "ann").mkdir()
    write_lmdb(tmp_path / "db", {"clip": b"x", "video0": b"x"})
    ann = tmp_path / "ann"
    (ann / "ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"clip_name": "clip.a", "caption": "one"}, {"clip_name": "video0", "caption": "two"},
        {"clip_name": "clip.a.mp4", "caption": "three"}, {"video": "video0.MP4", "caption": "four"},
    ]))  # fmt: skip
    ds = RetrievalDataset(tmp_path, "test", ["ok.jsonl"], "ann", "db", **COMMON)
    assert ds.num_videos == 2 and [x["captions"] for x in ds.items] == [["one", "three"], ["two", "four"]]
    nextqa = {"qid": 1, "type": "CW", "question": "why", "answer": 0, **{f"a{k}": "x" for k in range(5)}}
    qa = {"question": "what?", "answer": "a", "question_id": 1}
    cases = [
        (RetrievalDataset, "r.jsonl", "\n".join(json.dumps({"clip_name": v, "caption": "c"}) for v in ("clip.a", "clip.b"))),
        (CaptionDataset, "c.json", json.dumps([{"image_id": v, "caption": "c"} for v in ("clip.a.mp4", "clip.b.mp4")])),
        (VideoQADataset, "q.json", json.dumps([{"video": v, **qa} for v in ("clip.a.mp4", "clip.b.mp4")])),
        (NExTQADataset, "n.json", json.dumps([{"video": v, **nextqa} for v in ("clip.a", "clip.b")])),
    ]  # fmt: skip
    for cls, name, text in cases:
        (ann / name).write_text(text)
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}' item 1: video 'clip\.b(\.mp4)?' and video "
                                             rf"'clip\.a' \('.*{name.replace('.', '[.]')}' item 0\) share the video id "
                                             r"'clip'"):  # fmt: skip
            cls(tmp_path, "test", [name], "ann", "db", **COMMON)
    # across the files of one split (train = train + val): the second file's item is named
    (ann / "r2.jsonl").write_text(json.dumps({"clip_name": "clip.z", "caption": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"r2[.]jsonl' item 0: video 'clip[.]z' and video 'clip[.]a' \('.*ok[.]jsonl"):
        RetrievalDataset(tmp_path, "train", ["ok.jsonl", "r2.jsonl"], "ann", "db", **{**COMMON, "train": True})


def test_nextqa_question_type_checked(tmp_path):
    """The per-type accuracies group questions by the first letter of 'type' (C, T, D): a null, blank or unknown type
    would count in the overall accuracy but in no group (str(None) is 'None'); the reader and the CSV converter name
    the file and item / line. A type with surrounding white space is read stripped."""
    (tmp_path / "ann").mkdir()
    write_lmdb(tmp_path / "db", {"v": b"x"})
    row = {"video": "v", "qid": 1, "type": "CW", "question": "why", "answer": 0, **{f"a{k}": "x" for k in range(5)}}
    for i, bad in enumerate((None, "", "  ", "XW", 3, ["CW"])):
        (tmp_path / "ann" / f"t{i}.json").write_text(json.dumps([row, {**row, "type": bad}]))  # item 0 is valid
        with pytest.raises(ValueError, match=rf"t{i}\.json' item 1: 'type' must be a NExT-QA question type whose first "
                                             rf"letter is C \(causal\), T \(temporal\) or D \(descriptive\).*got "
                                             rf"{re.escape(repr(bad))}"):  # fmt: skip
            NExTQADataset(tmp_path, "test", [f"t{i}.json"], "ann", "db", **COMMON)
    (tmp_path / "ann" / "ok.json").write_text(json.dumps([{**row, "type": " tn "}, {**row, "type": "DO"}]))
    ds = NExTQADataset(tmp_path, "test", ["ok.json"], "ann", "db", **COMMON)
    assert [x["type"] for x in ds.items] == ["tn", "DO"]
    with open(tmp_path / "ann" / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NEXTQA_CSV_HEADER)
        w.writerow(["v", 8, 32, 32, "why", 1, 7, "CW", "a", "b", "c", "d", "e"])
        w.writerow(["v", 8, 32, 32, "why", 1, 8, "", "a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match=r"t\.csv' line 3: 'type' must be a NExT-QA question type.*got ''"):
        convert_nextqa_csv([tmp_path / "ann" / "t.csv"], tmp_path / "out.json")


def test_unknown_on_corrupt_refused(root):  # it used to skip unreadable clips like "skip"
    assert len(RetrievalDataset(root, "test", ["ret.jsonl"], "ann", "vis_db", **COMMON)) == 2
    with pytest.raises(ValueError, match="data.on_corrupt='skp': expected one of"):
        RetrievalDataset(root, "test", ["ret.jsonl"], "ann", "vis_db", on_corrupt="skp", **COMMON)
    with pytest.raises(ValueError, match="data.on_corrupt='Raise': expected one of"):
        RTQDataModule(data_root=str(root), on_corrupt="Raise")
