import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from toypkg import RowsToy, ToyData, ToyModule  # noqa: E402

from mmzoo.cli import run_cli  # noqa: E402
from mmzoo.predict import PredictionWriter, prediction_file, writes_predictions  # noqa: E402


class BadArraysToy(RowsToy):
    def prediction_arrays(self, prediction):
        return {"x": prediction["x"][:1]}


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_predict_writes_one_row_per_item_and_aligned_tensors(tmp_path):
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    cli = run_cli(RowsToy, ToyData, "toypkg", args=["predict", "--config", "demo", "--data.n", "37", *root])
    rows = _read(tmp_path / "predictions.jsonl")
    arrays = torch.load(tmp_path / "predictions.pt", weights_only=True)
    assert len(rows) == 37 and arrays["x"].shape == (37, 3) and arrays["y"].shape == (37, 1)
    ds = cli.datamodule.ds
    for i, row in enumerate(rows):  # dataset order, line i <-> tensor row i
        assert row["target"] == pytest.approx(float(ds[i][1]), abs=1e-4)
        assert torch.equal(arrays["x"][i], ds[i][0])
        assert row["y"] == pytest.approx(float(arrays["y"][i]), abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(arrays["y"], cli.model.net(ds.tensors[0]), atol=1e-6)
    # the writer streams to disk; Lightning does not also keep the outputs
    assert cli.trainer.predict_loop.return_predictions is False


def test_predictions_path_is_a_config_key(tmp_path):
    out = tmp_path / "sub" / "mine.jsonl"
    run_cli(RowsToy, ToyData, "toypkg",
            args=["predict", "--config", "demo", "--predictions.path", str(out), "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert len(_read(out)) == 32 and (tmp_path / "sub" / "mine.pt").is_file()
    assert not (tmp_path / "predictions.jsonl").exists()


def test_modules_without_rows_get_no_writer(capsys):
    assert writes_predictions(RowsToy) and not writes_predictions(ToyModule)
    with pytest.raises(SystemExit):
        run_cli(ToyModule, ToyData, "toypkg", args=["predict", "--print_config"])
    assert "\npredictions:" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli(RowsToy, ToyData, "toypkg", args=["predict", "--print_config"])
    printed = capsys.readouterr().out
    assert "\npredictions:" in printed and "return_predictions: false" in printed


def test_arrays_must_align_with_rows(tmp_path):
    with pytest.raises(ValueError, match="'x' has 1 rows for 16 prediction rows"):
        run_cli(BadArraysToy, ToyData, "toypkg",
                args=["predict", "--config", "demo", "--trainer.logger", "false",
                      "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip


def test_writer_refuses_a_module_without_rows(tmp_path):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                         callbacks=[PredictionWriter()])  # fmt: skip
    with pytest.raises(TypeError, match="ToyModule has no prediction_rows"):
        trainer.predict(ToyModule(), datamodule=ToyData(n=8), return_predictions=False)


def _predict_on_two_ranks(tmp):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, default_root_dir=tmp,
                         enable_progress_bar=False, callbacks=[PredictionWriter()])  # fmt: skip
    assert prediction_file(trainer, None) == Path(tmp) / "predictions.rank0.jsonl"  # the launching process
    trainer.predict(RowsToy(), datamodule=ToyData(n=37, batch_size=4), return_predictions=False)


def test_several_processes_write_each_item_once(tmp_path):
    _predict_on_two_ranks(str(tmp_path))
    files = sorted(tmp_path.glob("predictions.rank*.jsonl"))
    assert [f.name for f in files] == ["predictions.rank0.jsonl", "predictions.rank1.jsonl"]
    rows = [r for f in files for r in _read(f)]
    arrays = [torch.load(f.with_suffix(".pt"), weights_only=True) for f in files]
    assert len(rows) == 37  # no padding repeats: each item on one rank
    x = torch.cat([a["x"] for a in arrays])
    ds = ToyData(n=37)
    ds.setup()
    expected = sorted(map(tuple, ds.ds.tensors[0].tolist()))
    assert sorted(map(tuple, x.tolist())) == expected


class NoArraysToy(RowsToy):
    def prediction_arrays(self, prediction):
        return {}  # e.g. a task of a multi-task module without embeddings


def test_no_tensor_file_when_no_arrays(tmp_path):
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    run_cli(NoArraysToy, ToyData, "toypkg", args=["predict", "--config", "demo", *root])
    assert len(_read(tmp_path / "predictions.jsonl")) == 32 and not (tmp_path / "predictions.pt").exists()


class FailingToy(RowsToy):
    def predict_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("out of memory in batch 1")
        return super().predict_step(batch, batch_idx)


def test_a_predict_stopped_part_way_leaves_no_file_and_keeps_the_earlier_one(tmp_path):
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false", "--data.n", "37"]
    with pytest.raises(RuntimeError, match="batch 1"):
        run_cli(FailingToy, ToyData, "toypkg", args=["predict", "--config", "demo", *root])
    assert sorted(p.name for p in tmp_path.iterdir() if "predictions" in p.name) == []  # not 16 rows of 37
    run_cli(RowsToy, ToyData, "toypkg", args=["predict", "--config", "demo", *root])
    whole = (tmp_path / "predictions.jsonl").read_text()
    with pytest.raises(RuntimeError, match="batch 1"):
        run_cli(FailingToy, ToyData, "toypkg", args=["predict", "--config", "demo", *root])
    assert (tmp_path / "predictions.jsonl").read_text() == whole and len(_read(tmp_path / "predictions.jsonl")) == 37
    assert sorted(p.name for p in tmp_path.iterdir() if "predictions" in p.name) == [
        "predictions.jsonl", "predictions.pt"]  # fmt: skip


def test_a_tensor_file_of_an_earlier_run_is_removed_when_this_one_writes_none(tmp_path):
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    run_cli(RowsToy, ToyData, "toypkg", args=["predict", "--config", "demo", *root])
    assert (tmp_path / "predictions.pt").is_file()
    run_cli(NoArraysToy, ToyData, "toypkg", args=["predict", "--config", "demo", "--data.n", "5", *root])
    assert len(_read(tmp_path / "predictions.jsonl")) == 5 and not (tmp_path / "predictions.pt").exists()
