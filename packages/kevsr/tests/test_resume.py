"""``fit --ckpt_path last.ckpt`` continues the method: the restored weights and data-derived buffers are not
overwritten by ``setup`` (which writes the hierarchy and the label KG vectors before the checkpoint is restored),
and the resumed run ends in the same method state as an uninterrupted one.

The batch order (shuffle) and dropout come from the global RNG, which a resume does not restore, so the parameters
of the two runs differ after the resumed epoch and are not compared.
"""

import torch
from mmzoo.testing import assert_loads_without_data, assert_started_from_checkpoint, record_state_at_train_start

from kevsr.cli import main
from kevsr.models import KeywordOffsets
from kevsr.module import KEVSRModule


def _run(tmp_path, command, root, ckpt=None, data="data", fit_args=()):
    args = [
        command,
        "--config",
        "tiny",
        "--data.data_root",
        str(tmp_path / data),
        "--data.kg_path",
        str(tmp_path / data / "kg.txt.gz"),
        "--trainer.default_root_dir",
        str(tmp_path / root),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        # learnable label and keyword KG vectors: setup() writes into both before the checkpoint is restored
        "--model.config.freeze_label_kg",
        "false",
        "--model.config.freeze_keyword_kg",
        "false",
        *fit_args,
    ]
    return main(args=args + (["--ckpt_path", str(ckpt)] if ckpt else []))


def _fit(tmp_path, root, epochs, ckpt=None, data="data"):
    fit_args = ("--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "2")
    return _run(tmp_path, "fit", root, ckpt, data, fit_args)


def test_resume_keeps_restored_state_and_schedule(tmp_path, monkeypatch):
    at_train_start = record_state_at_train_start(monkeypatch, KEVSRModule)
    full = _fit(tmp_path, "full", 2)
    _fit(tmp_path, "part", 1)
    ckpt = tmp_path / "part" / "checkpoints" / "last.ckpt"
    resumed = _fit(tmp_path, "resumed", 2, ckpt=ckpt)

    # the resumed run starts training from the checkpoint's weights and buffers, untouched by setup()
    assert_started_from_checkpoint(at_train_start, ckpt)
    start = at_train_start[-1]
    assert start["model.nontemporal.keyword_delta.delta"].abs().sum() > 0  # trained offsets, not the zero init

    a, b = full.trainer, resumed.trainer
    assert (a.current_epoch, a.global_step) == (b.current_epoch, b.global_step)
    sa, sb = a.lr_scheduler_configs[0].scheduler, b.lr_scheduler_configs[0].scheduler
    assert sa.last_epoch == sb.last_epoch and sa.get_last_lr() == sb.get_last_lr()  # the warm-up continues
    ma, mb = full.model.model, resumed.model.model
    assert torch.equal(ma.parent_index, mb.parent_index)
    for head in ("head1", "head2"):
        ha, hb = getattr(ma.nontemporal, head), getattr(mb.nontemporal, head)
        assert torch.equal(ha.label_kg, hb.label_kg) and torch.equal(ha.has_kg, hb.has_kg)
    # from Python, the checkpoint loads without a datamodule and validates as `validate --ckpt_path` does
    assert_loads_without_data(KEVSRModule, tmp_path / "full" / "checkpoints" / "last.ckpt", full, limit_val_batches=2)


def _data_with_more_keywords(tmp_path, name):
    """The tiny data set (``generate: random``, seed 0) plus two KG terms that sort before and among the others
    ("arcade", "dumpling") and videos whose keywords use them: a vocabulary both extended and re-indexed."""
    import json

    from kevsr.knowledge import KnowledgeEmbeddings
    from kevsr.synthetic import write_kg_file, write_random_dataset

    root = tmp_path / name
    write_random_dataset(root, root / "kg.txt.gz", seed=0)
    kg = KnowledgeEmbeddings.load(str(root / "kg.txt.gz"))
    vectors = {t: v.numpy() for t, v in kg.vectors.items()}
    g = torch.Generator().manual_seed(1)
    vectors.update({t: torch.randn(kg.dim, generator=g).numpy() for t in ("arcade", "dumpling")})
    write_kg_file(root / "kg.txt.gz", vectors)
    for split in ("train", "val", "test"):
        path = root / "annotations" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        rows[0]["keywords"] = ["arcade", "dumpling", "cinema"]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return name


def test_keyword_offsets_follow_their_terms_when_the_data_change(tmp_path):
    """freeze_keyword_kg: false. A checkpoint saves its keyword vocabulary; tested (and resumed) on data whose KG
    rows differ, every trained term keeps its offset, new terms start at 0, and resuming moves AdamW's moments the
    same way (with the old row count the first step would fail on a shape mismatch)."""
    _fit(tmp_path, "a", 1)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    prefix = "model.nontemporal.keyword_delta."
    trained_vocab = KeywordOffsets.saved_vocabulary(state, prefix)
    trained = dict(zip(trained_vocab, state[prefix + "delta"], strict=True))
    assert sum(bool(v.abs().sum()) for v in trained.values()) > 1  # several terms have trained offsets

    data_b = _data_with_more_keywords(tmp_path, "data_b")
    cli = _run(tmp_path, "test", "b_test", ckpt=ckpt, data=data_b)
    offsets = cli.model.model.nontemporal.keyword_delta
    vocab = cli.datamodule.keyword_vocab
    assert (
        offsets.vocabulary == vocab
        and vocab[0] == "arcade"
        and set(vocab)
        == set(trained_vocab)
        | {
            "arcade",
            "dumpling",
        }
    )
    for term, row in zip(vocab, offsets.delta.detach(), strict=True):
        torch.testing.assert_close(row, trained.get(term, torch.zeros_like(row)), msg=term)

    resumed = _fit(tmp_path, "b_fit", 2, ckpt=ckpt, data=data_b)
    assert resumed.trainer.global_step == 4
    assert resumed.model.model.nontemporal.keyword_delta.vocabulary == vocab
