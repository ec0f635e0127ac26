"""``fit --ckpt_path last.ckpt`` on EVE: ``fit`` optimises no weight (the latent optimisation is per clip, inside the
pipeline), so a resumed run ends with the same (frozen) weights, loop counters and validation edits as an
uninterrupted one."""

import pytest
import torch
from mmzoo.testing import assert_loads_without_data

from evedit.cli import main
from evedit.module import COST_LOG_NAMES, EVEModule

# wall-clock and memory: not method state (also under spec §3.6's names)
TIMINGS = ("val/time_s", "val/update_s", "val/peak_mb", *COST_LOG_NAMES.values())


def _fit(tmp_path, name, epochs, extra=()):
    root = tmp_path / name
    return main(
        args=[
            "fit",
            "--config",
            "tiny",
            "--data.data_root",
            str(tmp_path / "data"),
            "--data.max_items",
            "1",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.logger",
            "false",
            "--trainer.max_epochs",
            str(epochs),
            "--model.output_dir",
            str(root / "edits"),
            "--model.write_videos",
            "false",
            *extra,
        ]
    )


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")
def test_resume_keeps_frozen_weights_counters_and_edits(tmp_path):
    full = _fit(tmp_path, "full", 2)
    _fit(tmp_path, "resumed", 1)
    resumed = _fit(tmp_path, "resumed", 2, ["--ckpt_path", str(tmp_path / "resumed" / "checkpoints" / "last.ckpt")])

    assert full.trainer.current_epoch == resumed.trainer.current_epoch == 2
    assert full.trainer.global_step == resumed.trainer.global_step  # Lightning counts the no-op steps
    assert not any(p.requires_grad for p in resumed.model.parameters())
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = full.trainer.callback_metrics, resumed.trainer.callback_metrics
    keys = sorted(k for k in ma if k.startswith("val/") and k not in TIMINGS)
    assert keys and keys == sorted(k for k in mb if k.startswith("val/") and k not in TIMINGS)
    for k in keys:  # the per-clip generator is seeded by (seed, clip): the last epoch's edits are the same
        torch.testing.assert_close(ma[k], mb[k], msg=k)
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(
        EVEModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, ignore=TIMINGS, limit_val_batches=1
    )
