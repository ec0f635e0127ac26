"""The shipped benchmark configs run end to end as their header and the README give them (``predict`` writes the
edits, ``test`` scores them, re-using predict's edits) on tiny data written in each dataset's layout:

- ``loveu``: LOVEU-TGVE-2023 as released (``loveu-tgve-2023/LOVEU-TGVE-2023_Dataset.csv`` with the group header
  rows, ``<group>/480p_videos/<name>.mp4``), all four edit columns of the config;
- ``zve``: the package-defined ZVE-50 layout (``ZVE-50/annotations.json``, ``ZVE-50/videos/<id>.mp4``).

Overridden: the data root and output folder; the networks by the tiny random UNet / VAE / adapter / DPT / CLIP of
tiny.yaml (no weights can be loaded) in float32 (the configs' float16 is for the GPU); frames, frame size, the
estimator's and the metric's input size, the number of DDIM steps; the trainer limits (two edits, cpu, no logger).
Every other key (edit, inversion, depth and TCC settings, dataset, split, edit columns, frame sampling, metrics) is
the shipped one.
"""

import math

import pytest
from mmzoo.testing import QUIET_CPU_RUN

from evedit.cli import main
from evedit.data import make_loveu, make_zve
from evedit.module import EVEModule

TINY = [
    *("--model.model.backbone", "tiny", "--model.model.depth_model", "tiny", "--model.model.torch_dtype", "float32"),
    *("--model.metrics.clip_path", "tiny", "--model.metrics.resize", "32"),
    *("--model.edit.depth.estimator_size", "32", "--model.edit.num_inference_steps", "4"),
    *("--data.num_frames", "4", "--data.size", "32", "--data.num_workers", "2"),
    *QUIET_CPU_RUN,
]
METRICS = ("clip_text", "clip_frame", "clip_frame_consec", "frame_acc", "depth_err", "time_s", "update_s")


@pytest.mark.parametrize("config", ["loveu", "zve"])
def test_shipped_benchmark_config_predicts_and_tests(tmp_path, config, monkeypatch):
    data = tmp_path / "data"
    if config == "loveu":
        make_loveu(data, n_videos=2, frames=6, size=40)
    else:
        make_zve(data, n_videos=1, frames=6, size=40)
    out = tmp_path / "edits"
    args = [
        *("--config", config, "--data.data_root", str(data), "--model.output_dir", str(out)),
        *("--trainer.default_root_dir", str(tmp_path)),
        *TINY,
    ]
    cli = main(args=["predict", *args, "--trainer.limit_predict_batches", "2"])
    if config == "loveu":
        assert [e for e in cli.datamodule.edits] == ["style", "object", "background", "multiple"]
        assert len(cli.datamodule.data) == 2 * 4  # every clip with every edit column
    assert (out / "edits_rank0.csv").read_text().count("\n") == 3  # header + 2 edits
    folders = sorted(p.parent for p in out.rglob("timing.json"))
    assert len(folders) == 2 and all(len(list(f.glob("*.jpg"))) == 4 for f in folders)

    def edit_again(*a, **k):
        raise AssertionError("test edited a clip again instead of re-using the edit predict wrote")

    monkeypatch.setattr(EVEModule, "edit_clip", edit_again)
    cli = main(args=["test", *args, "--trainer.limit_test_batches", "2"])
    m = cli.trainer.callback_metrics
    for key in METRICS:
        assert f"test/{key}" in m and math.isfinite(float(m[f"test/{key}"])), key
    assert (out / "metrics_test_rank0.csv").read_text().count("\n") == 3
