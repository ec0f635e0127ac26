"""``rtqvl`` command line: Lightning's fit / validate / test / predict plus data tools.

Extra commands: ``rtqvl build-lmdb --videos DIR --out vis_db/NAME`` (pack video files into a ClipBERT LMDB, keys =
video ids), ``rtqvl convert-nextqa --csv train.csv val.csv --out train.json`` (official CSVs → converted JSON).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmzoo.cli import run_cli

from rtqvl.data import VIDEO_EXTENSIONS, RTQDataModule, convert_nextqa_csv, video_key, write_lmdb
from rtqvl.module import RTQModule

__all__ = ["main", "build_lmdb", "convert_nextqa"]

log = logging.getLogger(__name__)


def build_lmdb(argv: list[str]) -> int:
    """Pack every video file under ``--videos`` (recursively) into an LMDB keyed by video id (the file name up to
    its first '.', as the annotation readers strip it); two files with the same id are an error."""
    p = argparse.ArgumentParser(prog="rtqvl build-lmdb", description=build_lmdb.__doc__)
    p.add_argument("--videos", required=True, help="folder of video files (searched recursively)")
    p.add_argument("--out", required=True, help="output LMDB folder, e.g. data/vis_db/msrvtt")
    a = p.parse_args(argv)
    files = sorted(f for f in Path(a.videos).rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"--videos {a.videos!r}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    videos: dict[str, Path] = {}
    for f in files:
        key = video_key(f.name)  # the readers look videos up by the name up to its first '.'
        if key in videos:
            raise ValueError(f"--videos {a.videos!r}: {str(videos[key])!r} and {str(f)!r} share the video id {key!r}")
        videos[key] = f
    write_lmdb(a.out, videos)
    log.info("wrote %d videos to %s", len(files), a.out)
    return 0


def convert_nextqa(argv: list[str]) -> int:
    """Convert official NExT-QA CSVs into the JSON list the NExT-QA reader expects."""
    p = argparse.ArgumentParser(prog="rtqvl convert-nextqa", description=convert_nextqa.__doc__)
    p.add_argument("--csv", nargs="+", required=True, help="official CSV file(s), concatenated in order")
    p.add_argument("--out", required=True, help="output JSON path, e.g. data/annotations/nextqa/train.json")
    a = p.parse_args(argv)
    n = convert_nextqa_csv(a.csv, a.out)
    log.info("wrote %d questions to %s", n, a.out)
    return 0


def main(args: list[str] | None = None, run: bool = True):
    return run_cli(
        RTQModule,
        RTQDataModule,
        package="rtqvl",
        args=args,
        run=run,
        extra_commands={"build-lmdb": build_lmdb, "convert-nextqa": convert_nextqa},
    )
