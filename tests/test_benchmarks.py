"""`make bench` keeps working: every benchmarks/*.py runs in smoke mode (``MMZOO_BENCH_SMOKE=1``: each case once, no
warm-up, a 2 s clip for the video benchmark) and prints well-formed JSON records. No speed is asserted.

The scripts run one after the other in one Python process (each as ``__main__``, with its own command line), so
torch and Lightning are imported once rather than once per script; each script's output is checked by its own test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
KEYS = {"bench", "case", "device", "step_ms", "samples_per_s", "peak_mem_mb"}
MARK = "@@bench-script@@"

# runs each script given as ``path [args...]`` (one JSON list per script) as __main__; prints MARK lines around its
# output and its exit status, a traceback to stderr when it raises
DRIVER = f"""
import json, runpy, sys, traceback
for item in sys.argv[1:]:
    path, *args = json.loads(item)
    print("{MARK} begin " + path, flush=True)
    sys.argv = [path, *args]
    status = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        print("{MARK} traceback " + path, file=sys.stderr, flush=True)
        traceback.print_exc()
        status = 1
    print("{MARK} end " + path + " " + str(status), flush=True)
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, tuple[int | None, list[str], str]]:
    """Per script stem: (exit status or None when it never ended, its stdout lines, the driver's stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "MMZOO_BENCH_OUT"}  # nothing is appended to results/
    env["MMZOO_BENCH_SMOKE"] = "1"
    cache = tmp_path_factory.mktemp("clips")
    items = [json.dumps([str(s), *(["--cache", str(cache)] if s.stem == "video" else [])]) for s in SCRIPTS]
    proc = subprocess.run(
        [sys.executable, "-P", "-c", DRIVER, *items], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    found: dict[str, tuple[int | None, list[str], str]] = {}
    current, lines = None, []
    for line in proc.stdout.splitlines():
        if line.startswith(f"{MARK} begin "):
            current, lines = Path(line.split(" ", 2)[2]).stem, []
        elif line.startswith(f"{MARK} end ") and current is not None:
            found[current] = (int(line.rsplit(" ", 1)[1]), lines, proc.stderr)
            current = None
        elif current is not None:
            lines.append(line)
    if current is not None:  # the process died inside this script
        found[current] = (None, lines, proc.stderr)
    return found


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 10, [s.name for s in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_and_prints_records(script, outputs):
    assert script.stem in outputs, f"{script.name} never ran (an earlier script ended the process)"
    status, lines, stderr = outputs[script.stem]
    own = stderr.split(f"{MARK} traceback {script}\n", 1)[-1].split(MARK, 1)[0]  # its traceback, if it raised
    assert status == 0, f"{script.name} failed (status {status}):\n{own[-3000:]}"
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, f"{script.name} printed no JSON record:\n" + "\n".join(lines)[-2000:]
    for r in records:
        assert KEYS <= set(r), f"{script.name}: record without {sorted(KEYS - set(r))}: {r}"
        assert r["smoke"] is True and r["step_ms"] > 0 and r["samples_per_s"] > 0, r
