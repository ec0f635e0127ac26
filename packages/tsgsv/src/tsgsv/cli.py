"""Command line: ``tsgsv fit|validate|test|predict --config <name>``, ``tsgsv extract-text-features``,
``tsgsv convert-mad``."""

from __future__ import annotations

from mmzoo.cli import run_cli

from .data import TSGVDataModule
from .module import TSGSVModule
from .tools import convert_mad_command, extract_text_features_command

__all__ = ["main"]


def main(args: list[str] | None = None, run: bool = True):
    return run_cli(
        TSGSVModule,
        TSGVDataModule,
        package="tsgsv",
        args=args,
        run=run,
        extra_commands={"extract-text-features": extract_text_features_command, "convert-mad": convert_mad_command},
    )


if __name__ == "__main__":
    main()
