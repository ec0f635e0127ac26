"""``shenet fit|validate|test|predict --config <file or shipped name>`` and ``shenet parse`` (write a parse cache)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmzoo.cli import run_cli

from shenet.data import SHENetDataModule
from shenet.module import SHENetModule

__all__ = ["main", "parse_command"]


def parse_command(argv: list[str]) -> Path:
    """``shenet parse --dataset D --data_root R [--backend spacy] [--out R/shenet_parses.json]``: parse every caption
    of the dataset's splits and write the spec §3.2 JSON cache (use it with ``data.parser.backend: precomputed``)."""
    from shenet.hierarchy import ParserConfig, build_parser, write_parse_cache

    ap = argparse.ArgumentParser(prog="shenet parse", description=parse_command.__doc__)
    ap.add_argument("--dataset", required=True, choices=["msrvtt", "msvd", "didemo", "activitynet"])
    ap.add_argument("--data_root", required=True)
    ap.add_argument("--videos_dir", default=None)
    ap.add_argument("--backend", default="spacy", choices=["spacy", "heuristic"])
    ap.add_argument("--spacy_model", default="en_core_web_sm")
    ap.add_argument("--out", default=None, help="default: <data_root>/shenet_parses.json")
    args = ap.parse_args(argv)
    dm = SHENetDataModule(dataset=args.dataset, data_root=args.data_root, videos_dir=args.videos_dir, on_corrupt="skip")
    texts = [t for split in ("train", "val", "test") for t in dm.make_dataset(split).texts()]
    parser = build_parser(ParserConfig(backend=args.backend, spacy_model=args.spacy_model)).parser
    out = Path(args.out) if args.out else Path(args.data_root) / "shenet_parses.json"
    return write_parse_cache(texts, parser, out)


def main(args: list[str] | None = None, run: bool = True):
    return run_cli(
        SHENetModule, SHENetDataModule, package="shenet", args=args, run=run, extra_commands={"parse": parse_command}
    )


if __name__ == "__main__":
    main()
