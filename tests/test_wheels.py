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
    proc = subprocess.run([_uv(), "build", "--all-packages", "--wheel", "-o", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
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
    proc = subprocess.run([_uv(), "pip", "install", "-q", "--python", str(py), *map(str, wheels.glob("*.whl"))],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = "import mmzoo.video, mmzoo.cli, mmzoo.ops; " + "; ".join(f"import {n}" for n in PACKAGES)
    subprocess.run([str(py), "-c", code], check=True, timeout=600)
    for name in PACKAGES:
        proc = subprocess.run([str(venv / "bin" / name), "--help"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name} --help in a clean venv: {proc.stderr[-2000:]}"
        # shipped configs are found by name from the installed wheel
        proc = subprocess.run([str(venv / "bin" / name), "fit", "--config", "tiny", "--print_config"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name} fit --config tiny --print_config: {proc.stderr[-2000:]}"
