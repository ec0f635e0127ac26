"""Unusual but legal samples of real annotation files: odd captions, captions without significant words, short
videos, clip times outside the video, batches of one; and malformed values named with their file and line."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from mmzoo.testing import make_pattern_video

from snps3.data import CaptionProcessor, VideoStore, read_jsonl
from snps3.losses import milnce_loss, moco_contrastive_loss
from snps3.significant import _caption_lines

sys.path.insert(0, str(Path(__file__).parent))
from test_data import dm  # noqa: E402

ODD = ["", "   ", "...!?", "un café très bon", "😀😀", "一个男人在弹吉他", "the and of it", "word " * 60]


@pytest.mark.parametrize("mask", [False, True])
def test_odd_captions_pack_to_cls_sep_and_restore(synthetic_root, mask):
    proc: CaptionProcessor = dm(synthetic_root).processor()
    for text in ODD:
        out = proc(text, True, random.Random(0), mask=mask)
        ids, attn = out["input_ids"], out["attention_mask"]
        n = int(attn.sum())
        assert ids.shape == (16,) and 2 <= n <= 16 and ids[0] == proc.cls_id and ids[n - 1] == proc.sep_id
        if mask:  # no significant word in these captions: MSSM falls back to other words, never past the text
            lab = out["mlm_labels"] >= 0
            assert not lab[n - 1 :].any()
            torch.testing.assert_close(torch.where(lab, out["mlm_labels"], out["mlm_input_ids"]), ids)


def test_short_videos_and_clip_times_outside_the_video(tmp_path):
    make_pattern_video(tmp_path / "one.mp4", num_frames=1, fps=4, height=32, width=32)
    make_pattern_video(tmp_path / "three.mp4", num_frames=12, fps=4, height=32, width=32)  # 3 s
    store = VideoStore(tmp_path)
    assert store.read("one", 4, train=True).shape == (4, 3, 32, 32)  # a single frame, repeated
    for start, end in ((1.0, 1.0), (10.0, 20.0), (2.0, 1.0), (-5.0, 100.0), (None, 0.0)):
        assert store.read("three", 4, train=False, start=start, end=end).shape == (4, 3, 32, 32)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row, key",
    [
        ({"clip_name": "a", "caption": None}, "caption"),
        ({"clip_name": 7, "caption": "a dog"}, "clip_name"),
        ({"clip_name": "a", "caption": "a dog", "start": "1.5", "end": 3}, "start"),
        ({"clip_name": "a", "caption": "a dog", "start": 0, "end": float("nan")}, "end"),
    ],
)
def test_malformed_values_name_file_and_line(tmp_path, row, key):
    path = _write(tmp_path / "train.jsonl", [{"clip_name": "b", "caption": "a cat", "start": None}, row])
    with pytest.raises(ValueError, match=rf"train.jsonl:2: '{key}' = "):
        read_jsonl(path, ("clip_name", "caption"))


def test_null_caption_in_mined_files_is_named(tmp_path):
    path = _write(tmp_path / "a.jsonl", [{"caption": "a dog"}, {"caption": None}])
    with pytest.raises(ValueError, match=r"a.jsonl:2: 'caption' = None is not a string"):
        _caption_lines([str(path)])


def test_pretrain_reader_refuses_a_null_caption(synthetic_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    ann = root / "webvid" / "annotations" / "train.jsonl"
    rows = [json.loads(line) for line in ann.read_text().splitlines()]
    rows[1]["caption"] = None
    _write(ann, rows)
    with pytest.raises(ValueError, match=r"train.jsonl:2: 'caption' = None"):
        dm(root).setup("fit")


def test_losses_with_a_batch_of_one_are_finite():
    for t in (1, 3):
        sim = torch.randn(1, 1, t, requires_grad=True)
        loss = milnce_loss(sim)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(sim.grad).all()
    t, v = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1), torch.randn(1, 2, 8)
    out = moco_contrastive_loss(t, v, t, v, torch.randn(4, 8), torch.randn(4, 8))
    assert all(torch.isfinite(x) for x in out.values())
