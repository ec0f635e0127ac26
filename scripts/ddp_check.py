"""`make ddp`: each package's tiny config through fit, test and predict on two CPU processes (Lightning's
``ddp_spawn``), the path of a user's first multi-GPU run. It catches what the single-process tests cannot: a
collective that only some ranks reach (a hang, stopped by the timeout), per-rank output files, models that do not
survive being sent to the spawned processes.

Usage: ``python scripts/ddp_check.py [name ...]`` (default: every package). Each package runs in
``runs/ddp/<name>``; every command gets ``--timeout`` seconds (default 600). A summary table is printed; the exit
status is 1 when any command failed or timed out. About 1.5 minutes per package on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
#: evedit trains nothing: its predict edits the clips and test scores them
COMMANDS = {"evedit": ["predict", "test"]}
TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"]


def run_whole(args: list[str], timeout: float, **kwargs) -> int | None:
    """``subprocess.run(args, **kwargs).returncode`` in a process group of its own; on timeout the whole group is
    killed (the ranks that a hung command spawned included, which would otherwise keep running into the next
    package's commands) and None is returned."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def check(name: str, timeout: int) -> list[tuple[str, str, float]]:
    """Run the package's commands in ``runs/ddp/<name>``; returns (command, outcome, seconds) per command run."""
    out = ROOT / "runs" / "ddp" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = str(Path(sys.executable).parent / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = []
    for command in COMMANDS.get(name, ["fit", "test", "predict"]):
        args = [script, command, "--config", "tiny", *TWO_PROCESSES, "--trainer.default_root_dir", "run"]
        if command != "fit" and name not in COMMANDS:
            ckpt = next((out / "run").rglob("last.ckpt"), None)
            if ckpt is None:
                results.append((command, "no last.ckpt from fit", 0.0))
                break
            args += ["--ckpt_path", str(ckpt)]
        if command == "predict" and name not in COMMANDS:
            args += ["--predictions.path", "predictions.jsonl"]
        t0 = time.time()
        log = out / f"{command}.log"
        with open(log, "w") as fh:
            rc = run_whole(args, timeout, cwd=out, env=env, stdout=fh, stderr=subprocess.STDOUT)
            if rc is None:
                outcome = f"timed out after {timeout} s: a hang? (see {log.relative_to(ROOT)})"
            else:
                outcome = "ok" if rc == 0 else f"exit {rc} (see {log.relative_to(ROOT)})"
        if outcome == "ok" and command == "predict" and name not in COMMANDS:
            files = sorted(p.name for p in out.glob("predictions.rank*.jsonl"))
            if files != ["predictions.rank0.jsonl", "predictions.rank1.jsonl"]:
                outcome = f"predict wrote {files or 'no files'}, not one JSON-lines file per rank"
        results.append((command, outcome, time.time() - t0))
        if outcome != "ok":
            break
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=PACKAGES, help="packages (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per command (default 600)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(PACKAGES))
    if unknown:
        parser.error(f"unknown packages {unknown}; known: {PACKAGES}")
    rows, failed = [], False
    for name in args.names:
        for command, outcome, seconds in check(name, args.timeout):
            rows.append((name, command, outcome, seconds))
            failed |= outcome != "ok"
            print(f"{name} {command}: {outcome} ({seconds:.0f} s)", flush=True)
    print("\n| package | command | outcome | s |\n| --- | --- | --- | --- |")
    for name, command, outcome, seconds in rows:
        print(f"| {name} | {command} | {outcome} | {seconds:.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
