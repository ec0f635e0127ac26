"""The toy package's command line, shaped like every package's ``cli.py``."""

from mmzoo.cli import run_cli
from toypkg import RowsToy, ToyData


def main(args=None, run: bool = True):
    return run_cli(RowsToy, ToyData, package="toypkg", args=args, run=run)
