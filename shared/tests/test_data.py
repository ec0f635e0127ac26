"""mmzoo.data: the DataLoader options and split dispatch the packages' datamodules share."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, TensorDataset

from mmzoo.data import SplitLoaders, worker_options


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
