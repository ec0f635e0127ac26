"""Unusual but legal samples of real datasets: one-frame videos, clips past the end, missing or zero durations,
empty / punctuation-only / non-ASCII / over-long captions, captions without verb or noun, batches of one."""

import json
import math
import pickle

import pytest
import torch
import yaml
from mmzoo.testing import make_pattern_video

from shenet.cli import main
from shenet.data import ActivityNetDataset, DiDeMoDataset, MSRVTTDataset, MSVDDataset, RetrievalCollate, load_frames
from shenet.hierarchy import ParserConfig, build_parser
from shenet.models import SHENetConfig
from shenet.module import SHENetModule
from shenet.tokenization import TextEncoder

KW = dict(max_frames=4, image_size=32)
ODD_TEXTS = [
    "",
    "   ",
    "...!?",
    "un café très bon",
    "😀😀 a dog",
    "一个男人在弹吉他",
    "a man is on stage",
    "word " * 40,
]


def video(path, seconds=3, fps=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_pattern_video(path, num_frames=max(1, int(seconds * fps)), fps=fps, height=48, width=64, gop=4)


def test_one_frame_video_and_clip_past_the_end(tmp_path):
    one = video(tmp_path / "one.mp4", seconds=0.25)  # a single frame
    v, m = load_frames(one, 4, 32)
    assert m.tolist() == [True, False, False, False] and torch.isfinite(v).all()
    three = video(tmp_path / "three.mp4")
    for start, end in ((1.0, 1.0), (10.0, 20.0), (0.0, 0.0), (0.0, 100.0)):  # start == end, outside, empty, past end
        _, m = load_frames(three, 4, 32, 1.0, start, end)
        assert 1 <= int(m.sum()) <= 3


def _activitynet(root, entry):
    (root / "val_1.json").write_text(json.dumps({"v_a": entry}))
    (root / "val_ids.json").write_text(json.dumps(["v_a"]))
    if not (root / "videos" / "a.mp4").is_file():
        video(root / "videos" / "a.mp4")  # 3 s


def test_activitynet_missing_or_zero_duration_reads_the_whole_video(tmp_path):
    for entry in ({"sentences": ["a dog runs"]}, {"duration": None, "sentences": ["a dog runs"]}):
        _activitynet(tmp_path, entry)
        assert int(ActivityNetDataset(tmp_path, "val", **KW)[0]["video_mask"].sum()) == 3
    _activitynet(tmp_path, {"duration": 0, "sentences": ["a dog runs"]})  # 0 would have read one frame
    assert int(ActivityNetDataset(tmp_path, "val", **KW)[0]["video_mask"].sum()) == 3


@pytest.mark.parametrize("duration", [float("nan"), "12.5"])
def test_activitynet_bad_duration_names_file_and_id(tmp_path, duration):
    _activitynet(tmp_path, {"duration": duration, "sentences": ["a dog runs"]})
    with pytest.raises(ValueError, match=r"val_1.json: entry 'v_a' has duration="):
        ActivityNetDataset(tmp_path, "val", **KW)


def test_activitynet_empty_sentences_and_null_sentence(tmp_path):
    _activitynet(tmp_path, {"duration": 3.0, "sentences": []})
    assert ActivityNetDataset(tmp_path, "val", **KW).texts() == [""]  # an empty query, as the official join gives
    _activitynet(tmp_path, {"duration": 3.0, "sentences": ["a dog", None]})
    with pytest.raises(TypeError, match=r"val_1.json: entry 'v_a': 'sentences' must be a list of strings"):
        ActivityNetDataset(tmp_path, "val", **KW)


def test_null_captions_name_file_and_video(tmp_path):
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "a.mp4", "description": None}]))
    (tmp_path / "test_list.txt").write_text("a.mp4\n")
    video(tmp_path / "videos" / "a.mp4")
    with pytest.raises(TypeError, match=r"test_data.json: entry 0 \(video 'a.mp4'\) has description=None"):
        DiDeMoDataset(tmp_path, "test", **KW)
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "a", "caption": None}]}))
    (tmp_path / "MSRVTT_train.9k.csv").write_text("video_id\na\n")
    with pytest.raises(TypeError, match=r"MSR-VTT train .*video 'a' has a caption that is not a string"):
        MSRVTTDataset(tmp_path, "train", **KW)


def test_msvd_empty_token_list_is_an_empty_caption(tmp_path):
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"a": [[], ["a", "dog"]]}))
    (tmp_path / "test_list.txt").write_text("a\n")
    video(tmp_path / "videos" / "a.mp4")
    assert MSVDDataset(tmp_path, "test", **KW).texts() == ["", "a dog"]


def tiny_module(**model_kw) -> SHENetModule:
    from importlib.resources import files

    cfg = yaml.safe_load((files("shenet") / "configs" / "tiny.yaml").read_text())
    return SHENetModule(SHENetConfig(**cfg["model"]["config"]), **model_kw)


def test_odd_captions_and_batch_of_one_give_finite_loss_and_scores():
    torch.manual_seed(0)
    module = tiny_module(aux_weight=0.5)
    collate = RetrievalCollate(TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8))

    def item(i, caption):
        mask = torch.tensor([True] * (1 + i % 4) + [False] * (3 - i % 4))  # 1 to 4 valid frames
        return {"video": torch.randn(4, 3, 32, 32), "video_mask": mask, "video_index": i, "captions": [caption],
                "text_ids": [i]}  # fmt: skip

    for captions in (ODD_TEXTS, ODD_TEXTS[:1], ["same caption"] * 3):
        batch = collate([item(i, c) for i, c in enumerate(captions)])
        ids = batch["text_input_ids"]
        assert (ids[:, 0] == 49406).all() and (ids == 49407).sum(-1).eq(1).all()  # SOT, exactly one EOT
        text = module.model.encode_text(batch)
        vid = module.model.encode_video(batch["video"], batch["video_mask"])
        loss = module.loss(text, vid, module.model.similarity, module.model.logit_scale)["loss"]
        loss.backward()
        assert math.isfinite(float(loss.detach()))
        assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
        module.zero_grad()
        assert torch.isfinite(module.model.similarity_matrix(text, vid, 2, 2)).all()


def test_max_words_beyond_context_is_refused_at_setup(tmp_path):
    args = ["fit", "--config", "tiny", "--trainer.default_root_dir", str(tmp_path), "--data.data_root",
            str(tmp_path / "data"), "--model.config.custom_context_length", "8"]  # fmt: skip
    with pytest.raises(ValueError, match=r"data.max_words=16 exceeds model.config.custom_context_length=8"):
        main(args=args)


def test_check_data_frames_of_seqtransf():
    module = tiny_module()
    module.check_data(16, 4, "msrvtt")  # within limits
    module.config.temporal = "seqTransf"
    with pytest.raises(ValueError, match=r"data.max_frames=12 exceeds model.config.max_frames=4"):
        module.check_data(16, 12, "msrvtt")
