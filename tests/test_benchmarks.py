"""`make bench` keeps working: every benchmarks/*.py runs in smoke mode (``MMZOO_BENCH_SMOKE=1``: each case once, no
warm-up, a 2 s clip for the video benchmark) and prints well-formed JSON records. No speed is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
KEYS = {"bench", "case", "device", "step_ms", "samples_per_s", "peak_mem_mb"}


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 10, [s.name for s in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_and_prints_records(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MMZOO_BENCH_OUT"}  # nothing is appended to results/
    env["MMZOO_BENCH_SMOKE"] = "1"
    extra = ["--cache", str(tmp_path / "clips")] if script.stem == "video" else []
    proc = subprocess.run(
        [sys.executable, "-P", str(script), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stderr[-3000:]}"
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert records, f"{script.name} printed no JSON record:\n{proc.stdout[-2000:]}"
    for r in records:
        assert KEYS <= set(r), f"{script.name}: record without {sorted(KEYS - set(r))}: {r}"
        assert r["smoke"] is True and r["step_ms"] > 0 and r["samples_per_s"] > 0, r
