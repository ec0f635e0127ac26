"""What ``<name> predict`` writes: one JSON line per predicted item, and optionally a tensor file beside it.

A package opts in by giving its LightningModule a ``prediction_rows`` method; :func:`mmzoo.cli.run_cli` then adds a
:class:`PredictionWriter` to ``predict`` (its path is the ``--predictions.path`` key) and stops Lightning from also
keeping every batch's output in memory (``return_predictions: false``)::

    class MyModule(pl.LightningModule):
        def predict_step(self, batch, batch_idx):
            return {"id": batch["id"], "logits": self(batch)}

        def prediction_rows(self, prediction) -> list[dict]:      # one JSON-serialisable dict per item
            return [{"id": i, "pred": int(p)} for i, p in zip(prediction["id"], prediction["logits"].argmax(1))]

        def prediction_arrays(self, prediction) -> dict[str, torch.Tensor]:   # optional: embeddings and the like
            return {"logits": prediction["logits"]}

From Python, a Trainer gets the same files with ``pl.Trainer(callbacks=[PredictionWriter(path)])`` (and
``trainer.predict(..., return_predictions=False)``); without the callback ``trainer.predict`` returns the outputs.

Files: ``<path>`` (default ``predictions.jsonl`` in ``trainer.log_dir``, else ``trainer.default_root_dir``) and,
when the module's ``prediction_arrays`` gives tensors, ``<path without suffix>.pt``: a ``torch.save`` dict of float/int tensors
whose row ``i`` belongs to line ``i`` of the JSON-lines file (load it with ``torch.load(..., weights_only=True)``).
Under several processes rank ``r`` writes ``<stem>.rank<r>.jsonl`` (and ``.rank<r>.pt``): Lightning gives each
predicted item to exactly one process, so every item is in exactly one file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from mmzoo.data import partial_path, written_whole

__all__ = ["PredictionWriter", "prediction_file", "predict_dataset", "writes_predictions"]


def writes_predictions(module_class: type) -> bool:
    """Whether ``module_class`` opts in to :class:`PredictionWriter` (it defines ``prediction_rows``)."""
    return callable(getattr(module_class, "prediction_rows", None))


def prediction_file(trainer: pl.Trainer, path: str | Path | None, default_name: str = "predictions.jsonl") -> Path:
    """The file this process writes predictions to: ``path`` (default ``default_name`` in ``trainer.log_dir``, else
    ``trainer.default_root_dir``), with ``.rank<r>`` before the suffix on rank ``r`` when there are several
    processes."""
    out = Path(path) if path is not None else Path(trainer.log_dir or trainer.default_root_dir) / default_name
    if trainer.world_size > 1:
        out = out.with_name(f"{out.stem}.rank{trainer.global_rank}{out.suffix}")
    return out


def predict_dataset(module: pl.LightningModule):
    """The dataset ``predict`` is reading (for a module's ``prediction_rows`` to look up ids and names), or None when
    the module has no trainer or the trainer predicts from several loaders."""
    trainer = module._trainer
    loaders = trainer.predict_dataloaders if trainer is not None else None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    return getattr(loaders, "dataset", None)


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted batch as JSON lines (the module's ``prediction_rows``) as it comes, and, when the module
    has ``prediction_arrays``, those tensors (on the CPU, concatenated over batches) at the end.

    Args:
        path: the JSON-lines file; ``None``: ``predictions.jsonl`` in the trainer's log folder. Under several
            processes rank ``r`` writes ``<stem>.rank<r><suffix>``. The tensor file is the same path with ``.pt``.

    The rows go to a temporary file beside ``path`` that takes its name only when prediction ends: a run that
    stops part-way (an error, Ctrl-C) leaves no file that looks like a whole prediction, and an earlier one stays.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self.written: Path | None = None  # the JSON-lines file of the last predict run (tests read it)
        self.arrays_written: Path | None = None
        self._fh = None
        self._partial: Path | None = None
        self._arrays: dict[str, list[torch.Tensor]] = {}
        self._rows = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not writes_predictions(type(pl_module)):
            raise TypeError(
                f"{type(pl_module).__name__} has no prediction_rows method, which the prediction writer needs "
                "(see mmzoo.predict)"
            )
        path = prediction_file(trainer, self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written, self.arrays_written = path, None
        self._partial = partial_path(path)
        self._fh = open(self._partial, "w", encoding="utf-8")
        self._arrays, self._rows = {}, 0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if prediction is None:  # a batch the module skipped (e.g. every item unreadable)
            return
        rows = pl_module.prediction_rows(prediction)
        for row in rows:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._rows += len(rows)
        arrays = getattr(pl_module, "prediction_arrays", None)
        if arrays is None:
            return
        for key, value in arrays(prediction).items():
            if len(value) != len(rows):
                raise ValueError(
                    f"{type(pl_module).__name__}.prediction_arrays: {key!r} has {len(value)} rows for "
                    f"{len(rows)} prediction rows; row i of each array must belong to JSON line i"
                )
            self._arrays.setdefault(key, []).append(value.detach().cpu())

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        message = f"predict: {self._rows} rows written to {self.written}"
        if self._arrays:  # prediction_arrays gave tensors (a multi-task module may give none for some tasks)
            self.arrays_written = self.written.with_suffix(".pt")
            with written_whole(self.arrays_written) as tmp:
                torch.save({k: torch.cat(v) for k, v in self._arrays.items()}, tmp)
            self._arrays = {}
            message += f", tensors to {self.arrays_written}"
        else:  # a tensor file of an earlier run would otherwise sit beside these rows as if it were theirs
            self.written.with_suffix(".pt").unlink(missing_ok=True)
        os.replace(self._partial, self.written)  # the rows last: the JSON lines exist only once everything does
        self._partial = None
        rank_zero_info(message + (" (rank 0; each rank writes its own files)" if trainer.world_size > 1 else ""))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)
            self._partial = None
