"""Cross-package checks: every member imports, every console script answers --help, the dependency rules hold."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
BIN = Path(sys.executable).parent

#: Heavy, paper-specific dependencies and the packages allowed to declare them (ARCHITECTURE.md).
HEAVY = {
    "diffusers": {"evedit", "asdmllm"},
    "torch-geometric": {"radartag"},
    "open-clip-torch": {"shenet"},
    "peft": {"asdmllm"},
    "datasets": {"asdmllm", "pckd"},
}


def _meta(name: str) -> dict:
    return tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())


def _dep_names(deps: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_ten_packages_present():
    assert len(PACKAGES) == 10, PACKAGES


@pytest.mark.parametrize(
    "name",
    [
        "mmzoo",
        "mmzoo.video",
        "mmzoo.features",
        "mmzoo.ops",
        "mmzoo.distributed",
        "mmzoo.cli",
        "mmzoo.bench",
        "mmzoo.testing",
        *PACKAGES,
    ],
)
def test_member_imports(name):
    assert importlib.import_module(name).__name__ == name


@pytest.mark.parametrize("name", PACKAGES)
def test_pyproject_contract(name):
    meta = _meta(name)
    project = meta["project"]
    assert project["name"] == name
    assert project["scripts"] == {name: f"{name}.cli:main"}
    assert meta["tool"]["uv"]["sources"]["mmzoo"] == {"workspace": True}
    assert meta["tool"]["ruff"]["extend"] == "../../pyproject.toml"
    deps = _dep_names(project["dependencies"])
    assert "mmzoo" in deps
    others = deps & (set(PACKAGES) - {name})
    assert not others, f"{name} depends on other packages {others}: packages depend on mmzoo only"
    for heavy, allowed in HEAVY.items():
        if heavy in deps:
            assert name in allowed, f"{name} declares {heavy}, which belongs to {sorted(allowed)} only"


def test_mmzoo_depends_on_the_core_only():
    meta = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())
    deps = _dep_names(meta["project"]["dependencies"])
    assert deps <= {"torch", "lightning", "jsonargparse", "torchmetrics", "av", "numpy", "tqdm"}, deps


@pytest.mark.parametrize("name", PACKAGES)
def test_console_script_help(name, monkeypatch, capsys):
    """The installed ``<name>`` console script is the package's ``cli:main``, and run as the console runs it (the
    command line in ``sys.argv``) ``--help`` lists the Lightning subcommands and exits 0. In this process, not one
    per package (each would import torch and Lightning again): the script files themselves are run in the clean
    venv of test_wheels.py."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name=name)
    assert script.value == f"{name}.cli:main"
    assert (BIN / name).is_file()
    monkeypatch.setattr(sys, "argv", [str(BIN / name), "--help"])
    with pytest.raises(SystemExit) as stop:
        script.load()()
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    assert "fit" in out and "test" in out


@pytest.mark.parametrize("name", PACKAGES)
def test_package_layout(name):
    pkg = ROOT / "packages" / name
    for rel in (
        "README.md",
        "repro.py",
        f"src/{name}/cli.py",
        f"src/{name}/configs/tiny.yaml",
        f"src/{name}/configs/demo.yaml",
    ):
        assert (pkg / rel).exists(), f"{name}: missing {rel}"
    assert (ROOT / "benchmarks" / f"{name}.py").exists(), f"{name}: missing benchmarks/{name}.py"


@pytest.mark.parametrize("name", PACKAGES)
def test_config_dataclasses_load_with_weights_only(name):
    """A module built in Python saves its config dataclasses in checkpoints; torch >= 2.6 loads checkpoints with
    weights_only=True (Lightning's resume and load_from_checkpoint), so every one of them must be allow-listed."""
    import dataclasses
    import inspect
    import io
    import typing

    import lightning.pytorch as pl
    import torch
    from mmzoo.cli import checkpoint_types

    module = importlib.import_module(f"{name}.module")
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, pl.LightningModule) and c.__module__ == module.__name__]  # fmt: skip
    assert classes, f"{name}.module defines no LightningModule"
    safe = set(torch.serialization.get_safe_globals())
    for cls in classes:
        types = checkpoint_types(*typing.get_type_hints(cls.__init__).values())
        assert types <= safe, f"{cls.__name__}: not allow-listed: {sorted(t.__name__ for t in types - safe)}"
        for t in types:  # a round trip of every config that has defaults for all its fields
            required = [f for f in dataclasses.fields(t) if f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING]  # fmt: skip
            if required:
                continue
            try:
                config = t()
            except ValueError:  # defaults that need a weights file or similar
                continue
            buf = io.BytesIO()
            torch.save({"hyper_parameters": {"config": config}}, buf)
            buf.seek(0)
            assert torch.load(buf, weights_only=True)["hyper_parameters"]["config"] == config


def test_make_repro_runs_every_repro_and_names_the_failed_gates(tmp_path):
    """One failing gate (a repro exits 1) must not stop the other packages' repros; the target fails at the end."""
    import os
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name, code in (("alpha", 1), ("beta", 0), ("gamma", 0)):
        pkg = tmp_path / "packages" / name
        pkg.mkdir(parents=True)
        (pkg / "repro.py").write_text(
            f"from pathlib import Path\nPath('ran_{name}').touch()\nraise SystemExit({code})\n"
        )
    (tmp_path / "packages" / "delta").mkdir()  # a package without a repro.py
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    # UV=true makes the setup step a no-op; RUN=env runs each script with the PATH's python.
    proc = subprocess.run(["make", "repro", "UV=true", "RUN=env"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert all((tmp_path / f"ran_{n}").exists() for n in ("alpha", "beta", "gamma")), proc.stdout
    assert "gate failed or run stopped for: alpha\n" in proc.stdout
    assert "delta: no repro.py" in proc.stdout

    (tmp_path / "packages" / "alpha" / "repro.py").write_text("raise SystemExit(0)\n")
    proc = subprocess.run(["make", "repro", "UV=true", "RUN=env", "PKG=alpha beta"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every gate passed" in proc.stdout and "gamma" not in proc.stdout


#: Packages whose ``predict`` writes something other than JSON lines (evedit: the edited frames of each clip).
OWN_PREDICTION_OUTPUT = {"evedit"}


@pytest.mark.parametrize("name", PACKAGES)
def test_predict_writes_its_outputs(name):
    """Every package's LightningModule gives ``predict`` rows to write (mmzoo.predict); LightningCLI alone would
    discard them."""
    import inspect

    import lightning.pytorch as pl
    from mmzoo.predict import writes_predictions

    module = importlib.import_module(f"{name}.module")
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, pl.LightningModule) and c.__module__ == module.__name__]  # fmt: skip
    if name in OWN_PREDICTION_OUTPUT:
        assert not any(writes_predictions(c) for c in classes)
        return
    assert classes and all(writes_predictions(c) for c in classes), f"{name}: a module without prediction_rows"


@pytest.mark.parametrize("name", PACKAGES)
def test_build_gives_the_configured_objects_unrun(name, tmp_path, monkeypatch):
    """``mmzoo.cli.build`` (the Python way into a package) makes the module and datamodule of the shipped tiny
    config, with the trainer the CLI would run them on."""
    import lightning.pytorch as pl
    import yaml
    from mmzoo.cli import build, resolve_config
    from mmzoo.predict import PredictionWriter, writes_predictions

    monkeypatch.chdir(tmp_path)  # tiny configs may name relative data folders
    model, data, trainer = build(name, "tiny", "--trainer.max_epochs", "3")
    assert isinstance(model, pl.LightningModule) and isinstance(data, pl.LightningDataModule)
    assert model.__module__.startswith(f"{name}.") and data.__module__.startswith(f"{name}.")
    assert trainer.max_epochs == 3 and trainer.global_step == 0
    shipped = yaml.safe_load(Path(resolve_config("tiny", name)).read_text())
    for key in ("limit_train_batches", "limit_val_batches"):  # the config's own trainer settings are applied
        if key in shipped.get("trainer", {}):
            assert getattr(trainer, key) == shipped["trainer"][key], key
    assert any(isinstance(c, PredictionWriter) for c in trainer.callbacks) == writes_predictions(type(model))


#: Imports a member may make without declaring them: each guarded in the code, with the reason.
UNDECLARED_IMPORTS = {
    "mmzoo": {
        "triton": "the token_max_sim kernel on CUDA only; Triton comes with torch's CUDA wheels",
        "transformers": "restore_output_capture acts on transformers models only, so it does nothing without it",
    },
    "rtqvl": {
        "triton": "k-medoids kernel on CUDA only; Triton comes with torch's CUDA wheels",
        "pycocoevalcap": "optional official captioning scorers (with Java); README: pip install pycocoevalcap",
    },
}


def _imported_modules(src: Path) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in every .py file under ``src`` (function-level imports included),
    with the files that make them."""
    import ast

    found: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("name", ["mmzoo", *PACKAGES])
def test_every_import_is_declared(name):
    """What a member's code imports is in its own dependencies (or its extras; for packages also mmzoo's core
    dependencies and the mmzoo extras they name), not merely present because another dependency pulls it in:
    `pip install <name>` alone must give every import."""
    import re
    from importlib.metadata import packages_distributions

    def norm(n: str) -> str:
        return n.lower().replace("_", "-")

    def extras(spec: str) -> list[str]:
        m = re.search(r"\[([^\]]+)\]", spec)
        return [e.strip() for e in m.group(1).split(",")] if m else []

    mm = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())["project"]
    mm_extras = {k: _dep_names(v) for k, v in mm.get("optional-dependencies", {}).items()}
    project = mm if name == "mmzoo" else _meta(name)["project"]
    specs = list(project["dependencies"]) + [d for v in project.get("optional-dependencies", {}).values() for d in v]
    allowed = _dep_names(specs) | {"mmzoo"}
    if name == "mmzoo":
        allowed |= set().union(*mm_extras.values())
    else:
        allowed |= _dep_names(mm["dependencies"])
        for spec in specs:
            if spec.startswith("mmzoo"):
                for extra in extras(spec):
                    allowed |= mm_extras.get(extra, set())
    src = ROOT / ("shared" if name == "mmzoo" else f"packages/{name}") / "src"
    dists = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    own = {p.name for p in src.iterdir() if p.is_dir()}
    exempt = UNDECLARED_IMPORTS.get(name, {})
    missing = {}
    for module, files in _imported_modules(src).items():
        if module in stdlib or module in own or module in exempt:
            continue
        provided = {norm(d) for d in dists.get(module, [])} or {norm(module)}
        if not provided & allowed:
            missing[module] = sorted(files)
    assert not missing, f"{name} imports what it does not declare: {missing}"
