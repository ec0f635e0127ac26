"""The helper scripts' own logic (scripts/*.py), without running what they drive."""

import os
import sys
import time
from pathlib import Path

from mmzoo.testing import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_ddp_check_kills_a_hung_command_with_the_processes_it_started(tmp_path):
    """A command that times out is killed together with its children (the ranks a hung ddp run spawned), which
    would otherwise keep running into the next package's commands."""
    ddp_check = load_script(ROOT / "scripts" / "ddp_check.py")
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    t0 = time.monotonic()
    assert ddp_check.run_whole([sys.executable, "-c", code], timeout=3) is None
    assert time.monotonic() - t0 < 60
    child = int(pid_file.read_text())
    stat = Path(f"/proc/{child}/stat")
    for _ in range(100):  # the kill is asynchronous: wait until the child is gone or a zombie (killed, not reaped)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the command's child {child} outlived the timeout")
    assert ddp_check.run_whole([sys.executable, "-c", "raise SystemExit(3)"], timeout=60) == 3
