"""``pckd`` command line: fit | validate | test | predict, plus ``export-teacher``."""

from __future__ import annotations

import argparse

import torch
from mmzoo.cli import run_cli
from mmzoo.data import read_torch, written_whole

from pckd.data import PCKDDataModule
from pckd.module import PCKDModule, load_teacher_state_dict


def export_teacher(argv: list[str]) -> str:
    """``pckd export-teacher CKPT OUT.pth``: write a trained network in RepDistiller's teacher format."""
    parser = argparse.ArgumentParser(prog="pckd export-teacher", description=export_teacher.__doc__)
    parser.add_argument("checkpoint", help="a pckd checkpoint (the student of that run becomes the teacher)")
    parser.add_argument("output", help="output file, {'model': state_dict, 'epoch': ...}")
    args = parser.parse_args(argv)
    ckpt = read_torch(args.checkpoint, "export-teacher checkpoint", weights_only=False)
    state = load_teacher_state_dict(args.checkpoint, "")
    with written_whole(args.output) as tmp:  # a teacher file is whole or absent
        torch.save({"model": state, "epoch": ckpt.get("epoch", -1)}, tmp)
    return args.output


def main(args: list[str] | None = None, run: bool = True):
    """Entry point; with ``args`` (tests) returns the LightningCLI or the extra command's result."""
    return run_cli(
        PCKDModule,
        PCKDDataModule,
        package="pckd",
        args=args,
        run=run,
        extra_commands={"export-teacher": export_teacher},
    )
