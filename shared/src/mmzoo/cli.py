"""The LightningCLI every mmzoo package uses.

A package's ``cli.py`` is one call::

    def main(args=None):
        return run_cli(PCKDModule, PCKDDataModule, package="pckd", args=args)

What this adds to a plain :class:`~lightning.pytorch.cli.LightningCLI`:

* Shipped configs are found by name: ``pckd fit --config demo`` (or ``-c demo``) reads ``pckd/configs/demo.yaml``
  from the installed package when no file called ``demo`` exists in the working directory.
* Default callbacks: Lightning's progress bar (``enable_progress_bar``), checkpointing (``last.ckpt``, the latest
  state, plus the best checkpoint by the module's ``checkpoint_monitor`` class attribute) and a learning-rate monitor
  (only when a logger is active).
* Predictions: a module with a ``prediction_rows`` method gets :class:`mmzoo.predict.PredictionWriter`, so
  ``predict`` writes one JSON line per item (``--predictions.path``; default ``predictions.jsonl`` in the log
  folder) instead of keeping the outputs in memory.
* Seeding: ``seed_everything`` defaults to 0, so two runs of the same config agree.
* ``MMZOO_METRICS_JSON=path`` in the environment writes the final metrics as JSON (``make demo`` uses it).
* Package-specific commands (feature extraction, dataset builders) are passed explicitly in
  ``extra_commands`` and dispatched before Lightning parses anything.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from mmzoo.data import written_whole
from mmzoo.predict import PredictionWriter, writes_predictions

__all__ = [
    "Built",
    "allow_in_checkpoints",
    "build",
    "checkpoint_types",
    "resolve_config",
    "shipped_configs",
    "run_cli",
    "default_callbacks",
    "write_metrics",
]

ExtraCommand = Callable[[list[str]], object]
log = logging.getLogger(__name__)


def shipped_configs(package: str) -> list[str]:
    """Names (without ``.yaml``) of the configs shipped in ``<package>/configs/``, sorted."""
    try:
        root = importlib.resources.files(f"{package}.configs")
    except ModuleNotFoundError:
        return []
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config(value: str, package: str) -> str:
    """Map a ``--config`` value to a file path.

    An existing file wins. Otherwise ``value`` (with or without ``.yaml``) names a config shipped in
    ``<package>/configs/``. A value that is neither raises :class:`FileNotFoundError` listing the shipped names.
    """
    if Path(value).is_file():
        return value
    name = value[: -len(".yaml")] if value.endswith(".yaml") else value
    if "/" not in name and name in shipped_configs(package):
        return str(importlib.resources.files(f"{package}.configs") / f"{name}.yaml")
    if value.lstrip().startswith(("{", "[")) or "\n" in value or ":" in value:
        return value  # an inline YAML/JSON string, which jsonargparse accepts as a config
    raise FileNotFoundError(
        f"--config {value!r}: no such file, and no shipped config of that name in {package}. "
        f"Shipped configs: {', '.join(shipped_configs(package)) or '(none)'}."
    )


def _resolve_args(args: Sequence[str], package: str) -> list[str]:
    """Rewrite every ``--config X`` / ``--config=X`` (and the short forms ``-c X``, ``-c=X``, ``-cX``) in
    ``args`` through :func:`resolve_config`."""
    out: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in ("--config", "-c"):
            value = next(it, None)
            if value is None:
                raise ValueError(f"{arg} needs a value: a YAML file or the name of a shipped config")
            out += [arg, resolve_config(value, package)]
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1], package))
        elif arg.startswith("-c") and not arg.startswith("--"):
            value = arg[3:] if arg.startswith("-c=") else arg[2:]
            out.append("-c=" + resolve_config(value, package))
        else:
            out.append(arg)
    return out


class _LearningRateMonitorIfLogger(LearningRateMonitor):
    """A :class:`LearningRateMonitor` that stays silent when the trainer runs with ``logger: false``."""

    def on_train_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:  # noqa: D401 (Lightning hook)
        if not trainer.loggers:
            self._disabled = True
            return
        self._disabled = False
        super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if not getattr(self, "_disabled", False):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if not getattr(self, "_disabled", False):
            super().on_train_epoch_start(trainer, *args, **kwargs)


def checkpoint_types(*types: type) -> set[type]:
    """The dataclasses among ``types`` and, recursively, among their fields' annotated types (``X | None``,
    ``list[X]`` and the like included): what a checkpoint's saved hyperparameters may hold."""
    found: set[type] = set()

    def visit(t: object) -> None:
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            if t in found:
                return
            found.add(t)
            for hint in typing.get_type_hints(t).values():
                visit(hint)
        for arg in typing.get_args(t):
            visit(arg)

    for t in types:
        visit(t)
    return found


def allow_in_checkpoints(module_class: type[pl.LightningModule]) -> None:
    """Let ``torch.load(..., weights_only=True)`` read checkpoints of ``module_class`` built in Python: allow-list the
    config dataclasses its ``__init__`` takes (and those nested in them, :func:`checkpoint_types`).

    With torch >= 2.6 that is how Lightning loads ``Trainer.fit(ckpt_path=...)`` and ``load_from_checkpoint``. A
    module built in Python saves its config objects themselves among the hyperparameters, which torch refuses to
    read unless their classes are allow-listed (a module built by the CLI saves plain values). Each package calls
    this once, after defining its LightningModule.
    """
    import torch

    types = checkpoint_types(*typing.get_type_hints(module_class.__init__).values())
    torch.serialization.add_safe_globals(sorted(types, key=lambda t: (t.__module__, t.__qualname__)))


def default_callbacks(model_class: type[pl.LightningModule]) -> list[Callback]:
    """Checkpointing and LR monitor. ``last.ckpt`` holds the latest state (rewritten at every checkpointing point,
    one file); with ``model_class.checkpoint_monitor`` set, a second callback keeps ``best-<epoch>-<step>.ckpt`` by
    that metric (``checkpoint_mode``) and is ``trainer.checkpoint_callback`` (so ``ckpt_path="best"`` finds it).

    Two callbacks because Lightning (since 2.6) writes a monitored callback's ``last.ckpt`` only at the steps
    where its top-k file is written, i.e. when the metric improves: ``last.ckpt`` would then be a stale copy of the
    best, and ``fit --ckpt_path last.ckpt`` would resume from an older epoch. The progress bar is Lightning's own
    (``trainer.enable_progress_bar``, on by default), so turning it off works.
    """
    monitor = getattr(model_class, "checkpoint_monitor", None)
    mode = getattr(model_class, "checkpoint_mode", "max")
    # monitor=None with top-1 overwrites one file each time; a fixed name without version counter makes it last.ckpt
    latest = ModelCheckpoint(monitor=None, save_top_k=1, save_last=False, filename="last", enable_version_counter=False)
    callbacks: list[Callback] = [latest]
    if monitor:
        best = ModelCheckpoint(
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=False,
            filename="best-{epoch}-{step}",
            auto_insert_metric_name=False,
        )
        callbacks.insert(0, best)
    return [*callbacks, _LearningRateMonitorIfLogger(logging_interval="step")]


def _flatten(value: object, prefix: str) -> dict[str, object]:
    """A parsed (nested) config section as ``{"model.a.b": value}``."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


class _CLI(LightningCLI):
    """LightningCLI that says which model settings a checkpoint overrides.

    With ``--ckpt_path``, Lightning replaces the model's arguments by the hyperparameters saved in the checkpoint,
    whatever the config files and the command line said (e.g. a test-time threshold). That stays so (the
    checkpoint defines the model it holds), but every value that changes is logged as a warning instead of
    being dropped in silence.
    """

    def add_arguments_to_parser(self, parser) -> None:
        # a module with prediction_rows gets the JSON-lines prediction writer, its path under --predictions.path
        if writes_predictions(self.model_class):
            parser.add_lightning_class_args(PredictionWriter, "predictions")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict" and writes_predictions(self.model_class):
            # the writer streams every batch to disk; Lightning would otherwise also keep all outputs in memory
            parser.set_defaults(return_predictions=False)
        return parser

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> pl.Trainer:
        # ``--trainer.enable_checkpointing false`` leaves out the default checkpoint callbacks: Lightning refuses the
        # flag beside any ModelCheckpoint. One that the user's own config lists is still refused by Lightning.
        if config.get("enable_checkpointing") is False:
            defaults = self.trainer_defaults.get("callbacks") or []
            kept = [c for c in defaults if not isinstance(c, ModelCheckpoint)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": kept}
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        before = _flatten(self.config[sub].get("model"), "model") if sub else {}
        super()._parse_ckpt_path()
        if not sub:
            return
        after = _flatten(self.config[sub].get("model"), "model")
        for key in sorted(set(before) & set(after)):
            if before[key] != after[key]:
                log.warning("%s: the checkpoint's value %r replaces %r (Lightning restores the hyperparameters "
                            "saved in --ckpt_path)", key, after[key], before[key])  # fmt: skip


def run_cli(
    model_class: type[pl.LightningModule],
    datamodule_class: type[pl.LightningDataModule] | None,
    package: str,
    args: Sequence[str] | None = None,
    extra_commands: dict[str, ExtraCommand] | None = None,
    run: bool = True,
) -> LightningCLI | object:
    """Run the package's command line.

    Args:
        model_class: the package's LightningModule (not subclass mode: ``--help`` shows its arguments).
        datamodule_class: the package's LightningDataModule, or None when the module needs no data.
        package: the import name of the package; its ``configs/`` folder holds the shipped configs.
        args: the command line without the program name; ``None`` reads ``sys.argv[1:]``.
        extra_commands: package-specific commands, ``{"extract": fn}``; ``fn(rest_of_args)`` runs when the
            first argument names it.
        run: passed to LightningCLI; ``False`` only instantiates (what :func:`build` uses).

    Returns:
        Called with ``args`` (from Python, as tests do): the LightningCLI object (its ``trainer`` and ``model``
        can be inspected), or what an extra command returned. Called from the console (``args=None``): None, or
        an extra command's int exit status, since console scripts pass the result to ``sys.exit``.
    """
    from_console = args is None
    argv = list(sys.argv[1:] if from_console else args)
    extra_commands = dict(extra_commands or {})
    if argv and argv[0] in extra_commands:
        result = extra_commands[argv[0]](argv[1:])
        if from_console:  # the console script does sys.exit(main()): only an int is an exit status
            return result if isinstance(result, int) else None
        return result
    if extra_commands and (not argv or argv[0] in ("-h", "--help")):
        names = ", ".join(sorted(extra_commands))
        print(f"{package}: Lightning subcommands fit|validate|test|predict, and {names} (`{package} NAME --help`).")
    argv = _resolve_args(argv, package)
    with warnings.catch_warnings():
        # LightningCLI warns when it gets args while sys.argv holds some too. Here that is intended: argv is the
        # console's command line with shipped config names resolved to files (sys.argv itself stays as it is,
        # since Lightning's DDP launcher starts the other processes from it).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within")
        cli = _CLI(
            model_class,
            datamodule_class,
            args=argv,
            run=run,
            seed_everything_default=0,
            trainer_defaults={"callbacks": default_callbacks(model_class)},
            save_config_kwargs={"overwrite": True},
        )
    out = os.environ.get("MMZOO_METRICS_JSON")
    if run and out and cli.trainer.is_global_zero:
        write_metrics(cli.trainer, out)
    # The console script does sys.exit(main()): return nothing there (exit status 0), the CLI object in Python.
    return None if from_console else cli


class Built(typing.NamedTuple):
    """What :func:`build` returns."""

    model: pl.LightningModule
    datamodule: pl.LightningDataModule | None
    trainer: pl.Trainer


def build(package: str, config: str, *overrides: str) -> Built:
    """The module, datamodule and trainer that ``<package> fit --config <config> [overrides]`` describes, built
    and not run: the config-driven way into a package from a script or notebook.

    ``config`` is a shipped config's name or a YAML file, as on the command line; ``overrides`` are further
    command-line arguments (``"--model.lr", "0.01"``). The trainer carries the CLI's callbacks (checkpointing,
    the prediction writer of a module with ``prediction_rows``), and ``seed_everything`` has been applied::

        model, data, trainer = build("radartag", "demo", "--trainer.max_epochs", "1")
        trainer.fit(model, datamodule=data)
    """
    try:
        main = importlib.import_module(f"{package}.cli").main
    except ModuleNotFoundError as err:
        if err.name not in (package, f"{package}.cli"):
            raise  # the package is there; a dependency of it is missing (the error names which)
        raise ModuleNotFoundError(f"build: no mmzoo package {package!r} is installed ({err})") from err
    cli = main(["--config", config, *overrides], run=False)
    return Built(cli.model, cli.datamodule, cli.trainer)


def write_metrics(trainer: pl.Trainer, path: str | os.PathLike) -> dict[str, float]:
    """Write the trainer's final scalar metrics (``callback_metrics``) as JSON; ``make demo`` reads them."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    with written_whole(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics
