"""Unusual but legal samples of real data: one-frame and short videos, empty / punctuation-only / non-ASCII /
over-long texts, batches of one, a batch whose captions all describe one video."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rtqvl_testlib import tiny_config

from rtqvl.cli import main
from rtqvl.data import RetrievalDataset, collate, head_tail_indices, uniform_eval_indices, write_lmdb
from rtqvl.losses import itm_negative_indices
from rtqvl.module import RTQModule
from rtqvl.synthetic import encode_mp4, order_clip

ODD = ["", "   ", "...!?", "un café très bon", "😀😀", "一个男人在弹吉他", "word " * 80]


def test_one_frame_and_short_videos_fill_every_sampled_frame(tmp_path):
    for n in (1, 2, 3):
        for _ in range(20):
            assert all(0 <= i < n for i in head_tail_indices(n, 4)) and len(head_tail_indices(n, 4)) == 4
        assert uniform_eval_indices(n, 4) == sorted(uniform_eval_indices(n, 4)) and max(uniform_eval_indices(n, 4)) < n
    one = encode_mp4(order_clip(("red", "left"), ("blue", "top"), num_frames=1))
    two = encode_mp4(order_clip(("red", "left"), ("blue", "top"), num_frames=2))
    write_lmdb(tmp_path / "vis_db", {"one": one, "two": two})
    (tmp_path / "ann").mkdir()
    rows = [{"clip_name": "one", "caption": ODD[:4]}, {"clip_name": "two", "caption": ODD[4:]}]
    (tmp_path / "ann" / "ret.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for train in (True, False):
        ds = RetrievalDataset(tmp_path, "test", ["ret.jsonl"], "ann", "vis_db", 4, 32, train, augment=False)
        batch = collate([ds[i] for i in range(len(ds))])
        assert batch["video"].shape[1:] == (4, 3, 32, 32) and torch.isfinite(batch["video"]).all()
    assert ds.items[0]["captions"][:3] == ["", "", "?"]  # normalised: empty and punctuation-only captions stay legal


def _quiet(module):
    module.log = lambda *a, **k: None
    return module


def _batch(task: str, texts: list[str]) -> dict:
    b = len(texts)
    video = torch.randn(b, 4, 3, 32, 32)
    if task == "retrieval":
        return {"video": video, "caption": texts, "video_index": torch.arange(b)}
    if task == "captioning":
        return {"video": video, "caption": texts, "references": [[t] for t in texts], "index": torch.arange(b)}
    if task == "qa":
        return {"video": video, "question": texts, "answer": texts, "weight": torch.ones(b), "index": torch.arange(b)}
    return {"video": video, "candidates": [[t] * 5 for t in texts], "label": torch.zeros(b, dtype=torch.long),
            "answer": torch.zeros(b, dtype=torch.long), "index": torch.arange(b)}  # fmt: skip


@pytest.mark.parametrize("task", ["retrieval", "captioning", "qa", "multiple_choice"])
def test_odd_texts_and_batches_of_one_train_with_a_finite_loss(task):
    torch.manual_seed(0)
    module = _quiet(RTQModule(tiny_config(task, queue_size=14), lr=1e-3))
    for texts in (ODD, ODD[:1]) if task != "retrieval" else (ODD,):
        loss = module.training_step(_batch(task, texts), 0)
        loss.backward()
        assert math.isfinite(loss.item())
        module.zero_grad()


def test_itm_negatives_without_another_video_name_the_batch_size():
    with pytest.raises(ValueError, match=r"only one video \(video index 5\).*data.batch_size"):
        itm_negative_indices(torch.randn(3, 3), torch.tensor([5, 5, 5]), 0.07)
    with pytest.raises(ValueError, match=r"only one video \(video index 0\).*data.batch_size"):
        itm_negative_indices(torch.randn(1, 1), torch.tensor([0]), 0.07)


def test_retrieval_fit_with_batches_of_one_is_refused_at_setup(tmp_path):
    args = ["fit", "--config", "tiny", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
            "--data.data_root", str(tmp_path / "data"), "--data.demo_num_train", "4", "--data.demo_num_test", "2",
            "--data.batch_size", "1"]  # fmt: skip
    with pytest.raises(ValueError, match=r"data.batch_size=1: retrieval training \(model.config.task=retrieval\)"):
        main(args)
