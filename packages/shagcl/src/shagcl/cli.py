"""Command line: ``shagcl fit|validate|test|predict --config <file or shipped name>`` and ``shagcl extract``."""

from __future__ import annotations

from collections.abc import Sequence

from mmzoo.cli import run_cli

from shagcl.data import SGGDataModule
from shagcl.module import SHAGCLModule


def _extract(argv: list[str]):
    from shagcl.detector import extract_main

    return extract_main(argv)


def main(args: Sequence[str] | None = None, run: bool = True):
    """Entry point of the ``shagcl`` console script; ``main(args=[...])`` returns the LightningCLI (tests)."""
    return run_cli(
        SHAGCLModule, SGGDataModule, package="shagcl", args=args, run=run, extra_commands={"extract": _extract}
    )


if __name__ == "__main__":
    main()
