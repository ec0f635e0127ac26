"""``fit --ckpt_path last.ckpt`` continues the method: the restored weights and data-derived buffers are not
overwritten by ``setup`` (which writes the hierarchy and the label KG vectors before the checkpoint is restored),
and the resumed run ends in the same method state as an uninterrupted one.

The batch order (shuffle) and dropout come from the global RNG, which a resume does not restore, so the parameters
of the two runs differ after the resumed epoch and are not compared.
"""

import torch
from mmzoo.testing import assert_loads_without_data, assert_started_from_checkpoint, record_state_at_train_start

from kevsr.cli import main
from kevsr.module import KEVSRModule


def _fit(tmp_path, root, epochs, ckpt=None):
    args = [
        "fit",
        "--config",
        "tiny",
        "--data.data_root",
        str(tmp_path / "data"),
        "--data.kg_path",
        str(tmp_path / "data" / "kg.txt.gz"),
        "--trainer.default_root_dir",
        str(tmp_path / root),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        # learnable label and keyword KG vectors: setup() writes into both before the checkpoint is restored
        "--model.config.freeze_label_kg",
        "false",
        "--model.config.freeze_keyword_kg",
        "false",
    ]
    return main(args=args + (["--ckpt_path", str(ckpt)] if ckpt else []))


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
