"""``kevsr`` command line: fit | validate | test | predict, plus ``extract`` (features from videos)."""

from __future__ import annotations

from mmzoo.cli import run_cli

from kevsr.data import KEVSRDataModule
from kevsr.module import KEVSRModule


def _extract(argv: list[str]):
    from kevsr.extract import main as extract_main

    return extract_main(argv)


def main(args: list[str] | None = None, run: bool = True):
    """Entry point; with ``args`` (tests) returns the LightningCLI or the extra command's result."""
    return run_cli(
        KEVSRModule, KEVSRDataModule, package="kevsr", args=args, run=run, extra_commands={"extract": _extract}
    )
