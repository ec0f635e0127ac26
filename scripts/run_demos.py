"""`make demo`: run each package's demo in turn and print a summary table of its metrics.

A package's demo is ``<name> fit --config demo`` followed by ``<name> test --config demo`` on the last
checkpoint, unless its pyproject sets ``[tool.mmzoo] demo`` to a list of commands (each a list of arguments),
with ``{ckpt}`` standing for the last checkpoint of the most recent ``fit`` and ``{out}`` for the package's demo
folder. Each Lightning command runs in its own ``{out}/step<i>`` folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [
    ["fit", "--config", "demo"],
    ["test", "--config", "demo", "--ckpt_path", "{ckpt}"],
]


def demo_commands(name: str) -> list[list[str]]:
    meta = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())
    return meta.get("tool", {}).get("mmzoo", {}).get("demo", DEFAULT)


def run_one(name: str) -> tuple[str, float, dict]:
    out = ROOT / "runs" / "demo" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ckpt = out / "checkpoints" / "last.ckpt"
    metrics: dict = {}
    t0 = time.time()
    for i, cmd in enumerate(demo_commands(name)):
        args = [a.replace("{ckpt}", str(ckpt)).replace("{out}", str(out)) for a in cmd]
        if args[0] in ("fit", "validate", "test", "predict"):
            root = out / f"step{i}"  # each command its own folder: a second fit must not version last.ckpt
            args += ["--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
            if args[0] == "fit":
                ckpt = root / "checkpoints" / "last.ckpt"
        env = dict(os.environ, MMZOO_METRICS_JSON=str(out / f"metrics_{i}.json"))
        # the package's console script sits beside this interpreter, also when the venv is not activated
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        print(f"\n=== {name} {' '.join(args)}", flush=True)
        proc = subprocess.run([name, *args], cwd=ROOT, env=env)
        if proc.returncode != 0:
            return "failed", time.time() - t0, metrics
        if (out / f"metrics_{i}.json").exists():
            metrics.update(json.loads((out / f"metrics_{i}.json").read_text()))
    return "ok", time.time() - t0, metrics


def main(names: list[str]) -> int:
    if not names:
        print("make demo: no packages yet (packages/ is empty); nothing to run.")
        return 0
    rows = [(n, *run_one(n)) for n in names]
    print("\n| package | status | seconds | metrics |\n| --- | --- | --- | --- |")
    for name, status, secs, metrics in rows:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("test"))
        print(f"| {name} | {status} | {secs:.0f} | {shown or '-'} |")
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
