"""Tiny synthetic inputs for tests: pattern videos, captions, feature files, a two-process runner, a script loader.

:func:`make_pattern_video` writes a video whose frame k shows the binary code of k as a grid of black and
white cells; :func:`decode_pattern` reads k back from a decoded frame, so a test can check exactly which
frames a sampler returned. The cells are large enough to survive lossy compression.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from lightning.pytorch import Callback
from torch.overrides import TorchFunctionMode

__all__ = [
    "pattern_frame",
    "decode_pattern",
    "make_pattern_video",
    "moving_shapes_video",
    "random_captions",
    "write_h5_features",
    "write_npy_features",
    "run_distributed",
    "lightning_eval_loader",
    "sync_dist_logger",
    "epoch_seeded_train_dataloader",
    "record_state_at_train_start",
    "training_state",
    "FirstStepProbe",
    "QUIET_CPU_RUN",
    "ONE_BATCH_EACH",
    "assert_started_from_checkpoint",
    "assert_same_training_state",
    "assert_loads_without_data",
    "run_in_triton_interpreter",
    "load_script",
    "repeated_index_reads",
    "text_writes_stopped_midway",
]

_GRID = 4  # 4 × 4 cells → 16 bits, frame indices up to 65535


def pattern_frame(k: int, height: int = 64, width: int = 64) -> torch.Tensor:
    """uint8 (3, H, W) frame whose cells (row-major, 4×4 grid) are white where bit b of ``k`` is set."""
    if not 0 <= k < 2 ** (_GRID * _GRID):
        raise ValueError(f"pattern_frame: k must be in [0, {2 ** (_GRID * _GRID)}), got {k}")
    img = torch.zeros(3, height, width, dtype=torch.uint8)
    ch, cw = height // _GRID, width // _GRID
    for b in range(_GRID * _GRID):
        if (k >> b) & 1:
            r, c = divmod(b, _GRID)
            img[:, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = 255
    return img


def decode_pattern(frame: torch.Tensor) -> int:
    """Inverse of :func:`pattern_frame` on a decoded (3, H, W) frame: the mean of each cell's inner half."""
    _, h, w = frame.shape
    ch, cw = h // _GRID, w // _GRID
    k = 0
    for b in range(_GRID * _GRID):
        r, c = divmod(b, _GRID)
        cell = frame[:, r * ch + ch // 4 : (r + 1) * ch - ch // 4, c * cw + cw // 4 : (c + 1) * cw - cw // 4]
        if cell.float().mean() > 127.5:
            k |= 1 << b
    return k


def make_pattern_video(
    path: str | os.PathLike,
    num_frames: int = 48,
    fps: float = 24.0,
    height: int = 64,
    width: int = 64,
    gop: int = 12,
) -> Path:
    """Write an mp4 whose frame k shows :func:`pattern_frame` (k); keyframes every ``gop`` frames."""
    from mmzoo.video import write_video

    frames = torch.stack([pattern_frame(k, height, width) for k in range(num_frames)])
    return write_video(path, frames, fps=fps, gop=gop)


def moving_shapes_video(
    num_frames: int = 16, height: int = 64, width: int = 64, seed: int = 0, num_shapes: int = 2
) -> torch.Tensor:
    """uint8 (T, 3, H, W): coloured squares moving with constant velocity over a dark background."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.full((num_frames, 3, height, width), 16, dtype=torch.uint8)
    for _ in range(num_shapes):
        size = int(torch.randint(max(2, min(height, width) // 8), max(3, min(height, width) // 3), (1,), generator=g))
        color = torch.randint(64, 256, (3,), generator=g).to(torch.uint8)
        y0, x0 = (
            float(torch.randint(0, height - size, (1,), generator=g)),
            float(torch.randint(0, width - size, (1,), generator=g)),
        )
        vy, vx = (torch.rand(2, generator=g) * 4 - 2).tolist()
        for t in range(num_frames):
            y = int(min(max(0, y0 + vy * t), height - size))
            x = int(min(max(0, x0 + vx * t), width - size))
            frames[t, :, y : y + size, x : x + size] = color.view(3, 1, 1)
    return frames


_SUBJECTS = ["a man", "a woman", "a dog", "a child", "two people", "a cat", "a chef", "a player"]
_VERBS = ["is riding", "is cooking", "is throwing", "is holding", "is opening", "is painting", "is kicking"]
_OBJECTS = ["a red bicycle", "a large pizza", "a small ball", "a wooden door", "a blue car", "a white fence"]
_PLACES = ["in the park", "in a kitchen", "on the street", "at the beach", "in a gym", "near a river"]


def random_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` short English captions (subject, verb, object, place) drawn with a fixed seed."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}" for _ in range(n)
    ]


def write_h5_features(
    path: str | os.PathLike, features: Mapping[str, np.ndarray | torch.Tensor], group_key: str | None = None
) -> Path:
    """Write ``{video_id: (T, D) array}`` to an HDF5 file (under ``f[id][group_key]`` when given)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for vid, arr in features.items():
            arr = arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
            if group_key is None:
                f.create_dataset(vid, data=arr)
            else:
                f.create_group(vid).create_dataset(group_key, data=arr)
    return path


def write_npy_features(
    root: str | os.PathLike, features: Mapping[str, np.ndarray | torch.Tensor], npz_key: str | None = None
) -> Path:
    """Write ``{video_id: array}`` as ``root/<id>.npy`` (or ``.npz`` holding ``npz_key``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for vid, arr in features.items():
        arr = arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if npz_key is None:
            np.save(root / f"{vid}.npy", arr)
        else:
            np.savez(root / f"{vid}.npz", **{npz_key: arr})
    return root


def _worker(rank: int, world: int, init_file: str, fn: Callable, args: tuple, out_dir: str) -> None:
    import faulthandler

    import torch.distributed as dist

    faulthandler.enable()  # a rank killed by a signal (an abort in a native library) prints where it was

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    # The result is on disk and the group is gone: leave without the interpreter's teardown. There, now and then
    # (a few runs in a hundred on a 2-core CPU), a native destructor met a thread still running and aborted the
    # process ("terminate called without an active exception", no Python frame), failing a test that had passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn: Callable, world_size: int = 2, args: tuple = (), timeout: float = 300.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` CPU processes joined by a gloo group.

    ``fn`` must be importable (a module-level function). Returns each rank's return value (saved with
    ``torch.save``), in rank order. Used by the two-process equivalence tests of contrastive losses. A run that has
    not ended after ``timeout`` seconds (a collective that only some ranks reach) is killed and raises
    ``TimeoutError``, so a hang fails its test instead of stalling the suite.
    """
    import time

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.spawn(_worker, args=(world_size, init_file, fn, args, tmp), nprocs=world_size, join=False)
        deadline = time.monotonic() + timeout
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                    process.join()
                name = getattr(fn, "__qualname__", repr(fn))
                raise TimeoutError(f"run_distributed({name}, world_size={world_size}): no end after {timeout:g} s")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def lightning_eval_loader(loader, rank: int, world: int, stage: str = "validate"):
    """``loader`` as Lightning's trainer hands it to an evaluation loop (``stage``: ``validate``, ``test`` or
    ``predict``) on process ``rank`` of ``world``: a loader whose sampler is not a ``DistributedSampler`` gets
    Lightning's default one (which pads the last round with repeated items); one that is, is kept. Lets a test run
    a datamodule's evaluation loader inside :func:`run_distributed` exactly as a multi-GPU run would see it."""
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    modes = {"validate": RunningStage.VALIDATING, "test": RunningStage.TESTING, "predict": RunningStage.PREDICTING}
    if stage not in modes:
        raise ValueError(f"stage must be one of {sorted(modes)}, got {stage!r}")
    if world > 1 and not isinstance(loader.sampler, DistributedSampler):
        mode = modes[stage]
        sampler = _get_distributed_sampler(loader, False, overfit_batches=0, mode=mode, num_replicas=world, rank=rank)
        loader = _update_dataloader(loader, sampler, mode=mode)
    return loader


def sync_dist_logger(world: int) -> tuple[Callable, dict[str, torch.Tensor]]:
    """A stand-in for ``LightningModule.log(..., sync_dist=True)`` inside :func:`run_distributed`: each call
    all-reduces its value to the mean over ranks, as Lightning does, so ranks that log different names or different
    numbers of values fail or hang as a real multi-GPU run would. Returns ``(log, logged)``: assign ``log`` to
    ``module.log``; ``logged`` maps each name to its last value (float64)."""
    logged: dict[str, torch.Tensor] = {}

    def log(name: str, value, **kwargs) -> None:
        value = torch.as_tensor(value, dtype=torch.float64).clone()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
            value /= world
        logged[name] = value

    return log, logged


def epoch_seeded_train_dataloader(datamodule_class: type, seed: int = 100) -> Callable:
    """A stand-in for ``datamodule_class.train_dataloader`` (monkeypatch it in) whose epoch is a function of
    (``seed``, epoch) alone: the loader shuffles with a generator seeded by ``seed + current_epoch`` and, when an
    epoch's iteration starts, reseeds Python's, numpy's and torch's global generators the same way, so the epoch's
    augmentation, masking and dropout draws follow too (workers: ``num_workers: 0``). A resume restores no global
    RNG, so this is what lets a test compare the whole state of an interrupted-and-resumed fit with an uninterrupted
    one. The package's own loader supplies the dataset, batch size and collate function; the last partial batch is
    dropped."""
    from torch.utils.data import DataLoader, Sampler

    original = datamodule_class.train_dataloader

    class _EpochSeeded(Sampler):
        def __init__(self, datamodule, n: int):
            self.datamodule, self.n = datamodule, n

        def __len__(self) -> int:
            return self.n

        def __iter__(self):
            epoch_seed = seed + self.datamodule.trainer.current_epoch
            random.seed(epoch_seed)
            np.random.seed(epoch_seed)
            torch.manual_seed(epoch_seed)
            yield from torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed)).tolist()

    def train_dataloader(self):
        dl = original(self)
        n = len(dl.dataset)
        return DataLoader(dl.dataset, batch_size=dl.batch_size, sampler=_EpochSeeded(self, n), drop_last=True,
                          collate_fn=dl.collate_fn)  # fmt: skip

    return train_dataloader


def record_state_at_train_start(monkeypatch, module_class: type) -> list[dict[str, torch.Tensor]]:
    """Patch ``module_class.on_train_start`` (with pytest's ``monkeypatch``) to record a copy of the module's
    ``state_dict`` each time a fit starts training, i.e. after Lightning restored a ``--ckpt_path`` checkpoint:
    a resume test compares the last entry with the checkpoint to see that nothing overwrote the restored state."""
    states: list[dict[str, torch.Tensor]] = []
    original = getattr(module_class, "on_train_start", None)

    def on_train_start(self) -> None:
        states.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        if original is not None:
            original(self)

    monkeypatch.setattr(module_class, "on_train_start", on_train_start, raising=False)
    return states


def training_state(trainer, module) -> dict:
    """What a fit trains with, read inside a training hook (e.g. a callback's ``on_train_batch_start``): whether
    Lightning is still in its sanity validation, the modules not in train mode, the frozen parameters' names, the
    first optimizer's groups as ``(lr, weight_decay, parameter ids)``, their ``initial_lr``, the trainable
    parameters' ids and the schedule's length in optimizer steps. Tests of the shipped configs compare these with
    the recipe: a pretrained part left in eval mode, or a parameter in no group or in two, shows here."""
    opt = trainer.optimizers[0]
    return {
        "sanity_checking": trainer.sanity_checking,
        "not_training": [n for n, m in module.named_modules() if not m.training],
        "frozen": [n for n, p in module.named_parameters() if not p.requires_grad],
        "groups": [(g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in opt.param_groups],
        "initial_lr": [g.get("initial_lr") for g in opt.param_groups],
        "trainable": {id(p) for p in module.parameters() if p.requires_grad},
        "total": trainer.estimated_stepping_batches,
    }


class FirstStepProbe(Callback):
    """Base of a Lightning callback that records :func:`training_state`, plus what :meth:`extra` returns, in
    ``self.seen`` at the first training batch (after the sanity validation), lets that batch train, adds what
    :meth:`after_step` returns, and stops the fit. Subclasses add their own fields and hooks."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def extra(self, trainer, module) -> dict:
        """More state read at the first training batch."""
        return {}

    def after_step(self, trainer, module) -> dict:
        """State read once the first training batch has run."""
        return {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not self.seen:
            self.seen = {**training_state(trainer, module), **self.extra(trainer, module)}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = True
        self.seen.update(self.after_step(trainer, module))


QUIET_CPU_RUN = (
    "--trainer.accelerator", "cpu",
    "--trainer.devices", "1",
    "--trainer.strategy", "auto",
    "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
)  # fmt: skip
"""CLI arguments that run a shipped config (written for several GPUs, with loggers) in one CPU process that writes
no logs and prints no progress bar or model summary: the part every test of a shipped config overrides alike."""

IN_PROCESS_LOADERS = (
    "--data.num_workers", "0",
    "--data.pin_memory", "false",
    "--data.persistent_workers", "false",
)  # fmt: skip
"""CLI arguments that make a shipped config's loaders read in the test process (no worker processes, no pinned
memory), for the datamodules that take those three keys."""

ONE_BATCH_EACH = (
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "1",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
)  # fmt: skip
"""CLI arguments that cut a fit to one training and one validation batch, and a test to one batch."""


def assert_started_from_checkpoint(states: list[dict[str, torch.Tensor]], checkpoint: str | os.PathLike) -> None:
    """The last state :func:`record_state_at_train_start` recorded is exactly the ``state_dict`` saved in
    ``checkpoint``: nothing (``setup``, pretrained-weight loading, data-derived buffers) overwrote what the resume
    restored."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    start = states[-1]
    assert sorted(start) == sorted(saved), "the resumed module's state_dict keys differ from the checkpoint's"
    for key, value in saved.items():
        assert torch.equal(start[key].cpu(), value), f"{key} differs from the checkpoint when training starts"


def assert_same_training_state(a, b) -> None:
    """Trainers ``a`` and ``b`` ended in the same training state: epoch and step counters, every entry of the
    module's ``state_dict``, each optimizer's learning rates and state tensors (dtype included, parameters matched
    in order) and each LR scheduler's step count. For an uninterrupted fit against an interrupted-and-resumed one
    whose epochs depend on (seed, epoch) only (:func:`epoch_seeded_train_dataloader`)."""
    assert (a.current_epoch, a.global_step) == (b.current_epoch, b.global_step)
    sa, sb = a.lightning_module.state_dict(), b.lightning_module.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)
    for opt_a, opt_b in zip(a.optimizers, b.optimizers, strict=True):
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
        params_a = [p for g in opt_a.param_groups for p in g["params"]]
        params_b = [p for g in opt_b.param_groups for p in g["params"]]
        for i, (pa, pb) in enumerate(zip(params_a, params_b, strict=True)):
            st_a, st_b = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
            assert st_a.keys() == st_b.keys(), f"optimizer state of parameter {i}"
            for key, va in st_a.items():
                vb = st_b[key]
                if isinstance(va, torch.Tensor):
                    assert va.dtype == vb.dtype, f"optimizer {key} of parameter {i}: {va.dtype} vs {vb.dtype}"
                    torch.testing.assert_close(va, vb, msg=f"optimizer {key} of parameter {i}")
                else:
                    assert va == vb, f"optimizer {key} of parameter {i}"
    for ca, cb in zip(a.lr_scheduler_configs, b.lr_scheduler_configs, strict=True):
        assert ca.scheduler.last_epoch == cb.scheduler.last_epoch


def assert_loads_without_data(
    module_class: type, checkpoint: str | os.PathLike, fitted, *, ignore: tuple[str, ...] = (), **trainer_kwargs
):
    """``module_class.load_from_checkpoint(checkpoint)`` in Python, before any datamodule, loads every saved tensor;
    a Trainer then given the fitted run's datamodule validates it exactly as ``validate --ckpt_path`` does (the
    fitted module, set up from the data, restoring the checkpoint), and nothing that ``setup`` builds from the data
    re-initialises a loaded parameter; nor does a second ``setup`` of the fitted module (fit, then validate in one
    session). The compared validations start from the same seed (evaluation may draw masks).
    ``fitted``: the LightningCLI or Trainer of the run that wrote ``checkpoint``; ``ignore``: metrics not compared
    (timings); ``trainer_kwargs`` go to the validating Trainer. Returns the loaded module."""
    import lightning.pytorch as pl

    if isinstance(fitted, pl.Trainer):
        module, datamodule = fitted.lightning_module, fitted.datamodule
    else:
        module, datamodule = fitted.model, fitted.datamodule
    loaded = module_class.load_from_checkpoint(checkpoint, map_location="cpu")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    state = loaded.state_dict()
    assert state.keys() == saved.keys(), "load_from_checkpoint: the state_dict keys differ from the checkpoint's"
    for key, value in saved.items():
        assert torch.equal(state[key].cpu(), value), f"load_from_checkpoint: {key} differs from the checkpoint"

    options = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, accelerator="cpu")
    trainer = pl.Trainer(**{**options, **trainer_kwargs})
    # fit then validate/test on the same module (a notebook's order): its second setup keeps the trained parameters
    before = {k: p.detach().clone() for k, p in module.named_parameters()}
    trainer.validate(module, datamodule=datamodule, verbose=False)
    for key, p in module.named_parameters():
        assert torch.equal(p.detach(), before[key]), f"{key}: a second setup of the fitted module changed it"
    pl.seed_everything(0, verbose=False)
    got = trainer.validate(loaded, datamodule=datamodule, verbose=False)[0]
    pl.seed_everything(0, verbose=False)
    ref = trainer.validate(module, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)[0]
    got, ref = ({k: v for k, v in m.items() if k not in ignore} for m in (got, ref))
    assert got and got == ref, f"validation of the loaded module {got} differs from validate --ckpt_path's {ref}"
    for key, p in loaded.named_parameters():  # buffers may be evaluation bookkeeping (e.g. the last val score)
        assert torch.equal(p.detach().cpu(), saved[key]), f"{key} differs from the checkpoint after validating"
    return loaded


def run_in_triton_interpreter(test_file: str | os.PathLike, statement: str, timeout: float = 600.0) -> str:
    """Run ``statement`` in a fresh Python process with ``TRITON_INTERPRET=1``; return its stdout.

    Triton picks the interpreter when it is first imported, so a CPU check of a kernel needs a process that
    has not imported it yet. ``test_file``'s module is imported first under its own name (its folder goes on
    ``sys.path``), so ``statement`` can call the checks defined there, e.g. ``"test_ops.check('cpu')"``.
    Raises ``AssertionError`` with the end of the child's stderr when it exits with an error.
    """
    test_file = Path(test_file)
    code = f"import sys; sys.path.insert(0, {str(test_file.parent)!r}); import {test_file.stem}; {statement}"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{test_file.name}: {statement!r} failed under TRITON_INTERPRET=1:\n{proc.stderr[-3000:]}")
    return proc.stdout


def load_script(path: str | os.PathLike, name: str | None = None) -> ModuleType:
    """Import a script that is not part of an installed package (a package's ``repro.py``) from its path, so tests
    can call its functions. ``name`` (default ``<folder>_<stem>``, e.g. ``pckd_repro``) becomes the module's
    ``__name__``; the module is not added to ``sys.modules``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_script: no script at {path}")
    spec = importlib.util.spec_from_file_location(name or f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _index_repeats(index) -> bool:
    """Whether an indexing key selects some element twice through integer tensors (all tensor parts together)."""
    parts = index if isinstance(index, tuple) else (index,)
    ints = [t for t in parts if torch.is_tensor(t) and not t.is_floating_point() and t.dtype != torch.bool]
    if not ints or max(t.numel() for t in ints) < 2:
        return False
    keys = torch.stack([t.reshape(-1) for t in torch.broadcast_tensors(*ints)], dim=1)  # one row per selection
    return torch.unique(keys, dim=0).shape[0] < keys.shape[0]


class _RepeatedIndexReads(TorchFunctionMode):
    def __init__(self, hits: list[str]):
        super().__init__()
        self.hits = hits

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and torch.is_grad_enabled():
            x, index = args[0], args[1]
            if torch.is_tensor(x) and x.requires_grad and _index_repeats(index):
                frame = traceback.extract_stack()[-2]
                self.hits.append(f"{frame.filename}:{frame.lineno}: {frame.line}")
        return func(*args, **(kwargs or {}))


@contextmanager
def repeated_index_reads() -> Iterator[list[str]]:
    """Record every ``x[index]`` on a tensor that requires grad whose integer-tensor index picks a row twice.

    Its backward is an accumulating ``index_put_``, which sums the repeated rows' gradients in a thread-dependent
    order on CPU, so two runs of the same training differ in the last bits and then drift apart. ``index_select``,
    ``F.embedding`` and ``gather`` sum in a fixed order. Yields the list of ``file:line: code`` places, filled as
    the block runs.
    """
    hits: list[str] = []
    with _RepeatedIndexReads(hits):
        yield hits


@contextmanager
def text_writes_stopped_midway() -> Iterator[list[Path]]:
    """Inside the block, ``Path.write_text`` writes the first half of its text and raises KeyboardInterrupt, as a
    run stopped mid-write would; yields the list of paths it was called on. A writer that writes through
    :func:`mmzoo.data.written_whole` leaves its target as it was before."""
    real, called = Path.write_text, []

    def half_then_stop(self: Path, data: str, *args, **kwargs) -> int:
        called.append(self)
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    Path.write_text = half_then_stop
    try:
        yield called
    finally:
        Path.write_text = real
