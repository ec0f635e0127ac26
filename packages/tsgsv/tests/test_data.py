import json
import math

import h5py
import numpy as np
import pytest
import torch

from tsgsv.data import TSGVDataModule, TSGVEvalDataset, TSGVTrainDataset, eval_windows, read_annotations, window_rows
from tsgsv.synthetic import SyntheticStreamConfig, frame_stamp, write_synthetic_dataset

FILE = "feats_{split}.hdf5"


@pytest.fixture()
def root(tmp_path):
    cfg = SyntheticStreamConfig((3, 2, 2), 2, (80, 100), (2, 3), (15, 25), video_dim=6, text_dim=5, tokens=(3, 25),
                                video_feature_file=FILE)  # fmt: skip
    return write_synthetic_dataset(tmp_path / "ds", cfg)


def _train(root, **kw):
    return TSGVTrainDataset(root, "train", FILE, short_memory=4, long_memory=8, future_memory=8, **kw)


def test_train_items_shapes_and_labels(root):
    ds = _train(root)
    item = ds[0]
    assert item["short"].shape == (4, 6) and item["long"].shape == (8, 6) and item["future"].shape == (8, 6)
    assert item["sentence"].shape == (20, 5) and 1 <= int(item["sentence_length"]) <= 20
    assert item["labels"].shape == (4, 3) and item["labels"].max() <= 1
    ann = ds.annotations[int(item["anno_index"])]
    rows = h5py.File(root / "feature" / "feats_train.hdf5")[ann.video][()]
    a0 = int(item["window_start"])
    for k in range(4):
        if 0 <= a0 + k < ann.num_frames:
            np.testing.assert_allclose(item["short"][k].numpy(), rows[a0 + k])
            assert not item["short_mask"][k]
        else:
            assert item["short_mask"][k] and item["short"][k].abs().sum() == 0


def test_window_tiling_with_fixed_offset(root):
    ds = _train(root)
    M = 4
    by_anno = {}
    for i, a0 in ds.windows:
        by_anno.setdefault(i, []).append(a0)
    for i, starts in by_anno.items():
        n = ds.annotations[i].num_frames
        o = starts[0] + M - 1
        assert 0 <= o <= M - 1
        assert starts == list(range(o + 1 - M, n - M + 1, M))  # non-overlapping, window end <= N
    before = list(ds.windows)
    ds.rechunk(seed=123)
    assert ds.windows != before


def test_padding_at_start_and_future_beyond_end(root):
    ds = _train(root)
    first = next(k for k, (i, a0) in enumerate(ds.windows) if a0 < 0 or a0 == 0)
    item = ds[first]
    assert item["long_mask"].all()  # before the video start
    last = max(range(len(ds.windows)), key=lambda k: ds.windows[k][1])
    item = ds[last]
    n = ds.annotations[ds.windows[last][0]].num_frames
    a0 = ds.windows[last][1]
    assert item["future_mask"].tolist() == [a0 + 4 + k >= n for k in range(8)]


def test_sentence_truncation_and_integrity_ignored(root):
    ds = _train(root)
    with h5py.File(root / "feature" / "bert-base-uncased_language_tokens_features_train.hdf5") as f:
        assert "Integrity" in f
        n_tok = {k: f[k].shape[0] for k in f if k != "Integrity"}
    for a in ds.annotations:
        sent, length = ds.files.sentence(a.anno_id)
        assert length == min(n_tok[a.anno_id], 20) and sent.shape == (20, 5)
        assert sent[length:].abs().sum() == 0


def test_filter_and_clipping(tmp_path, root):
    data = json.loads((root / "train.json").read_text())
    name = next(iter(data))
    data[name]["timestamps"][0] = [-3.0, data[name]["duration"] + 10]
    data["short_video"] = {"duration": 10.0, "duration_frame": 70, "timestamps": [[1, 2]], "sentences": ["x"],
                           "anno_ids": ["short_q"]}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps(data))
    anns = read_annotations([tmp_path / "a.json"])
    assert all(a.video != "short_video" for a in anns)  # N <= 70 dropped
    a = next(a for a in anns if a.video == name)
    assert a.start == 0.0 and a.end == data[name]["duration"]
    data[name]["timestamps"][0] = [5.0, 5.0]
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert len(read_annotations([tmp_path / "b.json"])) == len(anns) - 1  # τ_s >= τ_e dropped


def test_eval_dataset_and_windows(root):
    ds = TSGVEvalDataset(root, "test", FILE)
    assert len(ds) == len(ds.annotations) == 4
    item = ds[1]
    N = item["num_frames"]
    assert item["video"].shape == (N, 6)
    w = eval_windows(item["video"], torch.arange(N), 4, 8)
    assert w["short"].shape == (N, 4, 6) and w["long"].shape == (N, 8, 6)  # one test window per time step
    for t in (0, 5, N - 1):
        short, smask = window_rows(item["video"], 0, t - 3, 4, N)
        long, lmask = window_rows(item["video"], 0, t - 11, 8, N)
        torch.testing.assert_close(w["short"][t], short)
        torch.testing.assert_close(w["long"][t], long)
        assert torch.equal(w["short_mask"][t], smask) and torch.equal(w["long_mask"][t], lmask)
    half = TSGVEvalDataset(root, "test", FILE, fraction=0.5)
    assert len(half) == 2 and half.indices == TSGVEvalDataset(root, "test", FILE, fraction=0.5).indices
    with pytest.raises(ValueError, match=r"^data\.val_fraction=0: must be a number > 0 and ≤ 1$"):
        TSGVEvalDataset(root, "test", FILE, fraction=0)  # the data module's key (the message said "evaluation")


def test_missing_files_and_keys(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="data_root"):
        _train(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="Data preparation"):
        TSGVTrainDataset(root, "train", "other_{split}.hdf5")
    (root / "feature" / "bert-base-uncased_language_tokens_features_val.hdf5").unlink()
    with pytest.raises(FileNotFoundError, match="extract-text-features"):
        TSGVEvalDataset(root, "val", FILE)
    data = json.loads((root / "train.json").read_text())
    name = next(iter(data))
    data[name]["duration_frame"] += 1
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="duration_frame"):
        _train(root)
    del data[name]["anno_ids"]
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(KeyError, match="anno_ids"):
        _train(root)


def test_mad_window_subsampling(root):
    full = _train(root)
    sub = _train(root, pos_expansion_ratio=5.0, neg_pos_ratio=6.0)
    assert 0 < len(sub) <= len(full)
    i0 = 0
    s, e = sub.annotations[i0].frame_span
    ell = e - s
    kept = {a0 for i, a0 in sub.windows if i == i0}
    o = min(kept) + 3
    for a0 in range(o - 3, sub.annotations[i0].num_frames - 3, 4):
        if a0 + 4 > s - 2 * ell and a0 <= e + 2 * ell:
            assert a0 in kept


def test_datamodule_generates_demo_data(tmp_path):
    dm = TSGVDataModule(str(tmp_path / "demo"), video_feature_file=FILE, short_memory=4, long_memory=8,
                        future_memory=8, batch_size=4, generate_demo_data=True,
                        demo=SyntheticStreamConfig((2, 1, 1), 2, (80, 90), (2, 2), (10, 20), video_dim=6,
                                                   text_dim=5))  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["short"].shape == (4, 4, 6) and batch["labels"].shape == (4, 4, 3)
    val = next(iter(dm.val_dataloader()))
    assert isinstance(val, list) and val[0]["video"].ndim == 2


def test_synthetic_events_file_matches_features_and_queries(tmp_path):
    """write_events (oracle analyses of repro.py): every event is listed with its onset frames, the draw is unchanged,
    and each query's moment is one of the listed events."""
    kw = dict(videos_per_split=(2, 1, 1), queries_per_video=2, frames=(80, 90), events=(2, 3), event_length=(10, 20),
              video_dim=6, text_dim=5, video_feature_file=FILE)  # fmt: skip
    plain = write_synthetic_dataset(tmp_path / "plain", SyntheticStreamConfig(**kw))
    root = write_synthetic_dataset(tmp_path / "ev", SyntheticStreamConfig(**kw, write_events=True))
    assert not (plain / "events_train.json").exists()
    anns = json.loads((root / "train.json").read_text())
    assert anns == json.loads((plain / "train.json").read_text())
    events = json.loads((root / "events_train.json").read_text())
    with h5py.File(root / "feature" / "feats_train.hdf5") as f:
        for video, item in anns.items():
            feats = f[video][()]
            for a, b, c in events[video]:
                assert 0 <= a < b <= item["duration_frame"] and 0 <= c < 8
                onset, rest = feats[a : a + 2].mean(0), feats[a + 2 : b].mean(0)
                assert np.linalg.norm(onset - rest) > 0.5  # onset prototype differs from the ongoing activity
            n, d = item["duration_frame"], item["duration"]
            starts = {a for a, _, _ in events[video]}
            ends = {b - 1 for _, b, _ in events[video]}
            for ts, te in item["timestamps"]:  # the official frame conversion gives the event's frames exactly
                assert math.floor(ts / d * (n - 1)) in starts and math.floor(te / d * (n - 1)) in ends


def test_frame_stamp_round_trips_through_the_official_conversion():
    assert math.floor(11 / 119 * 60.0 / 60.0 * 119) == 10  # the plain formula loses a frame here (N = 120)
    for n in range(71, 260, 7):
        duration = n * 0.5
        for frame in range(n):
            stamp = frame_stamp(frame, n, duration)
            assert math.floor(stamp / duration * (n - 1)) == frame
            assert stamp - frame / (n - 1) * duration < 1e-9


def test_eval_windows_stay_on_the_input_device():
    video = torch.zeros(30, 4, device="meta")  # any non-CPU device: the index must be built beside `times`
    windows = eval_windows(video, torch.arange(30, device="meta"), 8, 64)
    assert {w.device.type for w in windows.values()} == {"meta"}
    assert windows["long"].shape == (30, 64, 4) and windows["short_mask"].shape == (30, 8)


def test_singleton_axes_read_the_same_lazily_and_preloaded(root):
    path = root / "feature" / "feats_train.hdf5"
    with h5py.File(path, "a") as f:  # store every video as (1, N, d), as some feature dumps do
        for key in list(f):
            rows = f[key][()]
            del f[key]
            f[key] = rows[None]
    lazy, eager = _train(root, preload=False), _train(root, preload=True)
    for i in range(0, len(lazy), 3):
        a, b = lazy[i], eager[i]
        for key in ("short", "long", "future"):
            torch.testing.assert_close(a[key], b[key])
        assert a["short_mask"].equal(b["short_mask"])


def test_window_rows_refuses_rows_it_was_not_given():
    video = torch.arange(12.0).reshape(12, 1)
    rows, pad = window_rows(video[4:9], 4, 4, 5, 12)  # inside what was given: rows 4..8
    assert rows[:, 0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0] and not pad.any()
    with pytest.raises(ValueError, match=r"rows \[2, 8\) of a 12-frame video"):  # needs rows 2, 3: not given
        window_rows(video[4:9], 4, 2, 6, 12)


def test_datamodule_makes_lightning_rebuild_the_training_windows_every_epoch(root):
    # train_dataloader() draws new windows; with Lightning's default (reload 0) it would run once per fit
    from types import SimpleNamespace

    dm = TSGVDataModule(str(root), video_feature_file=FILE, short_memory=4, long_memory=8, future_memory=8)
    dm.trainer = SimpleNamespace(reload_dataloaders_every_n_epochs=0, current_epoch=0)
    dm.setup("test")
    assert dm.trainer.reload_dataloaders_every_n_epochs == 0  # evaluation needs no reload
    dm.setup("fit")
    assert dm.trainer.reload_dataloaders_every_n_epochs == 1


def _write_layout(root, videos, split="test", n_frames=80, dim=4, text_dim=3):
    """A minimal dataset in the official layout: ``videos`` = {video: [(anno_id, sentence), ...]}."""
    (root / "feature").mkdir(parents=True, exist_ok=True)
    layout = {}
    with (
        h5py.File(root / "feature" / "f.hdf5", "a") as vf,
        h5py.File(root / "feature" / f"lm_language_tokens_features_{split}.hdf5", "a") as tf,
    ):
        for v, anns in videos.items():
            vf[v] = np.random.default_rng(0).standard_normal((n_frames, dim)).astype(np.float32)
            for aid, _ in anns:
                if aid not in tf:
                    tf[aid] = np.random.default_rng(1).standard_normal((5, text_dim)).astype(np.float32)
            layout[v] = {"duration": 40.0, "duration_frame": n_frames, "timestamps": [[1.0, 5.0]] * len(anns),
                         "sentences": [s for _, s in anns], "anno_ids": [a for a, _ in anns]}  # fmt: skip
    (root / f"{split}.json").write_text(json.dumps(layout))
    return root


def test_validation_subset_is_the_official_draw(tmp_path):
    # official TSGVDataset.sample_dataset: random.seed(1949); random.sample(range(n), int(portion * n))
    import random

    root = _write_layout(tmp_path, {f"v{i}": [(f"q{i}_{j}", f"s{i}_{j}") for j in range(3)] for i in range(15)})
    ds = TSGVEvalDataset(root, "test", "f.hdf5", "lm", fraction=0.5)
    n = len(ds.annotations)
    assert n == 45 and len(ds) == 22  # int(0.5 * 45), not round
    state = random.getstate()
    random.seed(1949)
    official = random.sample(list(range(n)), int(0.5 * n))
    random.setstate(state)
    assert ds.indices == sorted(official)


def test_duplicate_anno_id_with_different_sentences_is_refused(tmp_path):
    root = _write_layout(tmp_path, {"v0": [("q0", "a man runs")], "v1": [("q0", "a dog sleeps")]})
    with pytest.raises(ValueError, match="anno_id 'q0' is used twice"):
        TSGVEvalDataset(root, "test", "f.hdf5", "lm")


def test_training_windows_are_the_same_on_every_rank(root):
    """Ranks whose torch seeds differ (no seed_everything, or a random one per process) must still draw one window
    list: the base seed comes from rank 0 (the strategy's broadcast)."""

    class Strategy:
        def broadcast(self, obj, src=0):
            return 7000  # rank 0's value

    class Trainer:
        reload_dataloaders_every_n_epochs = 1
        current_epoch = 3
        strategy = Strategy()

    windows = []
    for rank_seed in (11, 12):
        torch.manual_seed(rank_seed)
        dm = TSGVDataModule(str(root), video_feature_file=FILE, short_memory=4, long_memory=8, future_memory=8,
                            batch_size=4)  # fmt: skip
        dm.trainer = Trainer()
        dm.setup("fit")
        dm.train_dataloader()
        windows.append(list(dm.train_set.windows))
    assert windows[0] == windows[1]
    ds = _train(root)
    ds.rechunk(7000 + 3)
    assert ds.windows == windows[0]


def test_repeated_video_key_is_refused(tmp_path):
    root = _write_layout(tmp_path, {"v0": [("q0", "a man runs")], "v1": [("q1", "a dog sleeps")]})
    text = (root / "test.json").read_text().replace('"v1"', '"v0"')  # two entries named v0: json keeps the last
    (root / "test.json").write_text(text)
    with pytest.raises(ValueError, match="video 'v0' appears twice"):
        TSGVEvalDataset(root, "test", "f.hdf5", "lm")


def test_malformed_timestamp_names_the_file_video_and_id(tmp_path, root):
    data = json.loads((root / "train.json").read_text())
    name = next(iter(data))
    data[name]["timestamps"][1] = [3.0]
    (tmp_path / "a.json").write_text(json.dumps(data))
    aid = data[name]["anno_ids"][1]
    with pytest.raises(ValueError, match=rf"a\.json.*{name}.*{aid}.*\[3\.0\] is not a \[start, end\] pair"):
        read_annotations([tmp_path / "a.json"])


def _rewrite(path, key, width):
    """Replace dataset ``key`` of an HDF5 file by features of the same rows and another width."""
    with h5py.File(path, "r+") as f:
        rows = f[key].shape[0]
        del f[key]
        f.create_dataset(key, data=np.ones((rows, width), dtype=np.float32))


def test_every_video_feature_width_is_checked_naming_the_key(root):
    """A video other than the first one with features of another width is refused when the files are opened."""
    anns = read_annotations([root / "train.json"])
    first, last = anns[0].video, anns[-1].video
    assert first != last
    _rewrite(root / "feature" / "feats_train.hdf5", last, 9)
    with pytest.raises(ValueError, match=rf"feats_train\.hdf5.*video '{last}' has features of width 9, but video "
                                         rf"'{first}' has width 6"):  # fmt: skip
        _train(root)


def test_every_sentence_feature_width_is_checked_as_it_is_read(root):
    anns = read_annotations([root / "train.json"])
    first, later = anns[0].anno_id, anns[-1].anno_id
    _rewrite(root / "feature" / "bert-base-uncased_language_tokens_features_train.hdf5", later, 7)
    ds = _train(root)
    assert ds.files.sentence(first)[0].shape == (20, 5)
    with pytest.raises(ValueError, match=rf"features_train\.hdf5.*anno_id '{later}' has features of width 7, but "
                                         rf"anno_id '{first}' has width 5"):  # fmt: skip
        ds.files.sentence(later)
    item = next(k for k, (i, _) in enumerate(ds.windows) if ds.annotations[i].anno_id == later)
    with pytest.raises(ValueError, match=f"anno_id '{later}' has features of width 7"):
        ds[item]  # a training window of that annotation
    ds.files.expect_width("text", 5, "text_dim")  # the model's width, once the module is set up
    with pytest.raises(ValueError, match=rf"anno_id '{later}' has features of width 7, but model\.config\.text_dim=5"):
        ds.files.sentence(later)
    with pytest.raises(ValueError, match=r"video '.*' has width 6, but model\.config\.video_dim=4"):
        ds.files.expect_width("video", 4, "video_dim")


@pytest.mark.parametrize("entry, kind", [([1.0, 2.0], "array"), ("v0.mp4", "string"), (12, "number"), (None, "null")])
def test_entry_that_is_not_an_object_names_the_file_and_video(tmp_path, root, entry, kind):
    """A list entry used to raise "lacks key 'duration'", a number or null a bare TypeError naming nothing."""
    data = json.loads((root / "train.json").read_text())
    data["broken_video"] = entry
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"a\.json.*video 'broken_video' is a JSON {kind} .*not an object with keys "
                                         rf"duration, duration_frame"):  # fmt: skip
        read_annotations([tmp_path / "a.json"])


def test_annotation_file_that_is_not_an_object_is_refused(tmp_path, root):
    data = json.loads((root / "train.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(list(data.values())))
    with pytest.raises(ValueError, match=r"a\.json' holds a JSON array, not an object mapping video names"):
        read_annotations([tmp_path / "a.json"])


def _add_video(root, split, name, n, duration, stamps):
    """Append one video of ``n`` feature rows (one query per stamp) to a split of the fixture's data set."""
    data = json.loads((root / f"{split}.json").read_text())
    ids = [f"{name}_{k}" for k in range(len(stamps))]
    data[name] = {"duration": duration, "duration_frame": n, "timestamps": stamps, "sentences": ["x"] * len(stamps),
                  "anno_ids": ids}  # fmt: skip
    (root / f"{split}.json").write_text(json.dumps(data))
    with h5py.File(root / "feature" / FILE.format(split=split), "a") as f:
        f[name] = np.ones((n, 6), np.float32)
    with h5py.File(root / "feature" / f"bert-base-uncased_language_tokens_features_{split}.hdf5", "a") as f:
        for i in ids:
            f[i] = np.ones((3, 5), np.float32)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_videos_shorter_than_one_window_with_min_frames_lowered(root, n):
    """data.min_frames: 0 lets videos shorter than the short memory through: their windows are those whose end is
    within the video (none for most offsets), as Python's range gives them; a video without any feature row is
    dropped (there is nothing to stream, and its evaluation would count a vacuous AP of 1)."""
    _add_video(root, "train", "tiny", n, 0.5 * max(n, 1), [[0.0, 0.5 * max(n, 1)]])
    for seed in range(8):
        ds = _train(root, min_frames=0, seed=seed)
        tiny = [k for k, a in enumerate(ds.annotations) if a.video == "tiny"]
        assert bool(tiny) == (n > 0)
        for i, a0 in ds.windows:
            if i in tiny:
                assert a0 + 4 <= n  # the window ends within the video
                item = ds[ds.windows.index((i, a0))]
                assert item["short_mask"].tolist() == [not 0 <= a0 + k < n for k in range(4)]
                assert torch.isfinite(item["labels"]).all()
    _add_video(root, "test", "tiny", n, 0.5 * max(n, 1), [[0.0, 0.5 * max(n, 1)]])
    ev = TSGVEvalDataset(root, "test", FILE, min_frames=0)
    assert any(a.video == "tiny" for a in ev.annotations) == (n > 0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("duration", None, r"video 'odd': duration = None is not a finite number of seconds"),
        ("duration", "NaN", r"video 'odd': duration = 'NaN' is not a finite number of seconds"),
        ("duration_frame", None, r"video 'odd': duration_frame = None is not a whole number of feature rows"),
        ("duration_frame", 90.5, r"video 'odd': duration_frame = 90.5 is not a whole number of feature rows"),
        ("timestamps", [[None, 5.0]], r"video 'odd', anno_id 'odd_0': timestamps = None is not a finite number"),
        ("timestamps", [["start", 5.0]], r"video 'odd', anno_id 'odd_0': timestamps = 'start' is not a finite"),
    ],
)
def test_null_or_nan_times_name_the_file_video_and_key(root, key, value, message):
    _add_video(root, "train", "odd", 90, 45.0, [[1.0, 5.0]])
    data = json.loads((root / "train.json").read_text())
    data["odd"][key] = value
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="train.json.*" + message):
        _train(root)


def test_numbers_written_as_strings_are_still_read(root):
    _add_video(root, "train", "str", 90, 45.0, [[1.0, 5.0]])
    data = json.loads((root / "train.json").read_text())
    data["str"].update(duration="45.0", duration_frame="90", timestamps=[["1.0", "5"]])
    (root / "train.json").write_text(json.dumps(data))
    a = next(a for a in _train(root).annotations if a.video == "str")
    assert (a.duration, a.num_frames, a.start, a.end) == (45.0, 90, 1.0, 5.0)


def test_a_split_left_empty_by_the_filters_is_refused(root):
    """Every video shorter than data.min_frames (or every moment empty): an evaluation over no query would report
    recalls of 0 (and a validation subset a bare sampling error); the message names the file and the key."""
    for fraction in (1.0, 0.5):
        with pytest.raises(ValueError, match=r"val\.json'.*no annotation left in split 'val'.*data\.min_frames=500"):
            TSGVEvalDataset(root, "val", FILE, min_frames=500, fraction=fraction)
    data = {name: {**v, "timestamps": [[t[1], t[0]] for t in v["timestamps"]]}  # every moment reversed
            for name, v in json.loads((root / "train.json").read_text()).items()}  # fmt: skip
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"train\.json'.*no annotation left in split 'train'"):
        _train(root)
