import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from toypkg import ToyData, ToyModule  # noqa: E402

from mmzoo.cli import _resolve_args, default_callbacks, resolve_config, run_cli, shipped_configs  # noqa: E402


def test_shipped_configs_found_by_name():
    assert shipped_configs("toypkg") == ["demo"]
    assert resolve_config("demo", "toypkg").endswith("toypkg/configs/demo.yaml")
    assert resolve_config("demo.yaml", "toypkg").endswith("toypkg/configs/demo.yaml")


def test_unknown_config_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="Shipped configs: demo"):
        resolve_config("nope", "toypkg")


def test_fit_test_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("MMZOO_METRICS_JSON", str(tmp_path / "m.json"))
    cli = run_cli(
        ToyModule, ToyData, "toypkg", args=["fit", "--config", "demo", "--trainer.default_root_dir", str(tmp_path)]
    )
    assert cli.model.hparams.hidden == 8  # the shipped config was read
    ckpts = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    assert "val/loss" in json.loads((tmp_path / "m.json").read_text())
    last = next(tmp_path.rglob("last.ckpt"))
    cli = run_cli(
        ToyModule,
        ToyData,
        "toypkg",
        args=["test", "--config", "demo", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(last)],
    )
    assert "test/loss" in json.loads((tmp_path / "m.json").read_text())


class _WorseningToy(ToyModule):
    """Validation "loss" = the epoch: the best checkpoint is epoch 0, the latest the last epoch."""

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))


def test_last_ckpt_is_the_latest_state_and_best_is_kept_beside_it(tmp_path):
    import torch

    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    cli = run_cli(
        _WorseningToy, ToyData, "toypkg", args=["fit", "--config", "demo", "--trainer.max_epochs", "3", *root]
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best-0-2.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)  # a monitored save_last would hold epoch 0 here
    assert cli.trainer.checkpoint_callback.best_model_path.endswith("best-0-2.ckpt")
    # resuming from last.ckpt continues after epoch 2, into the same folder
    cli = run_cli(_WorseningToy, ToyData, "toypkg",
                  args=["fit", "--config", "demo", "--trainer.max_epochs", "4", *root,
                        "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")])  # fmt: skip
    assert cli.trainer.global_step == 8
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-0-2.ckpt", "last.ckpt"]


def test_a_checkpoint_overriding_a_model_setting_says_so(tmp_path, caplog):
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    run_cli(ToyModule, ToyData, "toypkg", args=["fit", "--config", "demo", *root])
    last = str(next(tmp_path.rglob("last.ckpt")))
    with caplog.at_level("WARNING", logger="mmzoo.cli"):
        cli = run_cli(ToyModule, ToyData, "toypkg",
                      args=["test", "--config", "demo", "--model.lr", "0.5", *root, "--ckpt_path", last])  # fmt: skip
    assert cli.model.hparams.lr == 0.05  # Lightning keeps the checkpoint's value ...
    said = [m for m in caplog.messages if "model.lr" in m]
    assert len(said) == 1 and "0.05" in said[0] and "0.5" in said[0]  # ... and the user is told
    assert not [m for m in caplog.messages if "model.hidden" in m]  # unchanged values are not reported


def test_seeding_makes_runs_repeatable(tmp_path):
    losses = []
    for i in range(2):
        cli = run_cli(
            ToyModule,
            ToyData,
            "toypkg",
            args=[
                "fit",
                "--config",
                "demo",
                "--trainer.default_root_dir",
                str(tmp_path / str(i)),
                "--trainer.logger",
                "false",
            ],
        )
        losses.append(float(cli.trainer.callback_metrics["val/loss"]))
    assert losses[0] == losses[1]


def test_print_config(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(ToyModule, ToyData, "toypkg", args=["fit", "--config", "demo", "--print_config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "hidden: 8" in out and "seed_everything: 0" in out


def test_short_config_flag_finds_shipped_configs(capsys):
    shipped = resolve_config("demo", "toypkg")
    assert _resolve_args(["fit", "-c", "demo", "--x", "1"], "toypkg") == ["fit", "-c", shipped, "--x", "1"]
    assert _resolve_args(["fit", "-c=demo"], "toypkg") == ["fit", "-c=" + shipped]
    assert _resolve_args(["fit", "-cdemo.yaml"], "toypkg") == ["fit", "-c=" + shipped]
    with pytest.raises(FileNotFoundError, match="Shipped configs: demo"):
        _resolve_args(["fit", "-c", "nope"], "toypkg")
    with pytest.raises(ValueError, match="-c needs a value"):
        _resolve_args(["fit", "-c"], "toypkg")
    for form in (["-c", "demo"], ["-c=demo"]):
        with pytest.raises(SystemExit) as e:
            run_cli(ToyModule, ToyData, "toypkg", args=["fit", *form, "--print_config"])
        assert e.value.code == 0
        assert "hidden: 8" in capsys.readouterr().out


def test_extra_commands_dispatch():
    seen = []
    assert (
        run_cli(
            ToyModule,
            ToyData,
            "toypkg",
            args=["extract", "--x", "1"],
            extra_commands={"extract": lambda a: seen.append(a) or 7},
        )
        == 7
    )
    assert seen == [["--x", "1"]]


def test_console_exit_status_is_zero(tmp_path, monkeypatch):
    # Console scripts run sys.exit(main()): from the console run_cli must return None (status 0), not the CLI.
    monkeypatch.setattr(
        sys,
        "argv",
        ["toypkg", "fit", "--config", "demo", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"],
    )
    assert run_cli(ToyModule, ToyData, "toypkg") is None
    monkeypatch.setattr(sys, "argv", ["toypkg", "extract"])
    assert run_cli(ToyModule, ToyData, "toypkg", extra_commands={"extract": lambda a: "done"}) is None
    assert run_cli(ToyModule, ToyData, "toypkg", extra_commands={"extract": lambda a: 3}) == 3


def test_console_run_does_not_warn_about_its_own_args(tmp_path, monkeypatch):
    # run_cli passes the console's command line (config names resolved) to LightningCLI on purpose
    import warnings

    root = str(tmp_path)
    argv = ["toypkg", "fit", "--config", "demo", "--trainer.default_root_dir", root, "--trainer.max_epochs", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert run_cli(ToyModule, ToyData, "toypkg") is None
    assert not [w for w in seen if "args parameter" in str(w.message)]
    assert sys.argv == argv  # left for Lightning's DDP launcher


def test_progress_bar_can_be_turned_off(tmp_path):
    cli = run_cli(
        ToyModule,
        ToyData,
        "toypkg",
        args=[
            "fit",
            "--config",
            "demo",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_epochs",
            "1",
        ],
    )
    assert cli.trainer.progress_bar_callback is None


def test_checkpointing_can_be_turned_off(tmp_path):
    """``--trainer.enable_checkpointing false`` runs without the default checkpoint callbacks (Lightning refuses
    the flag beside a ModelCheckpoint) and writes no checkpoint; the LR monitor stays."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1"]
    cli = run_cli(
        ToyModule, ToyData, "toypkg", args=["fit", "--config", "demo", "--trainer.enable_checkpointing", "false", *root]
    )
    assert cli.trainer.global_step > 0
    assert not any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)
    assert any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_allow_in_checkpoints_lets_lightning_resume_a_module_built_in_python(tmp_path):
    import lightning.pytorch as pl
    import torch
    from toypkg import ToyConfig, ToyConfigModule

    from mmzoo.cli import allow_in_checkpoints, checkpoint_types

    def trainer(epochs):
        return pl.Trainer(max_epochs=epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=default_callbacks(ToyConfigModule))  # fmt: skip

    trainer(1).fit(ToyConfigModule(ToyConfig(hidden=6)), ToyData(n=32))
    last = tmp_path / "checkpoints" / "last.ckpt"
    safe = set(torch.serialization.get_safe_globals())
    if ToyConfig not in safe:  # torch's default weights_only=True load refuses the pickled config
        with pytest.raises(Exception, match="weights_only"):
            trainer(2).fit(ToyConfigModule(ToyConfig(hidden=6)), ToyData(n=32), ckpt_path=last)
    allow_in_checkpoints(ToyConfigModule)
    assert checkpoint_types(ToyConfig | None) == {ToyConfig}
    t = trainer(2)
    t.fit(ToyConfigModule(ToyConfig(hidden=6)), ToyData(n=32), ckpt_path=last)
    assert t.current_epoch == 2
    loaded = ToyConfigModule.load_from_checkpoint(last)
    assert loaded.hparams.config == ToyConfig(hidden=6)


def test_build_makes_what_the_config_describes_without_running(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mmzoo.cli import build
    from mmzoo.predict import PredictionWriter

    root = str(tmp_path / "run")
    model, data, trainer = build("toypkg", "demo", "--model.hidden", "5", "--trainer.default_root_dir", root)
    assert type(model).__name__ == "RowsToy" and model.hparams.hidden == 5 and model.hparams.lr == 0.05  # YAML
    assert type(data).__name__ == "ToyData" and data.n == 32
    assert trainer.max_epochs == 2 and trainer.global_step == 0  # built, not run
    assert any(isinstance(c, PredictionWriter) for c in trainer.callbacks)  # the CLI's callbacks come along
    assert any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)
    trainer.fit(model, datamodule=data)
    assert trainer.current_epoch == 2 and any((tmp_path / "run").rglob("last.ckpt"))

    with pytest.raises(ModuleNotFoundError, match="no mmzoo package 'nopkg'"):
        build("nopkg", "demo")
    broken = tmp_path / "site" / "brokenpkg"  # installed, but its cli imports a dependency that is not
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "cli.py").write_text("import mmzoo_missing_dependency\n")
    monkeypatch.syspath_prepend(str(broken.parent))
    with pytest.raises(ModuleNotFoundError, match="^No module named 'mmzoo_missing_dependency'$"):
        build("brokenpkg", "demo")
    with pytest.raises(FileNotFoundError, match="no shipped config of that name in toypkg"):
        build("toypkg", "nope")
