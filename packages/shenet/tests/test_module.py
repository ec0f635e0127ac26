"""Fit/validate/test through the CLI on tiny.yaml (spec §8a) and the loss falling on a repeated batch."""

import math
import sys
from pathlib import Path

import torch
from mmzoo.testing import run_distributed

from shenet.cli import main
from shenet.data import DigitsDataset, RetrievalCollate
from shenet.hierarchy import ParserConfig, build_parser
from shenet.models import SHENetConfig
from shenet.module import SHENetModule
from shenet.tokenization import TextEncoder

sys.path.insert(0, str(Path(__file__).parent))
import shenet_dist_helpers as h  # noqa: E402


def test_fit_validate_test_tiny(tmp_path):
    common = [
        "--config",
        "tiny",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.data_root",
        str(tmp_path / "data"),
    ]
    cli = main(args=["fit", *common])
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/t2v_R@1", "val/v2t_MnR"):
        assert key in metrics and math.isfinite(float(metrics[key]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["SHENetDataModule"]["parser_backend"] == "heuristic"  # the parser is recorded with the run
    cli = main(args=["test", *common, "--ckpt_path", str(ckpt)])
    r1 = float(cli.trainer.callback_metrics["test/t2v_R@1"])
    assert 0.0 <= r1 <= 100.0


def test_loss_falls_on_repeated_batch():
    torch.manual_seed(0)
    ds = DigitsDataset("train", num_videos=8, seed=0, image_size=32)
    enc = TextEncoder(build_parser(ParserConfig(backend="heuristic")), 16, 4, 8, 8)
    batch = RetrievalCollate(enc)([ds[i] for i in range(8)])
    module = SHENetModule(SHENetConfig(clip_model="custom", random_init=True, max_frames=4))
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        text = module.model.encode_text(batch)
        video = module.model.encode_video(batch["video"], batch["video_mask"])
        loss = module.loss(text, video, module.model.similarity, module.model.logit_scale)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


class _RecordingMetric:
    """Stands in for RetrievalMetrics: records where the tensors it is handed live."""

    def __init__(self):
        self.devices: list[torch.device] = []

    def update(self, *tensors):
        self.devices += [t.device for t in tensors]

    def compute(self):
        return {"t2v_R@1": torch.tensor(0.0)}

    def reset(self):
        pass


def test_eval_metric_inputs_on_module_device(monkeypatch):
    # The metric syncs across ranks with all_gather, which NCCL cannot do on CPU tensors, so the scores (computed
    # into a CPU matrix) and ids must reach the metric on the module's device. Without a GPU, the module is made
    # to report the meta device while the similarity itself runs on the CPU.
    module = h.eval_module()
    with torch.no_grad():
        for batch in h.eval_batches([0, 1, 2]):
            module.test_step(batch, 0)
    similarity_matrix = module.model.similarity_matrix
    calls = []

    def on_cpu(*args, **kwargs):
        calls.append(kwargs["device"])
        return similarity_matrix(*args, **{**kwargs, "device": torch.device("cpu")})

    monkeypatch.setattr(module.model, "similarity_matrix", on_cpu)
    monkeypatch.setattr(module, "_device", torch.device("meta"))
    metric = _RecordingMetric()
    module._eval_epoch_end("test", metric)
    assert calls == [torch.device("meta")]  # the similarity is asked to run on the module's device
    assert len(metric.devices) == 3
    assert all(d.type == "meta" for d in metric.devices), metric.devices


def test_two_process_evaluation_matches_one_process():
    single = h.evaluate(list(range(h.EVAL_VIDEOS)))
    ranks = run_distributed(h.eval_rank, world_size=2)
    assert set(single) == {f"test/{d}_{m}" for d in ("t2v", "v2t") for m in ("R@1", "R@5", "R@10", "MdR", "MnR")}
    for r in ranks:  # every rank logs the metric of the whole gallery (7 queries), not of its own shard
        assert r.keys() == single.keys()
        for k in single:
            assert math.isclose(r[k], single[k], rel_tol=1e-6), (k, r[k], single[k])
