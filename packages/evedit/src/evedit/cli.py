"""``evedit`` command line: Lightning's fit|validate|test|predict plus ``evedit edit VIDEO --prompt ...``."""

from __future__ import annotations

from mmzoo.cli import run_cli

from evedit.data import EVEDataModule
from evedit.edit import edit_command
from evedit.module import EVEModule

__all__ = ["main"]


def main(args: list[str] | None = None, run: bool = True):
    """Entry point of the ``evedit`` script (``args`` without the program name; None reads sys.argv).

    Returns the LightningCLI object (or the ``edit`` command's output) when called with ``args`` (tests);
    from the console it returns None, so ``sys.exit(main())`` exits with status 0."""
    return run_cli(
        EVEModule, EVEDataModule, package="evedit", args=args, run=run, extra_commands={"edit": edit_command}
    )
