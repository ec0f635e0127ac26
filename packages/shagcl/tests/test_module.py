import json

import numpy as np
import pytest
import torch
from shagcl_testlib import synthetic_datamodule, tiny_config

from shagcl.cli import main
from shagcl.data import collate_scene_graphs
from shagcl.models import SHAGCLConfig
from shagcl.module import SHAGCLModule


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    common = ["--config", "tiny", "--trainer.default_root_dir", str(root), "--data.data_root", str(root / "data")]
    cli = main(args=["fit", *common])
    return root, common, cli


def test_fit_validate_test_predict(trained):
    root, common, cli = trained
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/mR@100" in cli.trainer.callback_metrics
    ckpt = str(root / "checkpoints" / "last.ckpt")
    test = main(args=["test", *common, "--ckpt_path", ckpt])
    m = test.trainer.callback_metrics
    for k in (20, 50, 100):
        assert 0 <= float(m[f"test/R@{k}"]) <= 1 and 0 <= float(m[f"test/mR@{k}"]) <= 1
    assert (root / "per_predicate_recall.csv").is_file() and (root / "per_predicate_recall.png").is_file()
    out = root / "pred" / "scene_graphs.jsonl"
    pred = main(args=["predict", *common, "--ckpt_path", ckpt, "--predictions.path", str(out)])
    graphs = [json.loads(line) for line in out.read_text().splitlines()]
    test_ids = [pred.datamodule.datasets["test"][i]["image_id"] for i in range(len(pred.datamodule.datasets["test"]))]
    assert [g["image_id"] for g in graphs] == test_ids and graphs[0]["triplets"]
    assert [p.name for p in (root / "pred").glob("scene_graph_*.png")] == [f"scene_graph_{test_ids[0]}.png"]


def _tiny_module(tmp_path, protocol, pooled=False):
    dm = synthetic_datamodule(tmp_path, protocol, pooled)
    cfg = SHAGCLConfig(
        protocol=protocol,
        num_obj_classes=9,
        num_predicates=11,
        feature_dim=16,
        hidden_dim=16,
        num_heads=2,
        key_dim=8,
        ffn_dim=32,
        obj_layers=1,
        edge_layers=1,
        word_dim=8,
        word_embeddings="random",
        use_rect_features=pooled,
        group_min_count=1,
        roi_channels=8,
        trainable_box_head=pooled,
        union_features="official" if pooled else "simplified",
    )
    module = SHAGCLModule(cfg)
    module.build_from_statistics(dm.statistics())
    batch = collate_scene_graphs([dm.datasets["train"][i] for i in range(4)])
    return module, batch


def test_loss_falls_on_repeated_batch(tmp_path):
    module, batch = _tiny_module(tmp_path, "predcls")
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(0)  # same pair assignment and dropout every step
        out = module.model(batch)
        loss = module.gcl_loss(out.rel_logits, batch["pair_labels"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_sgcls_step_has_object_loss_and_kd(tmp_path):
    module, batch = _tiny_module(tmp_path, "sgcls")
    assert len(module.group_sizes) >= 3
    out = module.model(batch)
    assert out.obj_logits is not None
    torch.manual_seed(0)
    terms = module.gcl_loss(out.rel_logits, batch["pair_labels"])
    assert any(k.endswith("_DKS_loss") for k in terms)
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(module.obj_loss(out.obj_logits, batch["labels"]))


def test_trainable_box_head_fc6_changes_after_a_step(tmp_path):
    """trainable_box_head (the default, spec §3.9): fc6/fc7 run on pooled ROI maps and are optimised."""
    module, batch = _tiny_module(tmp_path, "predcls", pooled=True)
    assert batch["obj_pooled"].shape[1:] == (8, 7, 7) and batch["union_pooled"].shape[1:] == (32, 7, 7)
    opt = module.configure_optimizers()["optimizer"]
    fc6 = {name: p.detach().clone() for name, p in module.named_parameters() if ".fc6." in name}
    assert set(fc6) == {
        "model.box_head.fc6.weight",
        "model.box_head.fc6.bias",
        "model.union.box_head.fc6.weight",
        "model.union.box_head.fc6.bias",
    }
    torch.manual_seed(0)
    loss = module.gcl_loss(module.model(batch).rel_logits, batch["pair_labels"])["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    params = dict(module.named_parameters())
    for name in ("model.box_head.fc6.weight", "model.union.box_head.fc6.weight"):
        assert not torch.equal(params[name], fc6[name])
    frozen, _ = _tiny_module(tmp_path / "frozen", "predcls")
    assert frozen.model.box_head is None and frozen.model.union is None  # cached post-fc7 features: no fc6 copy


def test_plateau_schedule_matches_official():
    """WarmupReduceLROnPlateau (patience 2, threshold 0.001 absolute, cooldown 0): ×0.1 at the second consecutive
    validation without improvement, the count restarts after a reduction, and training stops after 3."""
    from types import SimpleNamespace

    small = dict(feature_dim=8, hidden_dim=8, num_heads=1, key_dim=8, ffn_dim=8, union_features="simplified")
    module = SHAGCLModule(SHAGCLConfig(word_embeddings="random", trainable_box_head=False, **small))
    module._trainer = SimpleNamespace(should_stop=False)
    history = []
    for value in (0.1, 0.2, 0.2005, 0.2, 0.25, 0.2, 0.2, 0.2, 0.2):
        module._plateau_step(value)
        history.append((module.lr_reductions, module.trainer.should_stop))
    # 0.2005 is within the threshold of 0.2: a bad validation; 0.25 resets the count
    assert [r for r, _ in history] == [0, 0, 0, 1, 1, 1, 2, 2, 3]
    assert [s for _, s in history] == [False] * 8 + [True]
    assert module.lr_scale == pytest.approx(1e-3) and module.best_metric == 0.25


def test_frequency_bias_tables_get_no_weight_decay(tmp_path):
    """Official make_optimizer: weight decay 0 for every parameter named '*bias*' (biases and the freq_bias
    tables); the other weights get weight_decay."""
    module, _ = _tiny_module(tmp_path, "predcls")
    opt = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert set(by_decay) == {1e-4, 0.0}
    tables = {n for n in names.values() if n.startswith("model.decoder.freq_bias.")}
    assert tables and tables <= by_decay[0.0]
    assert all(n.endswith(".bias") or "freq_bias" in n for n in by_decay[0.0])
    assert "model.decoder.post_cat.weight" in by_decay[1e-4] and "model.decoder.post_cat.bias" in by_decay[0.0]


def test_test_on_two_processes_writes_the_report(trained, tmp_path):
    """`shagcl test` on two processes (Lightning's ``ddp``, the multi-GPU default, here on the CPU) ends and writes
    the per-predicate report: the report's folder is looked up on every rank (Trainer.log_dir is a collective; asked
    on rank 0 alone it hung). The run gets its own process group, so that a hang kills the rank Lightning launched
    too, rather than leaving it holding the output pipes open."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root, common, _ = trained
    ckpt = str(root / "checkpoints" / "last.ckpt")
    common = [a if a != str(root) else str(tmp_path) for a in common]  # the run folder; the data stays
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "shagcl"), "test", *common, "--ckpt_path", ckpt, "--trainer.devices", "2",
         "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    limit = 180
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"two-process test did not end within {limit} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "per_predicate_recall.csv").is_file()


def test_official_counts_need_the_frequency_order():
    """Spec §3.6.4: the official VG150 count list is in the frequency order of §4.3; with the file's alphabetical
    ids it would group and re-sample the wrong predicates, so that combination is refused."""
    from shagcl.data import TrainStatistics
    from shagcl.gcl import VG150_PREDICATES_FREQ_ORDER

    cfg = tiny_config(num_obj_classes=3, num_predicates=51, count_source="official")
    zeros = torch.zeros(3, 3, 51)
    alphabetical = ["__background__", *sorted(VG150_PREDICATES_FREQ_ORDER[1:])]
    stats = TrainStatistics(torch.ones(51), zeros, zeros, ["bg", "a", "b"], alphabetical, "vg150")
    with pytest.raises(ValueError, match="predicate_order=frequency"):
        SHAGCLModule(cfg).build_from_statistics(stats)
    stats.predicate_classes = list(VG150_PREDICATES_FREQ_ORDER)
    module = SHAGCLModule(cfg)
    module.build_from_statistics(stats)
    assert module.group_sizes == [4, 6, 9, 19, 12]  # divide4 preset (spec §3.6.2)


def test_plateau_reduction_applies_from_the_next_step(tmp_path):
    """A reduction decided at a validation takes effect on the very next optimizer step (the official
    WarmupReduceLROnPlateau sets the lr before the next iteration), and the checkpoint written by that validation
    already holds the reduced lr."""
    import lightning.pytorch as pl

    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))

    dm = synthetic_datamodule(tmp_path / "data")
    # every validation after the first is a plateau (threshold above any recall), reduced at once (patience 1)
    module = SHAGCLModule(
        tiny_config(num_obj_classes=9, num_predicates=11, group_min_count=1),
        lr=0.01,
        warmup_steps=0,
        plateau_patience=1,
        plateau_threshold=10.0,
    )
    trainer = pl.Trainer(
        max_steps=6,
        gradient_clip_val=5.0,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Probe()],
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    # validations after steps 2 (the first: the best so far), 4 (a plateau: ×0.1 from step 4 on) and 6 (another)
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4, 5]
    assert [lr for _, lr in seen] == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.001, 0.001])
    assert module.lr_reductions == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4)  # already applied after the last one


def test_training_batch_without_any_object_pair_names_its_images(tmp_path):
    module, _ = _tiny_module(tmp_path, "predcls")
    dm = synthetic_datamodule(tmp_path, "predcls")
    ds = dm.datasets["train"]
    rec = ds.records[0]  # one object, its only relation with itself (legal in the files, never a pair)
    rec.boxes, rec.labels, rec.rels = rec.boxes[:1], rec.labels[:1], np.array([[0, 0, 1]])
    batch = collate_scene_graphs([ds[0]])
    with pytest.raises(ValueError, match=rf"images \['{rec.image_id}'\]\) holds no object pair.*data\.batch_size"):
        module.training_step(batch, 0)
