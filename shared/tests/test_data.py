"""mmzoo.data: the DataLoader options and split dispatch the packages' datamodules share."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, TensorDataset

from mmzoo.data import (
    SplitLoaders,
    evaluation_sampler,
    read_json,
    read_jsonl,
    read_torch,
    reload_train_loader_every_epoch,
    worker_options,
    written_whole,
)


@pytest.mark.parametrize(
    ("workers", "persistent", "expected"), [(0, True, False), (0, False, False), (2, True, True), (2, False, False)]
)
def test_worker_options_pass_persistent_workers_only_with_workers(workers, persistent, expected):
    hp = SimpleNamespace(num_workers=workers, pin_memory=True, persistent_workers=persistent)
    assert worker_options(hp) == {"num_workers": workers, "pin_memory": True, "persistent_workers": expected}
    DataLoader(TensorDataset(torch.zeros(2)), **{**worker_options(hp), "pin_memory": False})  # torch accepts them


class _Splits(SplitLoaders, pl.LightningDataModule):
    def _loader(self, split: str, train: bool):
        return split, train


class _PredictOwn(_Splits):
    predict_split = "predict"


def test_split_loaders_dispatch_and_override_lightnings_hooks():
    dm = _Splits()
    assert dm.train_dataloader() == ("train", True)
    assert dm.val_dataloader() == ("val", False)
    assert dm.test_dataloader() == ("test", False)
    assert dm.predict_dataloader() == ("test", False)
    assert _PredictOwn().predict_dataloader() == ("predict", False)
    # Lightning calls a datamodule's hook only when it is overridden; the mixin's count as overrides
    assert all(is_overridden(f"{s}_dataloader", dm) for s in ("train", "val", "test", "predict"))


class _CountingData(pl.LightningDataModule):
    """Draws a new 'epoch seed' in train_dataloader(), as the packages that resample per epoch do."""

    def __init__(self, reload: bool):
        super().__init__()
        self.reload, self.calls = reload, []

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.reload:
            reload_train_loader_every_epoch(self.trainer, "new draws every epoch")

    def train_dataloader(self):
        self.calls.append(self.trainer.current_epoch)
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("reload", [False, True])
def test_reload_train_loader_every_epoch_makes_lightning_call_the_hook_each_epoch(reload):
    dm = _CountingData(reload)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, reload_dataloaders_every_n_epochs=0)  # fmt: skip
    trainer.fit(_Tiny(), datamodule=dm)
    # without the helper Lightning builds the training loader once, and every epoch replays epoch 0's draws
    assert dm.calls == ([0, 1, 2] if reload else [0])
    reload_train_loader_every_epoch(None, "no trainer")  # a datamodule used on its own: nothing to do


def test_evaluation_sampler_gives_each_item_to_exactly_one_process():
    data = list(range(10))
    assert evaluation_sampler(data, None) is None
    assert evaluation_sampler(data, SimpleNamespace(world_size=1, global_rank=0)) is None
    shards = [list(evaluation_sampler(data, SimpleNamespace(world_size=4, global_rank=r))) for r in range(4)]
    # Lightning's default sampler would pad 10 items to 12 (two repeated); here every item appears once
    assert sorted(i for shard in shards for i in shard) == data
    assert [len(s) for s in shards] == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="3 clips cannot be split over 4 processes"):
        evaluation_sampler([0, 1, 2], SimpleNamespace(world_size=4, global_rank=0), unit="clips")


def test_lightning_eval_loader_pads_a_plain_loader_and_keeps_an_evaluation_sampler():
    from mmzoo.testing import lightning_eval_loader

    data = list(range(5))
    plain = [list(lightning_eval_loader(DataLoader(data, batch_size=10), r, 2, "test"))[0].tolist() for r in range(2)]
    assert plain == [[0, 2, 4], [1, 3, 0]]  # Lightning's default sampler repeats item 0 to even the ranks
    shards = []
    for r in range(2):
        trainer = SimpleNamespace(world_size=2, global_rank=r)
        loader = DataLoader(data, batch_size=10, sampler=evaluation_sampler(data, trainer))
        shards.append(list(lightning_eval_loader(loader, r, 2))[0].tolist())
    assert shards == [[0, 2, 4], [1, 3]]
    with pytest.raises(ValueError, match="stage must be one of"):
        lightning_eval_loader(DataLoader(data), 0, 2, "fit")


def test_epoch_seeded_train_dataloader_draws_each_epoch_from_seed_and_epoch():
    from mmzoo.testing import epoch_seeded_train_dataloader

    class DM(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.arange(10)), batch_size=3, shuffle=True)

    dm = DM()
    dm.trainer = SimpleNamespace(current_epoch=0)
    loader = epoch_seeded_train_dataloader(DM)

    def epoch(e):
        dm.trainer.current_epoch = e
        order = [int(i) for (b,) in loader(dm) for i in b]
        return order, torch.rand(1).item()  # the global generator is reseeded when the epoch starts

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert first == again and first[0] != other[0]
    assert len(first[0]) == 9 and len(set(first[0])) == 9  # batches of 3, the partial last batch dropped


def test_read_json_names_the_file_and_the_fault(tmp_path):
    good = tmp_path / "a.json"
    good.write_text('{"k": ["ü", 1]}', encoding="utf-8")
    assert read_json(good) == {"k": ["ü", 1]}
    bad = tmp_path / "b.json"
    bad.write_text('[\n  {"video": "v"},\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"annotation file '.*b\.json' is not valid JSON: .* \(line 3, column 1\)"):
        read_json(bad, "annotation file")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")
    latin = tmp_path / "c.json"
    latin.write_bytes('[\n  "caf\u00e9"]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"captions '.*c\.json' is not UTF-8 text: byte 0xe9 at line 2, column 7"):
        read_json(latin, "captions")


def test_read_json_refuses_a_key_given_twice_with_different_values(tmp_path):
    path = tmp_path / "parents.json"
    path.write_text('{"leaf": ["a"], "other": {"x": 1, "x": 1}, "leaf": ["b"]}', encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"ontology '.*parents\.json' gives the key 'leaf' twice .*\[\"a\"\].*\[\"b\"\]"
    ):
        read_json(path, "ontology")
    path.write_text('[{"x": 1, "x": 1, "y": [2]}]', encoding="utf-8")  # repeated with an equal value: harmless
    assert read_json(path) == [{"x": 1, "y": [2]}]
    path.write_text('{"a": {"deep": 1, "deep": 2}}', encoding="utf-8")  # nested objects are checked too
    with pytest.raises(ValueError, match="key 'deep' twice"):
        read_json(path)


def test_ensure_generated_writes_missing_or_stale_data_and_leaves_unstamped_data(tmp_path, caplog):
    import json

    from mmzoo.data import ensure_generated

    marker, stamp, writes = tmp_path / "d" / "index.txt", tmp_path / "d" / "made_by.json", []

    def write():
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(str(len(writes)))
        writes.append(1)

    assert ensure_generated(marker, stamp, {"seed": 0, "sizes": (2, 3)}, write, "toy generator")
    assert json.loads(stamp.read_text()) == {"seed": 0, "sizes": [2, 3]} and len(writes) == 1
    assert not ensure_generated(marker, stamp, {"sizes": (2, 3), "seed": 0}, write, "toy generator")  # same: kept
    assert ensure_generated(marker, stamp, {"seed": 1, "sizes": (2, 3)}, write, "toy generator")  # other: again
    assert len(writes) == 2 and json.loads(stamp.read_text())["seed"] == 1
    stamp.unlink()  # no stamp: the user's data, left alone with a warning
    with caplog.at_level("WARNING"):
        assert not ensure_generated(marker, stamp, {"seed": 2}, write, "toy generator")
    assert len(writes) == 2 and "without the toy generator's stamp" in caplog.text
    assert ensure_generated(marker, stamp, {"seed": 2}, write, "toy generator", owned=True)  # the caller's cache
    assert len(writes) == 3 and stamp.is_file()

    def fails():
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ensure_generated(marker, stamp, {"seed": 3}, fails, "toy generator")
    assert not stamp.exists()  # a write cut short leaves no stamp, so the half-written data are never kept as done


def test_read_jsonl_gives_line_numbers_and_names_the_file_and_line_of_a_fault(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_bytes('{"k": "ü"}\r\n\n  \n[1, 2]\n'.encode())
    assert read_jsonl(good) == [(1, {"k": "ü"}), (4, [1, 2])]  # blank lines skipped, CRLF accepted
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"video": "v"}\n{"video": "w",}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"^annotation file '.*b\.jsonl' line 2 is not valid JSON: .* \(column 15\)"):
        read_jsonl(bad, "annotation file")
    latin = tmp_path / "c.jsonl"
    latin.write_bytes('{"a": 1}\n{"a": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"'.*c\.jsonl' line 2 is not UTF-8 text: byte 0xe9 at column 11"):
        read_jsonl(latin)
    twice = tmp_path / "d.jsonl"
    twice.write_text('{"caption": "a dog", "caption": "a cat"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1 gives the key 'caption' twice in one object"):
        read_jsonl(twice)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_written_whole_renames_a_complete_file_and_leaves_the_old_one_when_the_write_fails(tmp_path):
    path = tmp_path / "sub" / "cache.json"
    with written_whole(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".cache.json.") and tmp.suffix == ".partial"
        tmp.write_text("old")
        assert not path.exists()  # nothing under the real name until the write is over
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["cache.json"]
    for stop in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(stop)):
            with written_whole(path) as tmp:
                tmp.write_text("half of the ne")
                raise stop
        assert path.read_text() == "old"  # the previous complete file stays
        assert sorted(p.name for p in path.parent.iterdir()) == ["cache.json"]  # and no temporary is left
    with written_whole(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_written_whole_with_nothing_written_raises_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.npy"
    path.write_text("old")
    with pytest.raises(FileNotFoundError):
        with written_whole(path):
            pass  # the writer wrote nothing: that is an error, not an empty file
    assert path.read_text() == "old"


def test_read_torch_names_the_option_and_file_it_cannot_read(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(300.0)}, path)
    assert torch.equal(read_torch(path, "model.weights")["w"], torch.arange(300.0))
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", b"not a torch file at all"):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"(?s)^model\.weights '.*w\.pt' cannot be read as a torch file \(.+\)$"):
            read_torch(path, "model.weights")
    with pytest.raises(FileNotFoundError):
        read_torch(tmp_path / "none.pt", "model.weights")


def test_a_write_stopped_midway_leaves_the_target_as_it_was(tmp_path):
    from mmzoo.testing import text_writes_stopped_midway

    path = tmp_path / "out.json"
    path.write_text('{"old": 1}')
    with text_writes_stopped_midway() as called, pytest.raises(KeyboardInterrupt):
        with written_whole(path) as tmp:
            tmp.write_text('{"new": 2, "more": 3}')
    assert len(called) == 1 and path.read_text() == '{"old": 1}' and list(tmp_path.iterdir()) == [path]
    with text_writes_stopped_midway(), pytest.raises(KeyboardInterrupt):
        path.write_text('{"new": 2, "more": 3}')  # a plain write is left cut short
    assert path.read_text() == '{"new": 2,'
    path.write_text("restored")  # the real write_text is back after the block
    assert path.read_text() == "restored"
