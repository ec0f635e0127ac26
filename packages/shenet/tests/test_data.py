"""Readers of the official formats (spec §4, §8b): tiny files written in each format and read back."""

import csv
import json
import pickle

import pytest
import torch
from mmzoo.testing import make_pattern_video
from mmzoo.video import VideoDecodeError, write_video

from shenet.data import (
    ActivityNetDataset,
    DiDeMoDataset,
    DigitsDataset,
    MSRVTTDataset,
    MSVDDataset,
    RetrievalCollate,
    SHENetDataModule,
    load_frames,
)
from shenet.hierarchy import ParserConfig, build_parser
from shenet.tokenization import TextEncoder

KW = dict(max_frames=4, image_size=32)


def video(path, seconds=3, fps=4):
    """A video of ``seconds`` at ``fps`` -> ``seconds`` frames at 1 fps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".avi":
        return write_video(
            path, torch.randint(0, 255, (seconds * fps, 3, 48, 64), dtype=torch.uint8), fps=fps, codec="mpeg4"
        )
    return make_pattern_video(path, num_frames=seconds * fps, fps=fps, height=48, width=64, gop=4)


def write_msrvtt(root):
    videos = [f"video{k}" for k in range(4)]
    sentences = [
        {"caption": f"a man plays guitar {k} {j}", "video_id": v, "sen_id": 10 * k + j}
        for k, v in enumerate(videos)
        for j in range(2)
    ]
    (root / "MSRVTT_data.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "MSRVTT_data.json").write_text(
        json.dumps(
            {
                "info": {},
                "videos": [
                    {
                        "video_id": v,
                        "url": "",
                        "category": 0,
                        "start time": 0.0,
                        "end time": 3.0,
                        "split": "train",
                        "id": k,
                    }
                    for k, v in enumerate(videos)
                ],
                "sentences": sentences,
            }
        )
    )
    with open(root / "MSRVTT_train.9k.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video_id"], ["video0"], ["video1"]])
    with open(root / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["key", "vid_key", "video_id", "sentence"],
                ["ret0", "msr2", "video2", "a dog runs"],
                ["ret1", "msr3", "video3", "a cat sleeps"],
            ]
        )
    video(root / "videos" / "video0.mp4", seconds=6)  # 6 s -> subsampled to 4 frames
    video(root / "videos" / "video1.mp4", seconds=2)  # 2 s -> 2 frames + padding
    video(root / "videos" / "video2.mp4")
    video(root / "videos" / "sub" / "video3.mkv")  # any extension, searched recursively


def test_load_frames_1fps_subsample_and_pad(tmp_path):
    path = video(tmp_path / "v.mp4", seconds=6)
    v, m = load_frames(path, 4, 32)
    assert v.shape == (4, 3, 32, 32) and m.all()
    path = video(tmp_path / "w.mp4", seconds=2)
    v, m = load_frames(path, 4, 32)
    assert m.tolist() == [True, True, False, False] and v[2:].abs().sum() == 0


def test_msrvtt(tmp_path):
    write_msrvtt(tmp_path)
    train = MSRVTTDataset(tmp_path, "train", **KW)
    assert len(train) == 4 and train.texts()[0] == "a man plays guitar 0 0"  # unfolded pairs
    item = train[0]
    assert item["video"].shape == (4, 3, 32, 32) and item["video_mask"].all()
    assert train[2]["video_mask"].tolist() == [True, True, False, False]
    test = MSRVTTDataset(tmp_path, "test", **KW)
    assert len(test) == 2 and test[1]["captions"] == ["a cat sleeps"] and test[1]["text_ids"] == [1]
    (tmp_path / "MSRVTT_JSFUSION_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="MSRVTT_JSFUSION_test.csv.*README, Data preparation"):
        MSRVTTDataset(tmp_path, "test", **KW)
    data = json.loads((tmp_path / "MSRVTT_data.json").read_text())
    del data["sentences"][1]["caption"]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(KeyError, match=r"MSRVTT_data.json: sentences\[1\] lacks key 'caption'"):
        MSRVTTDataset(tmp_path, "train", **KW)


def test_msvd_multi_caption(tmp_path):
    with open(tmp_path / "raw-captions.pkl", "wb") as f:
        pickle.dump({"vidA": [["a", "man", "sings"], ["someone", "sings"]], "vidB": [["a", "dog", "runs"]]}, f)
    (tmp_path / "train_list.txt").write_text("vidA\n")
    (tmp_path / "test_list.txt").write_text("vidA\nvidB\n")
    video(tmp_path / "videos" / "vidA.avi")
    video(tmp_path / "videos" / "vidB.mp4")
    train = MSVDDataset(tmp_path, "train", **KW)
    assert train.texts() == ["a man sings", "someone sings"] and len(train) == 2
    test = MSVDDataset(tmp_path, "test", **KW)
    assert len(test) == 2 and test.num_queries == 3
    assert test[0]["captions"] == ["a man sings", "someone sings"] and test[1]["text_ids"] == [2]
    with pytest.raises(FileNotFoundError, match="val_list.txt"):
        MSVDDataset(tmp_path, "val", **KW)
    with open(tmp_path / "raw-captions.pkl", "wb") as f:  # strings, not token lists: joining would space out letters
        pickle.dump({"vidA": ["a man sings"], "vidB": [["a", "dog", "runs"]]}, f)
    with pytest.raises(ValueError, match="raw-captions.pkl: the captions of video 'vidA' are strings"):
        MSVDDataset(tmp_path, "test", **KW)


def test_didemo_paragraphs(tmp_path):
    rows = [
        {"video": "a.mp4", "times": [[0, 0]], "description": "a man walks in."},
        {"video": "b.mp4", "times": [[1, 2]], "description": "a dog barks."},
        {"video": "a.mp4", "times": [[2, 3]], "description": "he sits down."},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(rows))
    (tmp_path / "test_list.txt").write_text("a.mp4\nb.mp4\n")
    video(tmp_path / "videos" / "a.mp4")
    video(tmp_path / "videos" / "b.mp4")
    ds = DiDeMoDataset(tmp_path, "test", **KW)
    assert ds.texts() == ["a man walks in. he sits down.", "a dog barks."]
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "a.mp4"}]))
    with pytest.raises(KeyError, match="description"):
        DiDeMoDataset(tmp_path, "test", **KW)


def test_activitynet_paragraphs(tmp_path):
    ann = {
        "v_abc": {"duration": 2.5, "timestamps": [[0, 1], [1, 2.5]], "sentences": ["A man cooks.", " He eats."]},
        "v_xyz": {"duration": 3.0, "timestamps": [[0, 3]], "sentences": ["Kids play."]},
    }
    (tmp_path / "val_1.json").write_text(json.dumps(ann))
    (tmp_path / "val_ids.json").write_text(json.dumps(["v_abc", "v_xyz"]))
    video(tmp_path / "videos" / "abc.mp4")
    video(tmp_path / "videos" / "xyz.mp4")
    ds = ActivityNetDataset(tmp_path, "test", **KW)
    assert ds.videos == ["abc", "xyz"] and ds.texts() == ["A man cooks. He eats.", "Kids play."]
    assert ds[0]["video_mask"].sum() == 3  # 0 .. ceil(2.5) s at 1 fps
    with pytest.raises(FileNotFoundError, match="train.json"):
        ActivityNetDataset(tmp_path, "train", **KW)


def test_missing_and_corrupt_videos(tmp_path):
    write_msrvtt(tmp_path)
    (tmp_path / "videos" / "video2.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoDecodeError):
        MSRVTTDataset(tmp_path, "test", **KW)[0]
    ds = MSRVTTDataset(tmp_path, "test", on_corrupt="skip", **KW)
    item = ds[0]  # logged, fed as an all-padding video
    assert not item["video_mask"].any()
    (tmp_path / "videos" / "sub" / "video3.mkv").unlink()
    with pytest.raises(FileNotFoundError, match="not found under data.videos_dir"):
        MSRVTTDataset(tmp_path, "test", **KW)
    assert len(MSRVTTDataset(tmp_path, "test", on_corrupt="skip", **KW)) == 1


def test_collate_and_digits():
    ds = DigitsDataset("val", num_videos=8, seed=0, image_size=32)
    assert ds.texts()[0].startswith("a ") and ds[0]["video"].shape == (4, 3, 32, 32)
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    batch = RetrievalCollate(enc)([ds[i] for i in range(3)])
    assert batch["video"].shape == (3, 4, 3, 32, 32) and batch["text_input_ids"].shape == (3, 16)
    assert batch["caption_video"].tolist() == [0, 1, 2] and batch["text_ids"].tolist() == [0, 1, 2]
    assert batch["text_noun_mask"].any(-1).all()
    with pytest.raises(ValueError, match="empty batch"):
        RetrievalCollate(enc)([])


def test_datamodule_generates_demo_data(tmp_path):
    dm = SHENetDataModule(
        dataset="msrvtt",
        data_root=str(tmp_path / "d"),
        max_frames=4,
        max_words=16,
        image_size=32,
        parser=ParserConfig(backend="heuristic"),
        batch_size=4,
        num_workers=0,
        pin_memory=False,
        generate_demo_data=True,
        demo_num_train=8,
        demo_num_test=4,
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4, 3, 32, 32) and dm.num_queries("val") == 4
    assert dm.state_dict()["parser_backend"] == "heuristic"


def test_parse_command_writes_cache(tmp_path):
    from shenet.cli import main
    from shenet.hierarchy import PrecomputedParser

    write_msrvtt(tmp_path)
    out = main(args=["parse", "--dataset", "msrvtt", "--data_root", str(tmp_path), "--backend", "heuristic"])
    parser = PrecomputedParser(out)
    assert out == tmp_path / "shenet_parses.json"
    assert set(parser.entries) == {
        "a man plays guitar 0 0",
        "a man plays guitar 0 1",
        "a man plays guitar 1 0",
        "a man plays guitar 1 1",
        "a dog runs",
        "a cat sleeps",
    }
    assert [n.level for n in parser("a dog runs").nodes] == ["noun", "verb"]


def test_split_annotation_mismatch_raises_or_warns(tmp_path, caplog):
    import logging

    d = tmp_path / "didemo"
    d.mkdir()
    (d / "test_data.json").write_text(json.dumps([{"video": "x1.mov", "times": [[0, 0]], "description": "a dog"}]))
    (d / "test_list.txt").write_text("x1\n")  # ids without the extension: nothing matches
    with pytest.raises(ValueError, match=r"test_list.txt \(e.g. 'x1'\).*test_data.json \(e.g. 'x1.mov'\)"):
        DiDeMoDataset(d, "test", **KW)
    a = tmp_path / "anet"
    a.mkdir()
    ann = {"v_abc": {"duration": 2.0, "sentences": ["a man runs."]}, "v_xyz": {"duration": 2.0, "sentences": ["b"]}}
    (a / "val_1.json").write_text(json.dumps(ann))
    (a / "val_ids.json").write_text(json.dumps(["abc", "xyz"]))  # ids without the v_ prefix
    with pytest.raises(ValueError, match=r"val_ids.json \(e.g. 'abc'\).*val_1.json \(e.g. 'v_abc'\)"):
        ActivityNetDataset(a, "test", **KW)
    (a / "val_ids.json").write_text(json.dumps(["v_abc", "xyz", "v_gone"]))  # partly matching: warn with the count
    video(a / "videos" / "abc.mp4")
    with caplog.at_level(logging.WARNING, logger="shenet.data"):
        ds = ActivityNetDataset(a, "test", **KW)
    assert ds.videos == ["abc"]
    assert "2 of 3 ids" in caplog.text and "'xyz'" in caplog.text


def test_checkpoint_parser_record_is_compared():
    import warnings
    from dataclasses import asdict

    dm = SHENetDataModule(dataset="digits", parser=ParserConfig(backend="heuristic"), num_workers=0)
    same = {"parser_backend": "heuristic", "parser": asdict(ParserConfig(backend="heuristic"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.load_state_dict(same)  # the run's own record: silent
    other = {"parser_backend": "spacy", "parser": asdict(ParserConfig(backend="spacy"))}
    with pytest.warns(UserWarning, match="parser backend 'spacy' in the checkpoint, 'heuristic' now"):
        dm.load_state_dict(other)
    capped = {**same, "parser": asdict(ParserConfig(backend="heuristic", max_nouns=2))}
    with pytest.warns(UserWarning, match="node caps"):
        dm.load_state_dict(capped)


class _FakeReader:
    """Stands in for mmzoo.video.VideoReader: a video of ``seconds`` at ``fps`` that records the frames asked for."""

    requested: list[list[int]] = []

    def __init__(self, seconds: float, fps: float):
        self.duration, self.fps, self.num_frames = seconds, fps, int(seconds * fps)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_frames(self, idx):
        _FakeReader.requested.append(list(idx))
        return torch.zeros(len(idx), 3, 8, 8, dtype=torch.uint8)


def test_load_frames_subsamples_as_clip4clip(monkeypatch):
    # 20 s at 2 fps -> 20 frames at 1 fps -> 12 of them at np.linspace(0, 19, 12, dtype=int), CLIP4Clip's
    # slice_framepos 2 (truncation: 0, 1, 3, ...; rounding would give 0, 2, 3, 5, 7, ...)
    monkeypatch.setattr("shenet.data.VideoReader", lambda path: _FakeReader(20.0, 2.0))
    _FakeReader.requested = []
    _, mask = load_frames("unused.mp4", 12, 32)
    seconds = [0, 1, 3, 5, 6, 8, 10, 12, 13, 15, 17, 19]
    assert _FakeReader.requested == [[2 * s for s in seconds]] and mask.all()


def test_load_frames_preprocess_as_clip4clip(monkeypatch):
    # spec §3.10 / CLIP4Clip: Resize(224, BICUBIC) on the short side, CenterCrop(224), CLIP normalisation; here on
    # 3 frames of 45 x 71 to 32 (the long side truncated to 50, an odd margin of 18 / 2 = 9 columns)
    tf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    frames = torch.randint(0, 256, (3, 3, 45, 71), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    class Reader(_FakeReader):
        def get_frames(self, idx):
            return frames[list(idx)]

    monkeypatch.setattr("shenet.data.VideoReader", lambda path: Reader(3.0, 1.0))
    video, mask = load_frames("unused.mp4", 4, 32)
    resized = tf.resize(frames, 32, interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert resized.shape[-2:] == (32, 50)
    expected = tf.normalize(
        tf.center_crop(resized, [32, 32]).float() / 255,
        [0.48145466, 0.4578275, 0.40821073],
        [0.26862954, 0.26130258, 0.27577711],
    )
    assert mask.tolist() == [True, True, True, False]
    assert torch.allclose(video[:3], expected, atol=1e-5) and not video[3].any()


def test_didemo_clip_is_first_31_seconds(tmp_path, monkeypatch):
    # spec §4: the DiDeMo clip is 0 to 31 s (annotations cover the first 30 s), also for longer videos
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "a.mp4", "times": [[0, 1]], "description": "x"}]))
    (tmp_path / "test_list.txt").write_text("a.mp4\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    monkeypatch.setattr("shenet.data.VideoReader", lambda path: _FakeReader(40.0, 1.0))
    _FakeReader.requested = []
    item = DiDeMoDataset(tmp_path, "test", max_frames=64, image_size=32)[0]
    assert _FakeReader.requested == [list(range(31))] and int(item["video_mask"].sum()) == 31


def test_clip_end_applies_without_container_duration(monkeypatch):
    """Spec §4 (DiDeMo: 0 to 31 s) also when the container records no duration: the length then comes from the frame
    count, and the clip's end still cuts it."""

    class NoDuration(_FakeReader):
        def __init__(self, seconds: float, fps: float):
            super().__init__(seconds, fps)
            self.duration = 0.0  # unknown to the container

    monkeypatch.setattr("shenet.data.VideoReader", lambda path: NoDuration(40.0, 1.0))
    _FakeReader.requested = []
    _, mask = load_frames("unused.mp4", 64, 32, start=0.0, end=31.0)
    assert _FakeReader.requested == [list(range(31))] and int(mask.sum()) == 31
    _FakeReader.requested = []
    _, mask = load_frames("unused.mp4", 64, 32)  # no clip end: the whole video
    assert _FakeReader.requested == [list(range(40))] and int(mask.sum()) == 40
