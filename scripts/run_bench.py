"""`make bench`: run benchmark scripts, collect their JSON lines into benchmarks/results/<device>.jsonl and
print a Markdown table. Each script prints one JSON object per line (see mmzoo.bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(scripts: list[str]) -> int:
    if not scripts:
        print("make bench: no benchmarks/*.py yet; nothing to run.")
        return 0
    out = ROOT / "benchmarks" / "results"
    records, failed = [], []
    for script in scripts:
        print(f"=== {script}", file=sys.stderr, flush=True)
        env = dict(os.environ, MMZOO_BENCH_OUT=str(out))
        # -P: the script's folder is not put on sys.path, so benchmarks/pckd.py cannot shadow the package pckd
        proc = subprocess.run([sys.executable, "-P", script], cwd=ROOT, env=env, capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-4000:])
        if proc.returncode != 0:
            failed.append(script)
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    cols = ["bench", "case", "device", "batch", "step_ms", "samples_per_s", "peak_mem_mb"]
    print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in records:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
