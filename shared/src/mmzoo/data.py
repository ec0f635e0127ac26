"""DataLoader plumbing that the packages' LightningDataModules share, and the JSON / JSON Lines readers of their
annotation files.

Every package's datamodule takes ``num_workers``, ``pin_memory`` and ``persistent_workers`` as init arguments (so they
are config keys under ``data.init_args``) and builds its loaders with one ``_loader(split, train)`` method.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "SplitLoaders",
    "ensure_generated",
    "evaluation_sampler",
    "partial_path",
    "read_json",
    "read_jsonl",
    "read_torch",
    "reload_train_loader_every_epoch",
    "worker_options",
    "written_whole",
]

log = logging.getLogger(__name__)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON value stored in ``path`` (UTF-8). A file that is not valid JSON (text that is not UTF-8 included)
    raises a ValueError naming ``what``, the file, and the line and column of the fault; so does an object that
    gives one key twice with different values (plain ``json.loads`` would keep the last silently). A missing file
    raises FileNotFoundError as ``open`` does."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{what} {str(path)!r} is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} "
            "(JSON files must be UTF-8; re-save it in that encoding)"
        ) from err
    try:
        return json.loads(text, object_pairs_hook=_object_without_conflicts)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} {str(path)!r} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from err
    except _ConflictingKeyError as err:
        raise ValueError(
            f"{what} {str(path)!r} gives the key {err.args[0]!r} twice in one object, with different values "
            f"({err.args[1]!r} and {err.args[2]!r}); JSON readers keep only the last, so one of them would be lost"
        ) from None


def read_jsonl(path: str | Path, what: str = "JSON Lines file") -> list[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of the JSON Lines file ``path`` (UTF-8), numbered from 1.
    A line that is not valid JSON, bytes that are not UTF-8, and an object giving one key twice with different
    values raise a ValueError naming ``what``, the file and the line, as :func:`read_json` does for one value. A
    missing file raises FileNotFoundError as ``open`` does."""
    path = Path(path)
    rows = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{what} {str(path)!r} line {lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{where} is not UTF-8 text: byte 0x{raw[err.start]:02x} at column {err.start + 1} (JSON Lines files "
                "must be UTF-8; re-save it in that encoding)"
            ) from err
        try:
            rows.append((lineno, json.loads(text, object_pairs_hook=_object_without_conflicts)))
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON: {err.msg} (column {err.colno})") from err
        except _ConflictingKeyError as err:
            raise ValueError(
                f"{where} gives the key {err.args[0]!r} twice in one object, with different values "
                f"({err.args[1]!r} and {err.args[2]!r}); JSON readers keep only the last, so one of them would be lost"
            ) from None
    return rows


def read_torch(path: str | Path, what: str, weights_only: bool = True) -> Any:
    """``torch.load(path, map_location="cpu")``. A file that cannot be read (cut short by a download, copy or save
    that stopped, or not a torch file) raises a ValueError naming ``what`` (the option or flag that gave the file)
    and the file, with torch's own message; torch's names neither. A missing file raises FileNotFoundError."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        reason = str(err) or type(err).__name__  # an empty file gives a bare EOFError
        raise ValueError(f"{what} {str(path)!r} cannot be read as a torch file ({reason})") from err


class _ConflictingKeyError(Exception):
    """A key repeated in one JSON object with another value (args: key, first value, second value)."""


def _object_without_conflicts(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object builder: a dict, refusing a key repeated with a different value (plain ``json.loads``
    keeps the last silently). A key repeated with an equal value is harmless and kept once."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        first: dict[str, Any] = {}
        for key, value in pairs:
            if key in first and first[key] != value:
                raise _ConflictingKeyError(key, _short(first[key]), _short(value))
            first.setdefault(key, value)
    return obj


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def partial_path(path: str | Path) -> Path:
    """The temporary name a file is written under before it takes ``path``'s: ``.<name>.<pid>.partial`` beside it
    (hidden, another suffix: no reader looks for it; one per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextmanager
def written_whole(path: str | Path) -> Iterator[Path]:
    """Write ``path`` whole or not at all: yields a temporary path beside it (``.<name>.<pid>.partial``, a name no
    reader looks for) to write to; on normal exit it is renamed to ``path`` in one step, replacing any old file; on
    an exception it is removed and ``path`` is left as it was. A run stopped mid-write (Ctrl-C, a crash, a full disk)
    so never leaves a truncated cache or feature file that a later run would read, and two processes writing the
    same file (ranks building one cache) each rename a complete copy. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_generated(
    marker: Path, stamp: Path, settings: dict[str, Any], write: Callable[[], Any], what: str, owned: bool = False
) -> bool:
    """Keep generated data (a demo's or a repro's synthetic set) in step with the settings that made it.

    ``marker`` is a file the data always has; ``stamp`` the file recording ``settings`` (JSON, sorted keys). Data
    stamped with these settings are kept; data stamped with others are written again by ``write()``; missing data
    are written. Data without a stamp are the user's own (or written before stamps existed) and are left alone with
    a warning naming ``what`` made stamps, unless ``owned`` says the folder belongs to the caller (a script's
    cache), which rewrites them. The stamp is removed before writing and written last, so a write cut short is
    never taken for a complete one. Returns True when ``write()`` ran."""
    text = json.dumps(settings, sort_keys=True, default=list)
    if marker.exists():
        if not stamp.is_file():
            if not owned:
                log.warning(
                    "%s holds data without the %s's stamp (%s): used as it is, not generated from the settings; "
                    "delete it to have them applied",
                    marker.parent, what, stamp.name,
                )  # fmt: skip
                return False
        elif stamp.read_text() == text:
            return False
        else:
            log.warning("%s: generating the data again (the %s's settings changed)", marker.parent, what)
    stamp.unlink(missing_ok=True)
    write()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(text)
    return True


def reload_train_loader_every_epoch(trainer: Any, reason: str) -> None:
    """Make Lightning call the datamodule's ``train_dataloader()`` at the start of every epoch.

    A datamodule that draws new training samples per epoch inside ``train_dataloader()`` (new windows, new pair
    sampling) needs this: with Lightning's default ``reload_dataloaders_every_n_epochs=0`` the hook runs once per fit
    and every epoch would replay the first one's draws. Call it from ``setup("fit")``; ``reason`` names what the
    reload is for (logged once when the setting is changed). A value other than 0 or 1 set by the user is overridden
    too, since any other period would replay draws. ``trainer`` may be None (a datamodule used without a trainer).
    """
    if trainer is None or trainer.reload_dataloaders_every_n_epochs == 1:
        return
    log.info("setting trainer.reload_dataloaders_every_n_epochs=1 (was %s): %s",
             trainer.reload_dataloaders_every_n_epochs, reason)  # fmt: skip
    trainer.reload_dataloaders_every_n_epochs = 1


def evaluation_sampler(dataset: Any, trainer: Any, unit: str = "items"):
    """A sampler that gives each evaluation item to exactly one process, or None on one process.

    Lightning's default ``DistributedSampler`` pads the last round with repeated items so every rank holds the same
    number; a metric accumulated over the epoch then counts those items twice. This one (Lightning's
    ``UnrepeatedDistributedSampler``, in order) leaves the ranks uneven instead, so the module must not run a
    collective per step during evaluation (``self.log(..., sync_dist=True)`` per batch would hang): accumulate in
    torchmetrics metrics or gather once at epoch end. ``unit`` names the items in the error raised when there are
    fewer of them than processes (a rank without any item would wait at the epoch-end collective).
    """
    world = getattr(trainer, "world_size", 1) if trainer is not None else 1
    if world <= 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    if len(dataset) < world:
        raise ValueError(f"{len(dataset)} {unit} cannot be split over {world} processes: use fewer devices")
    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False)


def worker_options(hparams: Any) -> dict[str, Any]:
    """The ``DataLoader`` keyword arguments ``num_workers``, ``pin_memory`` and ``persistent_workers`` from a
    datamodule's ``hparams``. ``persistent_workers`` is passed only as far as it is valid: torch refuses it without
    worker processes, so it is ``False`` whenever ``num_workers`` is 0."""
    return {
        "num_workers": hparams.num_workers,
        "pin_memory": hparams.pin_memory,
        "persistent_workers": bool(hparams.persistent_workers and hparams.num_workers > 0),
    }


class SplitLoaders:
    """Mixin for a ``LightningDataModule`` (list it first among the bases) whose loaders all come from
    ``self._loader(split, train)``: fit trains on ``"train"`` (``train=True``: shuffled), validation reads ``"val"``,
    test and predict read ``"test"`` (``predict_split`` changes the latter). A package overrides a single hook where it
    must do more, e.g. reseed its training set each epoch before returning ``super().train_dataloader()`` (and calls
    :func:`reload_train_loader_every_epoch` in ``setup("fit")`` so that the hook runs every epoch)."""

    predict_split = "test"

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader(self.predict_split, False)
