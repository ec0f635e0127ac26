"""A toy package for the mmzoo.cli round-trip tests: a linear regressor on random data."""

from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class ToyModule(pl.LightningModule):
    checkpoint_monitor = "val/loss"
    checkpoint_mode = "min"

    def __init__(self, hidden: int = 4, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RowsToy(ToyModule):
    """ToyModule whose ``predict`` rows carry the item's input sum (= its regression target) and the output."""

    def predict_step(self, batch, batch_idx):
        return {"x": batch[0], "y": self.net(batch[0])}

    def prediction_rows(self, prediction):
        return [{"target": round(float(x.sum()), 4), "y": float(y)} for x, y in zip(*prediction.values())]

    def prediction_arrays(self, prediction):
        return {"x": prediction["x"], "y": prediction["y"]}


class ToyData(pl.LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 16):
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 3, generator=g)
        self.ds = TensorDataset(x, x.sum(-1, keepdim=True))

    def _dl(self):
        return DataLoader(self.ds, batch_size=self.batch_size)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _dl


@dataclass
class ToyConfig:
    hidden: int = 4
    lr: float = 0.1


class ToyConfigModule(ToyModule):
    """ToyModule configured by a dataclass, as the packages' modules are."""

    def __init__(self, config: ToyConfig | None = None):
        config = config or ToyConfig()
        super().__init__(config.hidden, config.lr)
        self.save_hyperparameters({"config": config})
