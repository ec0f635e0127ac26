import json
import math

import pytest
import torch
from mmzoo.testing import repeated_index_reads

from tsgsv.cli import main
from tsgsv.data import TSGVTrainDataset
from tsgsv.losses import TSGSVLoss
from tsgsv.models import StreamingTSGV, TSGSVConfig
from tsgsv.module import TSGSVModule


def _tiny_args(tmp_path):
    return ["--config", "tiny", "--data.data_root", str(tmp_path / "data"),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]  # fmt: skip


def test_fit_validate_test_tiny(tmp_path):
    cli = main(args=["fit", *_tiny_args(tmp_path), "--model.kd_warmup", "true"])
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert 0.0 < float(metrics["train/kd_weight"]) < 0.2  # the λ warm-up hook ran (λ = 0.2 in tiny.yaml)
    assert "val/R@1,IoU=0.5" in metrics and "val/mcAP" in metrics and "val/selection" in metrics
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["validate", *_tiny_args(tmp_path), "--ckpt_path", str(ckpt)])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/mcAP"]) <= 1.0
    cli = main(args=["test", *_tiny_args(tmp_path), "--ckpt_path", str(ckpt)])
    m = cli.trainer.callback_metrics
    for key in ("test/R@1,IoU=0.3", "test/R@5,IoU=0.7", "test/mAP", "test/mcAP"):
        assert 0.0 <= float(m[key]) <= 1.0, key
    # predict: one JSON line per test annotation (README, "Predictions")
    out = tmp_path / "pred" / "tiny.jsonl"
    main(args=["predict", *_tiny_args(tmp_path), "--ckpt_path", str(ckpt), "--predictions.path", str(out)])
    _check_predictions(out, tmp_path / "data")


def _check_predictions(path, data_root):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    test = json.loads((data_root / "test.json").read_text())
    expect = {aid: (v, info) for v, info in test.items() for aid in info["anno_ids"]}
    assert sorted(r["anno_id"] for r in lines) == sorted(expect)
    for r in lines:
        video, info = expect[r["anno_id"]]
        assert r["video"] == video and r["num_frames"] == info["duration_frame"]
        assert len(r["scores"]) == info["duration_frame"] and all(len(row) == 3 for row in r["scores"])
        assert all(0.0 <= v <= 1.0 for row in r["scores"] for v in row)
        assert 1 <= len(r["moments"]) <= 5  # max(recall_at) proposals after NMS
        scores = [m[2] for m in r["moments"]]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= m[0] <= m[1] <= info["duration"] + 1e-6 for m in r["moments"])


def test_predict_tiny_without_checkpoint(tmp_path):
    """`tsgsv predict --config tiny` works end to end (random weights) and writes the default predictions file."""
    main(args=["predict", *_tiny_args(tmp_path)])
    _check_predictions(tmp_path / "predictions.jsonl", tmp_path / "data")


def test_loss_falls_on_repeated_batch(tmp_path):
    from tsgsv.synthetic import SyntheticStreamConfig, write_synthetic_dataset

    write_synthetic_dataset(tmp_path, SyntheticStreamConfig((3, 1, 1), 2, (80, 100), (2, 3), (15, 30), video_dim=16,
                                                            text_dim=16, video_feature_file="f_{split}.hdf5"))  # fmt: skip
    ds = TSGVTrainDataset(tmp_path, "train", "f_{split}.hdf5", short_memory=4, long_memory=8, future_memory=8,
                          preload=True)  # fmt: skip
    batch = torch.utils.data.default_collate([ds[i] for i in range(16)])
    torch.manual_seed(0)
    cfg = TSGSVConfig(video_dim=16, text_dim=16, hidden_dim=32, ffn_dim=64, num_heads=2, dropout=0.0, short_memory=4,
                      long_memory=8, future_memory=8, gru_layers=1, compressor_tokens=[4, 4])  # fmt: skip
    model, loss_fn = StreamingTSGV(cfg), TSGSVLoss(32, kd_weight=0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    with repeated_index_reads() as repeated:  # fixed-order gradient sums: two runs give the same weights
        for _ in range(12):
            out = model(batch["short"], batch["short_mask"], batch["long"], batch["long_mask"], batch["sentence"],
                        batch["sentence_length"], batch["future"], batch["future_mask"])  # fmt: skip
            loss = loss_fn(out, batch["labels"], batch["short_mask"])["loss"]
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert repeated == []
    assert losses[-1] < 0.7 * losses[0], losses


def test_twinnet_loss_needs_the_twin_branch():
    with pytest.raises(ValueError, match="tpn_type=twinnet"):
        TSGSVModule(TSGSVConfig(future_usage="none"), tpn_type="twinnet")


@pytest.mark.parametrize(("key", "file"), [("text_dim", "bert-base-uncased_language_tokens_features_val.hdf5"),
                                           ("video_dim", "synthetic_features_val.hdf5")])  # fmt: skip
def test_feature_width_mismatch_names_the_file_and_key(tmp_path, key, file):
    """Features whose width differs from the model's are refused at setup, naming the file and the config key (a
    sentence width mismatch used to surface as a bare matmul shape error deep inside the sentence encoder)."""
    with pytest.raises(ValueError, match=rf"{file}.*model\.config\.{key}=8"):
        main(args=["validate", *_tiny_args(tmp_path), f"--model.config.{key}", "8"])
    cfg = TSGSVConfig(video_dim=16, text_dim=16, hidden_dim=32, ffn_dim=64, num_heads=2, short_memory=4,
                      long_memory=8, future_memory=8, gru_layers=1, compressor_tokens=[4])  # fmt: skip
    model = StreamingTSGV(cfg)
    with pytest.raises(ValueError, match="model.config.text_dim=16"):  # the model itself checks too (Python API)
        model.encode_sentence(torch.zeros(2, 20, 8), torch.tensor([3, 5]))


@pytest.mark.parametrize("positives", [0, 2])
def test_training_ap_log_follows_the_per_batch_definition(positives):
    # spec §5: per batch, AP and cAP of σ(x_main[:, last, sem]) against y_sem[:, last] > 0.3; a batch without a
    # positive scores 1, so every batch is logged (it used to be skipped)
    torch.manual_seed(0)
    cfg = TSGSVConfig(video_dim=8, text_dim=8, hidden_dim=8, ffn_dim=8, num_heads=2, short_memory=4, long_memory=4,
                      future_memory=4, compressor_tokens=[2], num_decoder_layers=1, future_usage="none", dropout=0.0,
                      gru_dropout=0.0, gate_dropout=0.0)  # fmt: skip
    module = TSGSVModule(cfg, kd_weight=0.2)
    B = 4
    labels = torch.zeros(B, 4, 3)
    labels[:positives, -1, 2] = 0.9  # > 0.3: positive
    labels[positives:, -1, 2] = 0.2  # <= 0.3: negative
    batch = {
        "short": torch.randn(B, 4, 8), "short_mask": torch.zeros(B, 4, dtype=torch.bool),
        "long": torch.randn(B, 4, 8), "long_mask": torch.zeros(B, 4, dtype=torch.bool),
        "sentence": torch.randn(B, 20, 8), "sentence_length": torch.full((B,), 5), "labels": labels,
    }  # fmt: skip
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module.train()
    with torch.no_grad():
        module.training_step(batch, 0)
        prob = torch.sigmoid(module.model(batch["short"], batch["short_mask"], batch["long"], batch["long_mask"],
                                          batch["sentence"], batch["sentence_length"]).logits[:, -1, 2])  # fmt: skip
    if positives == 0:
        assert logged["train/AP_last"] == 1.0 and logged["train/cAP_last"] == 1.0
        return
    # plain reference: sort by descending score; AP = mean precision at the positives (no ties here),
    # cAP = mean over positives of TP_k / (TP_k + FP_k / w), w = #neg / #pos
    y = [1.0 if i < positives else 0.0 for i in range(B)]
    order = sorted(range(B), key=lambda i: -float(prob[i]))
    w = (B - positives) / positives
    tp = fp = 0.0
    ap = cap = 0.0
    for i in order:
        tp, fp = tp + y[i], fp + 1 - y[i]
        if y[i]:
            ap += tp / (tp + fp) / positives
            cap += tp / (tp + fp / w) / positives
    assert logged["train/AP_last"] == pytest.approx(ap, abs=1e-6)
    assert logged["train/cAP_last"] == pytest.approx(cap, abs=1e-9)


@pytest.mark.parametrize("max_epochs", [4, -1])
def test_warmup_counts_epochs_of_real_steps_when_max_steps_ends_the_run(tmp_path, max_epochs):
    """``warmup_epochs`` counts epochs of optimizer steps (spec §3.11), also when ``max_steps`` ends the run before
    ``max_epochs`` (or ``max_epochs`` is unset): one warm-up epoch spans exactly the batches of one epoch."""
    cli = main(args=["fit", *_tiny_args(tmp_path), "--trainer.limit_val_batches", "0", "--trainer.max_epochs",
                     str(max_epochs), "--trainer.max_steps", "3", "--trainer.limit_train_batches", "4",
                     "--model.warmup_epochs", "1.0", "--model.flat_fraction", "0.0"])  # fmt: skip
    trainer = cli.trainer
    assert trainer.num_training_batches == 4 and trainer.global_step == 3
    factor = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    start = cli.model.hparams.warmup_start_factor
    # the whole 3-step run is inside the first (4-step) epoch, so inside the warm-up
    assert [factor(s) for s in range(4)] == pytest.approx([start + (1 - start) * s / 4 for s in range(4)])
