"""Command line: ``asdmllm fit|validate|test|predict --config <file or shipped name>`` and ``asdmllm build-cmsc``."""

from __future__ import annotations

from mmzoo.cli import run_cli

from .cmsc import build_cmsc_main
from .data import DebiasDataModule
from .module import ASDModule

__all__ = ["main"]


def main(args: list[str] | None = None, run: bool = True):
    """Entry point of the ``asdmllm`` script; with ``args`` (tests) returns the LightningCLI or the command's result."""
    return run_cli(
        ASDModule,
        DebiasDataModule,
        package="asdmllm",
        args=args,
        run=run,
        extra_commands={"build-cmsc": build_cmsc_main},
    )
