import math
import random

import pytest
import torch

from snps3.cli import main


def base(root, tmp_path):
    return [
        "--config",
        "tiny",
        "--data.data_root",
        str(root),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "true",
    ]


def finite_metrics(cli, prefix):
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(prefix)}
    assert m and all(math.isfinite(v) for v in m.values()), m
    return m


def test_pretrain_fit_validate(synthetic_root, tmp_path):
    cli = main(["fit", *base(synthetic_root, tmp_path)])
    m = finite_metrics(cli, "train/")
    for term in ("l1", "l2", "mlm_text", "mlm_cross", "itm", "lvwm"):
        assert f"train/loss_{term}" in m
    v = finite_metrics(cli, "val/")
    assert "val/select" in v and "val/loss_lvwm" in v
    assert cli.trainer.global_step == 3
    assert int(cli.model.moco_loss.queue_t.ptr) == 12  # 3 steps x 4 text keys enqueued


def test_retrieval_qa_mc(synthetic_root, tmp_path):
    cli = main(
        [
            "fit",
            *base(synthetic_root, tmp_path / "ret"),
            "--data.dataset",
            "msrvtt_7k",
            "--model.task",
            "retrieval",
            "--trainer.limit_train_batches",
            "2",
        ]
    )
    ckpt = str(tmp_path / "ret" / "checkpoints" / "last.ckpt")
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    m = finite_metrics(cli, "test/")
    for key in ("l2_simi_t2v-R@1", "l2_simi_t2v-MdR", "l1_simi_t2v-R@5", "l2_simi_v2t-R@10", "select"):
        assert f"test/{key}" in m
    cli = main(
        [
            "fit",
            *base(synthetic_root, tmp_path / "qa"),
            "--data.dataset",
            "msrvtt_qa",
            "--model.task",
            "qa",
            "--data.num_answers",
            "18",
            "--trainer.limit_train_batches",
            "2",
            "--model.init_checkpoint",
            ckpt,
        ]
    )
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert 0.0 <= finite_metrics(cli, "test/")["test/acc"] <= 1.0
    cli = main(
        [
            "test",
            *base(synthetic_root, tmp_path / "mc"),
            "--data.dataset",
            "msrvtt_mc",
            "--model.task",
            "mc",
            "--model.init_checkpoint",
            ckpt,
        ]
    )  # zero-shot: the retrieval weights, MC hyper-parameters
    assert 0.0 <= finite_metrics(cli, "test/")["test/mc_acc"] <= 1.0


def test_task_mismatch_is_an_error(synthetic_root, tmp_path):
    import pytest

    with pytest.raises(ValueError, match="model.task='retrieval'"):
        main(["validate", *base(synthetic_root, tmp_path), "--model.task", "retrieval"])


def test_loss_falls_on_a_repeated_batch(synthetic_root, tmp_path):
    from snps3.data import SNPS3DataModule
    from snps3.models import SNPS3Config
    from snps3.module import SNPS3Module

    torch.manual_seed(0)
    random.seed(0)
    dm = SNPS3DataModule(
        str(synthetic_root),
        "webvid",
        tokenizer="vocab.txt",
        num_frames=2,
        max_text_len=16,
        significant_words="count_reprocess_synthetic.json",
        words_top_k=17,
        crop_size=32,
        train_scale=(32, 32),
        eval_short_side=32,
        randaugment=False,
        hflip=0.0,
        batch_size=4,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    cfg = SNPS3Config(
        bert=None,
        vocab_size=209,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        visual_encoder="tiny_cnn",
    )
    module = SNPS3Module(cfg, task="pretrain", with_moco=False, attentive_mask_prob=0.0, warmup_iterations=0, lr=2e-3)
    module.eval()  # no dropout: the same batch gives the same loss
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        terms, _ = module.pretrain_losses(batch, train=True)
        loss = sum(terms.values())
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.95, losses


def test_nan_loss_raises_or_skips():
    import pytest

    from snps3.models import SNPS3Config
    from snps3.module import SNPS3Module

    cfg = SNPS3Config(
        bert=None,
        vocab_size=209,  # holds the default special-token ids (101-103)
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        visual_encoder="tiny_cnn",
        tiny_cnn_channels=4,
    )
    m = SNPS3Module(cfg, task="retrieval", with_moco=False)
    with pytest.raises(FloatingPointError, match="l2"):
        m._check_finite({"l1": torch.tensor(1.0), "l2": torch.tensor(float("nan"))})
    m.hparams.nan_policy = "skip"
    assert not m._check_finite({"l2": torch.tensor(float("inf"))})


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_skipped_step_keeps_every_ddp_rank_in_the_all_reduce(monkeypatch, make_config, world_size):
    from types import SimpleNamespace

    from snps3.module import SNPS3Module

    m = SNPS3Module(make_config(num_layers=1, num_answers=0), task="retrieval", with_moco=False)
    monkeypatch.setattr(SNPS3Module, "trainer", property(lambda self: SimpleNamespace(world_size=world_size)))
    out = m._skipped_step_loss()
    if world_size == 1:
        assert out is None  # one process: Lightning skips backward and the optimizer step
        return
    out.backward()  # several: a zero loss whose backward reaches every trainable parameter
    assert out.item() == 0.0
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and not g.any() for g in grads)


def test_retrieval_evaluation_under_bf16_mixed(synthetic_root, tmp_path):
    """bf16-mixed stores bf16 features; the level-2 score matrix must still be float32 (it once took t's dtype and
    the first validation epoch failed writing float32 scores into it)."""
    args = ["--data.dataset", "msrvtt_7k", "--model.task", "retrieval", "--trainer.precision", "bf16-mixed"]
    cli = main(["fit", *base(synthetic_root, tmp_path), *args, "--trainer.limit_train_batches", "1"])
    assert cli.trainer.precision == "bf16-mixed"
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    m = finite_metrics(cli, "test/")
    assert 0.0 <= m["test/l2_simi_t2v-R@1"] <= 100.0


def test_qa_answer_counts_must_agree(synthetic_root, make_config):
    from types import SimpleNamespace

    import pytest

    from snps3.data import SNPS3DataModule
    from snps3.module import SNPS3Module

    for n_model, n_data in ((5, 18), (0, 18)):
        module = SNPS3Module(config=make_config(num_layers=1, num_answers=n_model), task="qa", with_moco=False)
        d = SNPS3DataModule(str(synthetic_root), "msrvtt_qa", tokenizer="vocab.txt", num_answers=n_data)
        module._trainer = SimpleNamespace(datamodule=d)
        with pytest.raises(ValueError, match=r"data\.num_answers.*model\.config\.num_answers"):
            module.setup("fit")
    module = SNPS3Module(config=make_config(num_layers=1, num_answers=18), task="qa", with_moco=False)
    module._trainer = SimpleNamespace(datamodule=d)
    module.setup("fit")  # equal sizes: fine


def test_lvwm_without_significant_words_warns_once(synthetic_root, make_config):
    import warnings

    import pytest

    from snps3.data import SNPS3DataModule
    from snps3.module import SNPS3Module

    d = SNPS3DataModule(
        str(synthetic_root),
        "webvid",
        tokenizer="vocab.txt",
        num_frames=2,
        max_text_len=16,
        masking="mlm",
        crop_size=32,
        train_scale=(32, 36),
        eval_short_side=32,
        randaugment=False,
        batch_size=3,
    )
    d.setup("fit")
    batch = next(iter(d.train_dataloader()))
    assert "word_significant" not in batch
    module = SNPS3Module(
        config=make_config(num_layers=1, num_answers=0), task="pretrain", with_moco=False, use_itm=False, use_l2=False
    )
    with pytest.warns(UserWarning, match="data.significant_words is null"):
        assert "lvwm" in module.pretrain_losses(batch, train=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.pretrain_losses(batch, train=False)


@pytest.mark.parametrize(
    "switches", [dict(with_moco=True, lvwm_stage="both"), dict(with_moco=False, text_mlm_input="masked")]
)
def test_per_item_pretraining_terms_reduce_to_the_batch_values(synthetic_root, make_config, switches):
    """Evaluation keeps every pre-training term per item (to count each item once); Σ values / Σ weights of a batch's
    items must give back the batch's own value of that term (MoCo or gathered MIL-NCE L1, token-level MLM, ITM
    pairs, in-batch L2, LVWM before and after the BERT, and the monitors)."""
    from snps3.data import SNPS3DataModule
    from snps3.module import SNPS3Module

    d = SNPS3DataModule(
        str(synthetic_root),
        "webvid",
        tokenizer="vocab.txt",
        num_frames=2,
        max_text_len=16,
        masking="mlm",
        mask_prob=0.4,
        significant_words="count_reprocess_synthetic.json",
        words_top_k=17,
        crop_size=32,
        eval_short_side=32,
        randaugment=False,
        eval_batch_size=5,
    )
    d.setup("validate")
    batch = next(iter(d.val_dataloader()))
    torch.manual_seed(0)
    module = SNPS3Module(config=make_config(num_layers=1), task="pretrain", moco_queue_size=8, **switches).eval()
    with torch.no_grad():  # the same draws (LVWM's word choice) in both calls
        torch.manual_seed(1)
        losses, mon = module.pretrain_losses(batch, train=False)
        torch.manual_seed(1)
        per_loss, per_mon = module.pretrain_losses(batch, train=False, reduction="none")
    names = module.pretrain_term_names()
    assert sorted(per_loss) == sorted(losses) == sorted(names[0]) and sorted(per_mon) == sorted(names[1])
    n_masked = (batch["mlm_labels"] >= 0).sum(1)
    assert n_masked.min() != n_masked.max()  # items with different token counts: the MLM weights matter
    for name, value in {**losses, **mon}.items():
        values, weights = {**per_loss, **per_mon}[name]
        assert values.shape == weights.shape == (5,), name
        torch.testing.assert_close(values.sum() / weights.sum(), value.float(), msg=name)
    torch.testing.assert_close(per_loss["mlm_cross"][1], n_masked.float())
    assert not torch.allclose(per_loss["l1"][0], per_loss["l1"][0].mean())  # items differ: each keeps its own


def _hand_batch(ids: list[list[int]], significant: bool = False) -> dict:
    """A pre-training batch built by hand: unmasked captions (no data-side labels), random 32x32 frames (T = 2)."""
    input_ids = torch.tensor(ids)
    attn = (input_ids != 0).long()
    g = torch.Generator().manual_seed(0)
    batch = {
        "frames": torch.randn(len(ids), 2, 3, 32, 32, generator=g),
        "input_ids": input_ids,
        "attention_mask": attn,
        "mlm_input_ids": input_ids.clone(),
        "mlm_labels": torch.full_like(input_ids, -1),
        "neg_input_ids": input_ids.flip(0),
        "neg_attention_mask": attn.flip(0),
    }
    if significant:
        batch["word_significant"] = torch.zeros_like(input_ids, dtype=torch.bool)
    return batch


def test_attentive_importance_sums_every_query_row(make_config, monkeypatch):
    """Spec §3.4 f / official code: a_p sums the head-averaged attention over all query rows of every layer,
    the padding rows included (they attend to the caption's real tokens)."""
    import snps3.module as module_lib
    from snps3.module import SNPS3Module

    seen = []
    real = module_lib.attentive_mask

    def spy(input_ids, attention_mask, importance, *args, **kwargs):
        seen.append(importance.clone())
        return real(input_ids, attention_mask, importance, *args, **kwargs)

    monkeypatch.setattr(module_lib, "attentive_mask", spy)
    torch.manual_seed(0)
    module = SNPS3Module(
        config=make_config(num_answers=0),
        task="pretrain",
        with_moco=False,
        use_l2=False,
        use_itm=False,
        use_lvwm=False,
        attentive_mask_prob=1.0,
    ).eval()  # no dropout: the text pass repeats exactly
    batch = _hand_batch([[101, 5, 6, 7, 102, 0, 0, 0, 0, 0], [101, 8, 9, 102, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        module.pretrain_losses(batch, train=True)
        att = module.model.encode_text(batch["input_ids"], batch["attention_mask"], output_attentions=True).attentions
    assert len(seen) == 1
    every_row = sum(a.mean(1).sum(1) for a in att)  # (B, L)
    real_rows_only = sum((a.mean(1) * batch["attention_mask"][:, :, None]).sum(1) for a in att)
    torch.testing.assert_close(seen[0], every_row)
    assert not torch.allclose(every_row, real_rows_only)  # the padding rows carry weight


def test_attentive_masking_reaches_itm_without_mlm(make_config):
    """The re-masked caption feeds the cross-modal pass whose pooled output is the ITM positive, so attentive
    masking also happens when only ITM reads that pass (as in the official code, where it is not tied to MLM)."""
    from snps3.module import SNPS3Module

    torch.manual_seed(0)
    module = SNPS3Module(
        config=make_config(num_answers=0),
        task="pretrain",
        with_moco=False,
        use_mlm=False,
        use_l2=False,
        use_lvwm=False,
        attentive_mask_prob=1.0,
    )
    calls = []
    real_cross = module.model.cross

    def cross(input_ids, *args):
        calls.append(input_ids.clone())
        return real_cross(input_ids, *args)

    module.model.cross = cross
    batch = _hand_batch([[101, 5, 6, 7, 102, 0], [101, 8, 9, 10, 11, 102]])
    losses, _ = module.pretrain_losses(batch, train=True)
    assert "itm" in losses and "mlm_cross" not in losses
    positive = calls[0]  # first cross pass: (caption, own video), the ITM positive
    assert (positive == 103).sum(1).tolist() == [1, 1]  # max(⌊0.15·n⌋, 1) = 1 [MASK] per caption
    assert not torch.equal(positive, batch["mlm_input_ids"])


def test_lvwm_never_picks_a_mask_token(make_config, monkeypatch):
    """LVWM's "other" positions exclude the special ids {0, 101, 102, 103} (spec §3.4 e step 2), [MASK] included:
    a caption whose raw ids hold a literal [MASK] and no significant word picks only its real word."""
    import snps3.module as module_lib
    from snps3.module import SNPS3Module

    picked = []
    real = module_lib.select_lvwm_words

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        picked.append(out)
        return out

    monkeypatch.setattr(module_lib, "select_lvwm_words", spy)
    torch.manual_seed(0)
    module = SNPS3Module(
        config=make_config(num_answers=0),
        task="pretrain",
        with_moco=False,
        use_mlm=False,
        use_itm=False,
        use_l2=False,
    )
    batch = _hand_batch([[101, 103, 7, 102, 0, 0], [101, 8, 103, 9, 102, 0]], significant=True)
    module.pretrain_losses(batch, train=False)
    assert picked[0][0].tolist() == [2, 2, 2]
    assert set(picked[0][1].tolist()) <= {1, 3}


@pytest.mark.parametrize("stage", ["after", "before"])
def test_lvwm_in_batch_r1_monitor(make_config, stage):
    """Spec §5: pre-training also monitors the in-batch R@1 of the LVWM word-clip matrix. Reference: the words are
    the three non-special tokens of each caption (any order: logsumexp over words ignores it), S[i, j, c] =
    logsumexp_k(w_ik · v_jc), a caption's score for a video = logsumexp over the clips, R@1 = arg-max on the
    diagonal."""
    from snps3.module import SNPS3Module

    torch.manual_seed(0)
    module = SNPS3Module(
        config=make_config(num_answers=0),
        task="pretrain",
        with_moco=False,
        use_mlm=False,
        use_itm=False,
        use_l2=False,
        lvwm_stage=stage,
    ).eval()
    ids = [[101, 5 + 3 * b, 6 + 3 * b, 7 + 3 * b, 102, 0] for b in range(6)]
    batch = _hand_batch(ids, significant=True)
    with torch.no_grad():
        losses, mon = module.pretrain_losses(batch, train=False)
        _, per_item = module.pretrain_losses(batch, train=False, reduction="none")
        m = module.model
        raw, attn = batch["input_ids"], batch["attention_mask"]
        if stage == "after":
            feats = m.encode_text(raw, attn).hidden
        else:
            feats = m.bert.embeddings(input_ids=raw, token_type_ids=torch.zeros_like(raw))
        words = feats[:, 1:4]  # (B, 3, D)
        v = m.clip_embed(m.encode_visual(batch["frames"]))  # (B, T, D)
    s = torch.zeros(6, 6)
    for i in range(6):
        for j in range(6):
            per_clip = [torch.logsumexp(words[i] @ v[j, c], 0) for c in range(v.shape[1])]
            s[i, j] = torch.logsumexp(torch.stack(per_clip), 0)
    hits = (s.argmax(1) == torch.arange(6)).float()
    assert "lvwm" in losses and "r1_lvwm" in module.pretrain_term_names()[1]
    torch.testing.assert_close(mon["r1_lvwm"], hits.mean())
    torch.testing.assert_close(per_item["r1_lvwm"][0], hits)


def test_epoch_step_decay_applies_from_the_first_step_of_the_epoch(synthetic_root, tmp_path):
    """Spec §3.7 (WebVid: x0.1 after epoch 5): with ``lr_step_unit: epoch`` and ``lr_steps: [1]`` every optimiser
    step of epoch 1 onwards, its first step included, runs at 0.1·lr; epoch 0 at lr."""
    import lightning.pytorch as pl

    cli = main(
        [
            *base(synthetic_root, tmp_path),
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "0",
            "--model.lr_steps",
            "[1]",
            "--model.lr_step_unit",
            "epoch",
            "--model.warmup_iterations",
            "0",
        ],
        run=False,
    )
    seen = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))

    cli.trainer.callbacks.append(RecordLR())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lr = cli.model.hparams.lr
    assert [e for e, _ in seen] == [0, 0, 1, 1, 2, 2]
    for epoch, value in seen:
        assert value == pytest.approx(lr if epoch == 0 else 0.1 * lr), seen
