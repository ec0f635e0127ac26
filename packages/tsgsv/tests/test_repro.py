"""Diagnostics of repro.py (spec §8c): the sentence-class probe."""

from pathlib import Path

import numpy as np
import pytest
import torch
from mmzoo.testing import load_script

from tsgsv.data import TSGVEvalDataset, TSGVTrainDataset
from tsgsv.models import StreamingTSGV, TSGSVConfig
from tsgsv.synthetic import SyntheticStreamConfig, write_synthetic_dataset

FILE = "feats_{split}.hdf5"


@pytest.fixture(scope="module")
def repro():
    return load_script(Path(__file__).parents[1] / "repro.py")


def test_nearest_centroid_accuracy_by_hand(repro):
    train_x = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    train_y = torch.tensor([0, 0, 5, 5])
    test_x = torch.tensor(
        [[3.0, 0.2], [0.2, 1.0], [1.0, 1.1]]
    )  # cosine: class 0, class 5, class 5 (closer to (0.05,2))
    assert repro.nearest_centroid_accuracy(train_x, train_y, test_x, torch.tensor([0, 5, 5])) == 1.0
    assert repro.nearest_centroid_accuracy(train_x, train_y, test_x, torch.tensor([0, 0, 7])) == pytest.approx(1 / 3)


def test_sentence_class_parses_synthetic_text(repro):
    assert repro.sentence_class("event of class 7") == 7


def test_sentence_probe_runs_on_synthetic_queries(repro, tmp_path):
    cfg = SyntheticStreamConfig((3, 2, 2), 2, (80, 100), (2, 3), (15, 25), video_dim=6, text_dim=5,
                                video_feature_file=FILE)  # fmt: skip
    root = write_synthetic_dataset(tmp_path / "ds", cfg)
    train = TSGVTrainDataset(root, "train", FILE, short_memory=4, long_memory=8, future_memory=8)
    test = TSGVEvalDataset(root, "val", FILE)
    model = StreamingTSGV(TSGSVConfig(video_dim=6, text_dim=5, hidden_dim=8, ffn_dim=8, num_heads=2, short_memory=4,
                                      long_memory=8, future_memory=8, gru_layers=1, compressor_tokens=[2]))  # fmt: skip
    model.train()
    acc = repro.sentence_probe(model, train, test)
    assert set(acc) == {"q", "P_s(q)_sem"} and all(0.0 <= v <= 1.0 for v in acc.values())
    assert model.training  # the probe restores the mode


def test_matching_batch_targets(repro):
    w = repro.synthetic_prototypes(repro.SyntheticStreamConfig(world_seed=1234))
    world = {k: torch.tensor(w[k]).float() for k in ("onset", "activity", "class_words", "filler")}
    short, sentence, lengths, y, valid = repro.matching_batch(world, 200, torch.Generator().manual_seed(0))
    assert short.shape == (200, 8, 32) and sentence.shape == (200, 20, 32) and (lengths == 6).all()
    assert sentence[:, 6:].abs().sum() == 0 and not y[~valid].any()
    agree = 0
    for b in range(200):  # the onset's class (nearest prototype; frames are noisy) and the query's class word
        first = int((~valid[b]).sum())
        c = int((short[b, first : first + 2].mean(0) @ world["onset"].T).argmax())
        k = int((sentence[b, :6] @ world["class_words"].T).max(0).values.argmax())
        agree += bool(y[b, -1]) == (c == k)
    assert agree >= 190
    assert 0.3 < float(y[:, -1].mean()) < 0.7


def test_matching_check_reports(repro):
    out = repro.matching_check(steps=2, gamma=3.0, report_every=1)
    assert [s for s, _, _ in out] == [0, 1, 2] and all(0 <= a <= 1 and loss >= 0 for _, loss, a in out)


def test_synthetic_query_class_is_recoverable_and_queries_differ(repro, tmp_path):
    """Generator check (spec §8c): each query holds exactly one class word, the one of its sentence, among filler
    words that are never nearer to a class word; the queries of one video name different classes (different events),
    so their y_sem targets differ."""
    cfg = SyntheticStreamConfig((6, 1, 1), 3, video_feature_file=FILE)
    root = write_synthetic_dataset(tmp_path / "ds", cfg)
    world = repro.synthetic_prototypes(cfg)
    words = torch.tensor(np.concatenate([world["class_words"], world["filler"]])).float()  # class words first
    train = TSGVTrainDataset(root, "train", FILE, short_memory=8, long_memory=64, future_memory=64)
    by_video: dict[str, set[int]] = {}
    for a in train.annotations:
        tokens, length = train.files.sentence(a.anno_id)
        nearest = (tokens[:length] @ words.T).argmax(1)
        classes = nearest[nearest < cfg.num_classes].tolist()
        assert classes == [repro.sentence_class(a.sentence)]
        by_video.setdefault(a.video, set())
        assert classes[0] not in by_video[a.video]
        by_video[a.video].add(classes[0])


def test_grid_oracle_smooth_boundaries_reach_every_moment(repro, tmp_path):
    """The proposal-grid diagnostic on generated data: every moment is reachable by some proposal, a smooth perfect
    boundary predictor ranks it first, and a one-frame spike dies in the median filter when the video is long
    enough to be smoothed (T > 128)."""
    cfg = SyntheticStreamConfig((2, 2, 2), 2, (150, 170), (2, 3), (15, 25), video_dim=6, text_dim=5,
                                video_feature_file=FILE)  # fmt: skip
    root = write_synthetic_dataset(tmp_path / "ds", cfg)
    out = repro.grid_oracle(root, "val", repro.GroundingEvalConfig(map_label_extension=0.0))
    assert out["annotations"] > 0 and out["cap"]["IoU>0.5"] == 1.0
    assert out["perfect_gaussian"]["R@1,IoU=0.5"] == 1.0
    assert out["perfect_onehot"]["R@5,IoU=0.3"] == 0.0


def test_wrong_query_partners_stay_in_the_video(repro, tmp_path):
    """Probe wrong_query: each annotation borrows the sentence of another annotation of its own video (cyclically),
    never one of the next video, so the borrowed class is another event's of the same video."""
    assert repro.wrong_query_partners(["a", "a", "b", "b", "b", "a"]) == [1, 5, 3, 4, 2, 0]
    with pytest.raises(ValueError, match="single annotation.*'c'"):
        repro.wrong_query_partners(["a", "a", "c"])
    cfg = SyntheticStreamConfig((2, 3, 2), 3, video_feature_file=FILE)
    test = TSGVEvalDataset(write_synthetic_dataset(tmp_path / "ds", cfg), "val", FILE)
    anns = [test.annotations[i] for i in test.indices]
    partners = repro.wrong_query_partners([a.video for a in anns])
    assert len(set(a.video for a in anns)) == 3 and sorted(partners) == list(range(len(anns)))
    for i, j in enumerate(partners):
        assert i != j and anns[i].video == anns[j].video
        assert repro.sentence_class(anns[i].sentence) != repro.sentence_class(anns[j].sentence)


def test_train_videos_must_be_positive(repro, capsys):
    with pytest.raises(SystemExit) as exc:
        repro.main(["--train-videos", "0", "--oracle"])
    assert exc.value.code == 2 and "--train-videos must be at least 1, got 0" in capsys.readouterr().err
