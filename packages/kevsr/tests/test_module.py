"""fit/validate/test on tiny.yaml through the CLI; loss falls on a repeated batch; S1-only inference."""

import json

import pytest
import torch

from kevsr.cli import main
from kevsr.module import KEVSRModule


def _args(tmp_path):
    return [
        "--config",
        "tiny",
        "--data.data_root",
        str(tmp_path / "data"),
        "--data.kg_path",
        str(tmp_path / "data" / "kg.txt.gz"),
        "--trainer.default_root_dir",
        str(tmp_path),
    ]


def test_tiny_fit_test_and_s1_only_inference(tmp_path):
    cli = main(args=["fit", *_args(tmp_path), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"])
    m = cli.trainer.callback_metrics
    for key in ("train/loss_t", "train/loss_nt", "train/loss_distill", "val/f1_l2", "val/rp90_l2", "val/s2_f1_l2"):
        assert key in m and torch.isfinite(m[key])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    cli = main(args=["test", *_args(tmp_path), "--ckpt_path", str(ckpt)])
    for key in ("test/f1_l1", "test/f1_l2", "test/f1_all", "test/rp90_l1", "test/rp90_l2", "test/s2_rp90_l2"):
        assert key in cli.trainer.callback_metrics

    # `kevsr predict` writes one JSON line per test video: predicted label names and every refined score
    out = tmp_path / "predictions.jsonl"  # tiny.yaml has no logger: the log folder is default_root_dir
    cli = main(args=["predict", *_args(tmp_path), "--ckpt_path", str(ckpt)])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    main(args=["predict", *_args(tmp_path), "--ckpt_path", str(ckpt), "--predictions.path", str(tmp_path / "p.jsonl")])
    assert (tmp_path / "p.jsonl").read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    hierarchy = cli.datamodule.hierarchy
    assert [r["video_id"] for r in rows] == [r["video_id"] for r in cli.datamodule.datasets["test"].rows]
    for r in rows:
        assert len(r["level1_scores"]) == len(hierarchy.level1) and len(r["level2_scores"]) == len(hierarchy.level2)
        assert r["level2"] == [n for n, s in zip(hierarchy.level2, r["level2_scores"]) if s > 0]

    # inference never touches S2: drop it from the checkpoint and load into a temporal-only model
    full = cli.model.eval()
    state = {
        k: v
        for k, v in torch.load(ckpt, weights_only=False)["state_dict"].items()
        if not k.startswith("model.nontemporal.")
    }
    s1_only = KEVSRModule(full.config, streams="temporal").eval()
    s1_only.load_state_dict(state)
    batch = next(iter(cli.datamodule.test_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(s1_only.predict_step(batch, 0)["level2"], full.predict_step(batch, 0)["level2"])

    # the loss is finite and falls when one batch is repeated
    torch.manual_seed(0)
    module = KEVSRModule(full.config, lr=3e-3).train()
    module.model.set_hierarchy(full.model.parent_index)
    for p in module.modules():
        if isinstance(p, torch.nn.Dropout):
            p.p = 0.0
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = module.compute_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_setup_without_a_hierarchy_warns():
    from kevsr.models import KEVSRConfig

    cfg = KEVSRConfig(dim=16, f2d_dim=6, f3d_dim=4, text_dim=3, region_dim=6, kg_dim=5, num_frames=2, num_regions=2,
                      num_keywords=3, num_level1=2, num_level2=3, temporal_heads=2, region_heads=2)  # fmt: skip
    module = KEVSRModule(cfg, streams="both")
    with pytest.warns(UserWarning, match="no datamodule with a label hierarchy"):
        module.setup("fit")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kg_dim", 16, r"model.config.kg_dim=16 but data.kg_path has 8-d vectors"),
        ("num_regions", 5, r"model.config.num_regions=5 but data.num_regions=3"),
        ("num_keywords", 4, r"model.config.num_keywords=4 but data.num_keywords=3"),
    ],
)
def test_setup_names_model_and_data_sizes_that_disagree(tmp_path, key, value, message):
    """A KG width that differs between model.config and the data used to fail inside the label-table copy with a
    bare tensor-size error; N_r / N_k set on the model only were silently replaced by the data module's."""
    import lightning.pytorch as pl

    from kevsr.data import KEVSRDataModule
    from kevsr.models import KEVSRConfig
    from kevsr.synthetic import write_random_dataset

    root = write_random_dataset(tmp_path / "d", tmp_path / "kg.txt.gz", sizes=(2, 2, 1))
    dm = KEVSRDataModule(str(root), str(tmp_path / "kg.txt.gz"), kg_dim=8, num_regions=3, num_keywords=3,
                         num_workers=0)  # fmt: skip
    sizes = dict(dim=16, f2d_dim=16, f3d_dim=8, text_dim=12, region_dim=16, kg_dim=8, num_frames=4, num_regions=3,
                 num_keywords=3, num_level1=2, num_level2=5, temporal_layers=1, temporal_heads=2, region_heads=2)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(KEVSRModule(KEVSRConfig(**sizes)), datamodule=dm)  # consistent sizes: runs
    assert "val/f1_l2" in trainer.callback_metrics
    with pytest.raises(ValueError, match=message):
        trainer.validate(KEVSRModule(KEVSRConfig(**{**sizes, key: value})), datamodule=dm)


def _fixed_score_module(scores1, scores2, **kwargs):
    """A temporal-only module whose S1 returns the given refined scores (B, L1), (B, L2), and a matching batch."""
    from kevsr.models import KEVSRConfig

    b, l1, l2 = scores2.shape[0], scores1.shape[1], scores2.shape[1]
    cfg = KEVSRConfig(dim=8, f2d_dim=2, f3d_dim=2, text_dim=2, region_dim=2, kg_dim=2, num_frames=2, num_regions=1,
                      num_keywords=1, num_level1=l1, num_level2=l2, temporal_layers=1, temporal_heads=2,
                      region_heads=2)  # fmt: skip
    module = KEVSRModule(cfg, streams="temporal", **kwargs).eval()
    module.model.forward_temporal = lambda batch: {"level1": scores1, "level2": scores2}
    batch = {
        "video_id": [f"v{i}" for i in range(b)],
        "f2d": torch.zeros(b, 2, 2),
        "regions": torch.zeros(b, 2, 1, 2),
        "region_mask": torch.ones(b, 2, 1, dtype=torch.bool),
    }
    return module, batch


def test_f1_counts_every_score_above_the_threshold_as_positive():
    """Spec §5: a (video, label) pair is predicted positive iff its refined score > 0. Scores just above 0 round to
    sigmoid = 0.5 exactly in float32, so a 0.5 cut on sigmoid(score) would call them negative."""
    s1 = torch.tensor([[1e-8, -2.0], [3.0, -1e-8]])
    s2 = torch.tensor([[5e-8, -1.0, 2.0], [-3.0, 1e-7, 4e-8]])
    t1 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    module, batch = _fixed_score_module(s1, s2)
    module._eval_step({**batch, "target1": t1, "target2": t2}, "val")

    def by_hand(s, t):  # micro F1 = 2 TP / (predicted + actual positives), positive iff s > 0
        pred = s > 0
        return 2 * (pred & t.bool()).sum().item() / (pred.sum().item() + t.sum().item())

    assert by_hand(s1, t1) == 2 * 2 / (2 + 3) and by_hand(s2, t2) == 2 * 2 / (4 + 2)
    for level, s, t in (("l1", s1, t1), ("l2", s2, t2), ("all", torch.cat([s1, s2], 1), torch.cat([t1, t2], 1))):
        got = module.metrics[f"val_t_{level}_f1"].compute().item()
        assert abs(got - by_hand(s, t)) < 1e-6, level


def test_f1_uses_the_model_threshold():
    s1 = torch.tensor([[0.5, 1.5]])
    s2 = torch.tensor([[0.9, 1.1, 2.0]])
    module, batch = _fixed_score_module(s1, s2, threshold=1.0)
    module._eval_step({**batch, "target1": torch.tensor([[0.0, 1.0]]), "target2": torch.tensor([[1.0, 1.0, 0.0]])},
                      "val")  # fmt: skip
    assert module.metrics["val_t_l1_f1"].compute().item() == 1.0  # 1.5 only: TP 1
    assert abs(module.metrics["val_t_l2_f1"].compute().item() - 2 * 1 / (2 + 2)) < 1e-6  # 1.1 and 2.0 predicted


def test_predict_top_k_labels_per_level():
    """Spec §3.5: inference returns the top-K labels of each level or those above the threshold."""
    s1 = torch.tensor([[-1.0, -2.0], [3.0, 2.0]])
    s2 = torch.tensor([[-0.5, -3.0, -0.1], [1.0, 2.0, 0.5]])
    module, batch = _fixed_score_module(s1, s2, top_k=1)
    out = module.predict_step(batch, 0)
    assert out["pred1"].tolist() == [[True, False], [True, False]]  # the top label even below 0
    assert out["pred2"].tolist() == [[False, False, True], [False, True, False]]
    module, batch = _fixed_score_module(s1, s2, top_k=2)
    assert module.predict_step(batch, 0)["pred2"].tolist() == [[True, False, True], [True, True, False]]
    module, batch = _fixed_score_module(s1, s2, top_k=5)  # more than a level's labels: all of them
    assert module.predict_step(batch, 0)["pred1"].all()
    # consistent_paths filters the top-K level-2 labels by their predicted parents (both videos' top level-1
    # label is 0; level-2 label 1 sits under level-1 label 1)
    module, batch = _fixed_score_module(s1, s2, top_k=1, consistent_paths=True)
    module.model.set_hierarchy(torch.tensor([0, 1, 0]))
    assert module.predict_step(batch, 0)["pred2"].tolist() == [[False, False, True], [False, False, False]]
    # null: the threshold, as before
    module, batch = _fixed_score_module(s1, s2)
    assert module.predict_step(batch, 0)["pred2"].tolist() == (s2 > 0).tolist()


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_top_k_out_of_range_is_refused(value):
    with pytest.raises(ValueError, match="model.top_k"):
        _fixed_score_module(torch.zeros(1, 2), torch.zeros(1, 3), top_k=value)
