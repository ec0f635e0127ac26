"""Fit/validate/test through the CLI on tiny.yaml (spec §8a) and the loss falling on a repeated batch."""

import math

import torch

from shenet.cli import main
from shenet.data import DigitsDataset, RetrievalCollate
from shenet.hierarchy import ParserConfig, build_parser
from shenet.models import SHENetConfig
from shenet.module import SHENetModule
from shenet.tokenization import TextEncoder


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
