import json
import math
from types import SimpleNamespace

import pytest
import torch

import radartag.module
from radartag.cli import main
from radartag.data import GraphCollator, KwaiTagDataModule, read_kwai_files
from radartag.losses import RadarLoss, adversarial_lambda
from radartag.models import Radar, RadarConfig
from radartag.module import RadarModule
from radartag.sampler import BlockSampler
from radartag.synthetic import SyntheticKwaiConfig


def _args(tmp_path):
    return ["--config", "tiny", "--data.dataset_root", str(tmp_path / "data"), "--trainer.default_root_dir",
            str(tmp_path), "--trainer.logger", "false"]  # fmt: skip


def test_fit_validate_test_tiny(tmp_path):
    cli = main(args=["fit", *_args(tmp_path)])
    m = cli.trainer.callback_metrics
    assert math.isfinite(float(m["train/loss"])) and 0 <= float(m["val/sample_mAP"]) <= 1
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    cli = main(args=["validate", *_args(tmp_path), "--ckpt_path", str(ckpt)])
    assert "val/label_mAP" in cli.trainer.callback_metrics
    cli = main(args=["test", *_args(tmp_path), "--ckpt_path", str(ckpt)])
    m = cli.trainer.callback_metrics
    for key in ("test/sample_mAP", "test/label_mAP", "test/P@1", "test/P@3", "test/R@5", "test/R@10"):
        assert 0.0 <= float(m[key]) <= 1.0, key


def test_predict_writes_a_row_per_test_video(tmp_path):
    out = tmp_path / "p.jsonl"
    cli = main(args=["predict", *_args(tmp_path), "--model.predict_top_k", "5", "--predictions.path", str(out)])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    files = read_kwai_files(tmp_path / "data", "tiny")
    truth = {pid: sorted(set(tags)) for pid, tags in files.videos["test"]}
    assert len(rows) == len(truth) > 0 and sorted(r["pid"] for r in rows) == sorted(truth)  # each test video once
    # recompute every test video in one batch of the reversed split (full neighbourhoods: deterministic)
    dm, model = cli.datamodule, cli.model.eval()
    g = dm.graph("test")
    nodes = torch.arange(g["video"].num_nodes - 1, g["video"].num_train - 1, -1)
    batch = GraphCollator(g, BlockSampler(g, dm.relations, 2, -1), dm.num_tags)(nodes.tolist())
    with torch.no_grad():
        score = dict(zip(g["video"].pid[nodes].tolist(), model(batch).scores))
    for row in rows:
        p = torch.sigmoid(score[row["pid"]])
        expected = torch.argsort(score[row["pid"]], stable=True).flip(0)[:5]
        assert [t["tag"] for t in row["top_tags"]] == expected.tolist()
        assert [t["prob"] for t in row["top_tags"]] == pytest.approx(p[expected].tolist(), abs=1e-5)
        assert [t["name"] for t in row["top_tags"]] == [files.tags[t] for t in expected.tolist()]
        assert row["labels"] == truth[row["pid"]] and row["label_names"] == [files.tags[t] for t in row["labels"]]


def test_loss_falls_on_repeated_batch(tmp_path):
    dm = KwaiTagDataModule(str(tmp_path / "d"), "v", batch_size=32, fanout=3, generate_demo_data=True,
                           demo=SyntheticKwaiConfig(num_users=20, num_parents=3, leaves_per_parent=4, feature_dim=8))  # fmt: skip
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    model = Radar(RadarConfig(video_dim=8, tag_dim=8, num_tags=dm.num_tags, hidden_dim=16, num_heads=2, dropout=0.0))
    loss_fn = RadarLoss(total_step=10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        out = model(batch.video_x, batch.tag_x, batch.tag_ids, batch.blocks, batch.num_videos)
        loss = loss_fn(out.scores, batch.labels, out.discriminator_logits)["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_feature_width_mismatch_named_at_setup(tmp_path):
    dm = KwaiTagDataModule(str(tmp_path / "d"), "v", generate_demo_data=True,
                           demo=SyntheticKwaiConfig(num_users=8, num_parents=2, leaves_per_parent=2, feature_dim=8))  # fmt: skip
    dm.prepare_data()
    for kw, key in ((dict(video_dim=16, tag_dim=8), "video_dim"), (dict(video_dim=8, tag_dim=12), "tag_dim")):
        module = RadarModule(RadarConfig(num_tags=None, hidden_dim=8, num_heads=2, **kw))
        module._trainer = SimpleNamespace(datamodule=dm)
        folder = "video_feat" if key == "video_dim" else "tag_feat_bert"
        with pytest.raises(ValueError, match=rf"model\.config\.{key}={kw[key]} .*{folder}'.* width 8"):
            module.setup("fit")
    module = RadarModule(RadarConfig(video_dim=8, tag_dim=8, num_tags=None, hidden_dim=8, num_heads=2))
    module._trainer = SimpleNamespace(datamodule=dm)
    module.setup("fit")  # matching widths pass
    assert module.model is not None


def test_skipped_videos_logged(monkeypatch):
    """Spec §5: evaluation videos without a positive tag are skipped by the sample metrics and counted in a log line."""
    module = RadarModule(RadarConfig(video_dim=8, tag_dim=8, num_tags=4, hidden_dim=8, num_heads=2))
    logged, lines = {}, []
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    monkeypatch.setattr(radartag.module, "rank_zero_info", lines.append)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]])
    module.val_metrics.update(torch.randn(3, 4), labels)
    module.on_validation_epoch_end()
    assert logged["val/skipped_videos"] == 1.0 and "val/sample_mAP" in logged
    assert len(lines) == 1 and "1 of 3 evaluation videos" in lines[0]
    module.test_metrics.update(torch.randn(2, 4), labels[[0, 2]])
    module.on_test_epoch_end()
    assert logged["test/skipped_videos"] == 0.0 and len(lines) == 1  # nothing skipped: no line


def test_all_videos_skipped_logs_nan_and_warns(monkeypatch):
    """With no evaluation video holding a positive tag sample mAP, R@k and label mAP are logged as NaN (not as a
    real 0), P@k as 0 (a mean over the scored videos), and a warning says why; the usual info line is not printed."""
    module = RadarModule(RadarConfig(video_dim=8, tag_dim=8, num_tags=4, hidden_dim=8, num_heads=2))
    logged, warnings, lines = {}, [], []
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    monkeypatch.setattr(radartag.module, "rank_zero_warn", warnings.append, raising=False)
    monkeypatch.setattr(radartag.module, "rank_zero_info", lines.append)
    module.val_metrics.update(torch.randn(2, 4), torch.zeros(2, 4))
    module.on_validation_epoch_end()
    for name in ("sample_mAP", "label_mAP", "R@5", "R@10"):
        assert math.isnan(logged[f"val/{name}"]), name
    assert logged["val/P@1"] == 0.0 and logged["val/P@3"] == 0.0  # every video scored, none with a hit
    assert logged["val/skipped_videos"] == 2.0 and not lines
    assert len(warnings) == 1 and "none of the 2 evaluation videos has a positive tag" in warnings[0]


def test_fit_with_a_val_split_without_tags_ranks_the_nan_epochs_last(tmp_path):
    """End to end: a val list whose videos carry no tags gives val/sample_mAP NaN, and the fit still keeps a best
    checkpoint (Lightning's checkpoint callback ranks NaN below every number)."""
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    main(args=["validate", *_args(tmp_path), *short])  # writes the tiny vertical
    val = tmp_path / "data" / "kwai_tiny_video_val_list.txt"
    val.write_text("".join(line.split("\t")[0] + "\n" for line in val.read_text().splitlines()))  # pids only
    cli = main(args=["fit", *_args(tmp_path), *short, "--trainer.default_root_dir", str(tmp_path / "nan")])
    assert math.isnan(float(cli.trainer.callback_metrics["val/sample_mAP"]))
    assert list((tmp_path / "nan" / "checkpoints").glob("best-*.ckpt"))


def test_empty_val_list_fails_at_setup_naming_the_file(tmp_path):
    """End to end: with an empty val list, fit and validate stop at setup with an error naming the file (Lightning
    would otherwise skip validation silently, log no val metric and keep no best checkpoint); with validation
    switched off the fit runs."""
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"]
    main(args=["validate", *_args(tmp_path), *short])  # writes the tiny vertical
    (tmp_path / "data" / "kwai_tiny_video_val_list.txt").write_text("")
    for command in ("fit", "validate"):
        with pytest.raises(ValueError, match=r"kwai_tiny_video_val_list\.txt' lists no videos"):
            main(args=[command, *_args(tmp_path), *short])
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))  # the failed fit trained nothing
    cli = main(args=["fit", *_args(tmp_path), *short, "--trainer.limit_val_batches", "0"])
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))


def test_adversarial_total_step_counts_forward_passes_under_accumulation(tmp_path):
    """λ_p's counter k advances once per training forward (spec §3.4), so the default total_step counts training
    batches, not optimizer steps: with accumulate_grad_batches=2 and max_steps ending the fit in its third epoch,
    the counter still ends at exactly total_step (p = 1)."""
    cli = main(args=["fit", *_args(tmp_path), "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "5",
                     "--trainer.limit_val_batches", "1"])  # fmt: skip
    trainer, loss = cli.trainer, cli.model.loss
    assert trainer.num_training_batches == 3 and trainer.max_epochs == 3  # 2 optimizer steps per epoch
    assert trainer.global_step == 5 and trainer.current_epoch == 3
    assert loss.total_step == int(loss.step) == 3 + 3 + 2  # two whole epochs, then the two batches of step 5
    lam = float(trainer.callback_metrics["train/lambda_p"])
    assert lam == pytest.approx(adversarial_lambda(1, 1, 0.01, 20.0))


def test_training_batches_of_a_fit():
    from radartag.module import training_batches

    def trainer(n, acc, max_epochs, max_steps=-1):
        return SimpleNamespace(num_training_batches=n, accumulate_grad_batches=acc, max_epochs=max_epochs,
                               max_steps=max_steps)  # fmt: skip

    assert training_batches(trainer(3, 2, 3)) == 9  # Lightning's estimated_stepping_batches: 6
    assert training_batches(trainer(3, 2, 5, max_steps=4)) == 6
    assert training_batches(trainer(3, 2, 5, max_steps=3)) == 5
    assert training_batches(trainer(3, 2, -1, max_steps=3)) == 5
    assert training_batches(trainer(4, 1, 2, max_steps=100)) == 8
    assert training_batches(trainer(float("inf"), 2, -1, max_steps=3)) == 6
    with pytest.raises(ValueError, match=r"trainer\.max_epochs=-1 and trainer\.max_steps=-1 bound no length"):
        training_batches(trainer(3, 1, -1))


def test_prediction_rows_ranked_by_score_not_saturated_probability():
    """σ rounds scores above ~17 to 1.0 in float32; the top tags follow the scores (the metrics' ranking), not the
    tied probabilities (which would put the larger tag id first)."""
    module = RadarModule(RadarConfig(video_dim=8, tag_dim=8, num_tags=4, hidden_dim=8, num_heads=2), predict_top_k=3)
    scores = torch.tensor([[20.0, 30.0, 25.0, -3.0]])
    prob = torch.sigmoid(scores)
    assert prob[0, 0] == prob[0, 1] == prob[0, 2] == 1.0  # the case: three tied probabilities
    rows = module.prediction_rows({"pid": torch.tensor([7]), "scores": scores, "prob": prob,
                                   "labels": torch.tensor([[0, 1, 0, 0]])})  # fmt: skip
    assert [t["tag"] for t in rows[0]["top_tags"]] == [1, 2, 0]
    assert rows[0]["pid"] == 7 and rows[0]["labels"] == [1]
