"""Command line: ``snps3 fit|validate|test|predict --config <file or shipped name>``, plus ``snps3 mine-words``
(significant-word mining, spec §3.3), ``snps3 lemma-table`` (same-lemma table) and ``snps3 synthetic-data``."""

from __future__ import annotations

import argparse

from mmzoo.cli import run_cli

from snps3.data import SNPS3DataModule
from snps3.module import SNPS3Module
from snps3.significant import lemma_command, mine_command


def synthetic_command(argv: list[str]):
    """``snps3 synthetic-data ROOT``: write the synthetic digits data in every official format (spec §8b)."""
    from snps3.synthetic import generate_synthetic_dataset

    p = argparse.ArgumentParser(prog="snps3 synthetic-data", description=synthetic_command.__doc__)
    p.add_argument("root")
    p.add_argument("--num-train", type=int, default=24)
    p.add_argument("--num-test", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    a = p.parse_args(argv)
    return generate_synthetic_dataset(a.root, a.num_train, a.num_test, size=a.size)


def main(args=None, run: bool = True):
    """Run the CLI. With ``args`` (tests, Python use) returns the LightningCLI object (or the extra command's result);
    as the console script (``args=None``) returns None so the process exits with status 0."""
    return run_cli(
        SNPS3Module,
        SNPS3DataModule,
        package="snps3",
        args=args,
        run=run,
        extra_commands={"mine-words": mine_command, "lemma-table": lemma_command, "synthetic-data": synthetic_command},
    )


if __name__ == "__main__":
    main()
