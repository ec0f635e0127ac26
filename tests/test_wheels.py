"""`make wheels` output installs into a clean virtual environment, imports, and every console script runs."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is needed to build wheels; `make setup` installs it")
    return found


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [_uv(), "build", "--all-packages", "--wheel", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_member_has_a_wheel_with_its_configs(wheels):
    names = {w.name.split("-")[0] for w in wheels.glob("*.whl")}
    assert names == {"mmzoo", *PACKAGES}
    for name in PACKAGES:
        whl = next(wheels.glob(f"{name}-*.whl"))
        files = zipfile.ZipFile(whl).namelist()
        assert f"{name}/configs/demo.yaml" in files and f"{name}/configs/tiny.yaml" in files, name
        assert not any(f.startswith("tests/") for f in files), f"{name} wheel ships its tests"


def test_wheels_install_into_clean_venv(wheels, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([_uv(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    proc = subprocess.run(
        [_uv(), "pip", "install", "-q", "--python", str(py), *map(str, wheels.glob("*.whl"))],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One process for all packages (a fresh venv compiles every module on first import, so one process per
    # package costs minutes): each imports, and parses its shipped tiny config found by name inside the wheel.
    code = """
import importlib, sys
import mmzoo.video, mmzoo.cli, mmzoo.ops
for name in sys.argv[1:]:
    cli = importlib.import_module(name + ".cli")
    try:
        cli.main(["fit", "--config", "tiny", "--print_config"])
    except SystemExit as e:
        assert e.code in (0, None), (name, e.code)
    else:
        raise AssertionError(name + ": --print_config did not exit")
print("ALL-OK")
"""
    proc = subprocess.run([str(py), "-c", code, *PACKAGES], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and "ALL-OK" in proc.stdout, proc.stderr[-3000:]
    for name in PACKAGES:
        assert (venv / "bin" / name).exists(), f"{name}: no console script in the clean venv"
    proc = subprocess.run([str(venv / "bin" / PACKAGES[0]), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "fit" in proc.stdout, proc.stderr[-2000:]
