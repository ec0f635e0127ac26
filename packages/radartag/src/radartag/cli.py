"""Command line: ``radartag fit|validate|test|predict --config <name>``, ``radartag build-ontology``,
``radartag extract-features``."""

from __future__ import annotations

from mmzoo.cli import run_cli

from .data import KwaiTagDataModule
from .module import RadarModule
from .tools import build_ontology_command, extract_features_command

__all__ = ["main"]


def main(args: list[str] | None = None, run: bool = True):
    return run_cli(
        RadarModule,
        KwaiTagDataModule,
        package="radartag",
        args=args,
        run=run,
        extra_commands={"build-ontology": build_ontology_command, "extract-features": extract_features_command},
    )


if __name__ == "__main__":
    main()
