"""The training state under the shipped Koubei configs at their real sizes (d = 768, ResNet 2048 / I3D 1024 / BERT
768 / Faster R-CNN 2048 features, 300-d Numberbatch KG, 6 / 320 labels, N_f = 12, N_r = 10, batch 32, 30 epochs),
looked at inside the first training step of ``fit`` (after Lightning's sanity validation):

* every module is in train mode (dropout on), including a pre-trained BERT S1 encoder loaded through
  ``temporal_init_from_bert`` (``from_pretrained`` returns eval mode);
* every parameter trains and sits in exactly one AdamW group with the config's lr and weight decay; the KG vectors
  of matched labels (``freeze_label_kg: true``) are a buffer and stay as loaded;
* the learning rate follows the spec §3.7 recipe: linear warm-up over 5% of the optimizer steps that the real
  data size, batch, epochs and ``accumulate_grad_batches`` give, then constant;
* the early-stopping monitor of the configs is a key the module logs.

The BERT is a random one saved with ``save_pretrained`` at BERT-base width (hidden 768, 12 heads, FFN 3072) with
two layers instead of twelve: the properties checked do not depend on the depth.
"""

import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from mmzoo.cli import build
from mmzoo.testing import IN_PROCESS_LOADERS, QUIET_CPU_RUN, FirstStepProbe

from kevsr.synthetic import write_features, write_kg_file

NUM_FRAMES, NUM_REGIONS, KG_DIM = 12, 10, 300
DIMS = {"f2d": 2048, "f3d": 1024, "text": 768, "regions": 2048}
LEVEL1 = ["美食", "休闲娱乐", "丽人", "运动健身", "酒店", "购物"]
NUM_TRAIN = 40  # two batches of 32 per epoch (the second incomplete)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(25)]


def _write_data(root, kg_path, seed=0):
    rng = np.random.default_rng(seed)
    level2 = [{"name": f"{LEVEL1[i % 6]}{i:03d}", "parent": LEVEL1[i % 6]} for i in range(320)]
    level2[0] = {"name": "火锅", "parent": "美食", "kg": "火锅"}
    hierarchy = {"level1": [{"name": n, "kg": n} for n in LEVEL1], "level2": level2}
    root.mkdir(parents=True, exist_ok=True)
    (root / "hierarchy.json").write_text(json.dumps(hierarchy, ensure_ascii=False), encoding="utf-8")
    terms = [*LEVEL1[:4], "火锅", "麻辣", "朋友"]  # two level-1 labels without a KG vector
    write_kg_file(kg_path, {t: rng.standard_normal(KG_DIM).astype(np.float32) for t in terms}, uri_lang="zh")
    for split, n in (("train", NUM_TRAIN), ("val", 4), ("test", 4)):
        rows, items = [], {}
        for i in range(n):
            vid = f"{split}{i:03d}"
            label = level2[(i * 7) % 320]
            paths = [[label["parent"], label["name"]]]
            rows.append(
                {"video_id": vid, "text": "麻辣火锅", "label_paths": paths, "keywords": ["麻辣", "火锅", "朋友"]}
            )
            items[vid] = {
                "f2d": rng.standard_normal((NUM_FRAMES, DIMS["f2d"])).astype(np.float32),
                "f3d": rng.standard_normal((NUM_FRAMES, DIMS["f3d"])).astype(np.float32),
                "text": rng.standard_normal(DIMS["text"]).astype(np.float32),
                "regions": rng.standard_normal((NUM_FRAMES, NUM_REGIONS, DIMS["regions"])).astype(np.float32),
                "region_mask": np.ones((NUM_FRAMES, NUM_REGIONS), dtype=np.uint8),
            }
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        write_features(root, split, items, "h5")


def _write_bert(folder):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512)  # fmt: skip
    BertModel(cfg).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_config")
    _write_data(tmp / "koubei", tmp / "numberbatch.txt.gz")
    _write_bert(tmp / "bert")
    return tmp


class _Probe(FirstStepProbe):
    """The training state at the first training batch, with the schedule's factors and the label embeddings before
    and after the step."""

    def extra(self, trainer, module):
        nt = module.model.nontemporal
        labels = (
            {
                lvl: (h.label_embeddings().detach().clone(), h.has_kg.clone())
                for lvl, h in (("1", nt.head1), ("2", nt.head2))
            }
            if nt
            else {}
        )
        sched = trainer.lr_scheduler_configs[0]
        return {
            "lr_at": [sched.scheduler.lr_lambdas[0](s) for s in range(400)],
            "interval": sched.interval,
            "labels": labels,
        }

    def after_step(self, trainer, module):
        nt = module.model.nontemporal
        return {
            "labels_after": {"1": nt.head1.label_embeddings().detach(), "2": nt.head2.label_embeddings().detach()}
            if nt
            else {}
        }


def _fit(data_dir, config, *extra):
    root = data_dir / config
    overrides = [
        "--data.data_root", str(data_dir / "koubei"), "--data.kg_path", str(data_dir / "numberbatch.txt.gz"),
        *IN_PROCESS_LOADERS, *QUIET_CPU_RUN, "--trainer.default_root_dir", str(root),
        "--trainer.num_sanity_val_steps", "1", "--trainer.limit_val_batches", "1",
        *extra,
    ]  # fmt: skip
    if config == "koubei_mmbt":
        overrides[2:4] = ["--data.kg_path", "null"]
    model, data, trainer = build("kevsr", config, *overrides)
    probe = _Probe()
    # no checkpoint files: the state is looked at in memory
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)] + [probe]
    trainer.fit(model, datamodule=data)
    return model, trainer, probe.seen


@pytest.mark.parametrize(
    ("config", "bert", "accumulate"),
    [("koubei", True, 1), ("koubei_mmbt", True, 2), ("koubei_s2", False, 1)],
)
def test_real_config_training_state(data_dir, config, bert, accumulate):
    extra = ["--model.config.temporal_init_from_bert", str(data_dir / "bert")] if bert else []
    if accumulate > 1:
        extra += ["--trainer.accumulate_grad_batches", str(accumulate)]
    model, trainer, seen = _fit(data_dir, config, *extra)
    assert seen and not seen["sanity_checking"]

    # 1. modes: nothing is frozen in KEVSR, so every module trains (BERT's dropout included)
    assert seen["not_training"] == []
    if bert:
        encoder = model.model.temporal.encoder
        assert encoder.config.hidden_dropout_prob > 0 and encoder.training
    assert model.config.dropout == 0.5

    # 2. every parameter trains; matched label KG vectors are frozen (a buffer), as freeze_label_kg: true says
    assert seen["frozen"] == []
    for level, (before, has_kg) in seen["labels"].items():
        after = seen["labels_after"][level]
        assert has_kg.any() and (~has_kg).any()
        torch.testing.assert_close(after[has_kg], before[has_kg], rtol=0, atol=0, msg=f"level {level} KG rows")
        assert not torch.equal(after[~has_kg], before[~has_kg]), f"level {level} learned rows did not train"

    # 3. one AdamW group with every parameter once, lr 1e-4 and weight decay 0.01 (spec §3.7 reconstruction)
    (group,) = seen["groups"]
    assert len(group[2]) == len(set(group[2])) and set(group[2]) == seen["trainable"]
    assert seen["initial_lr"] == [pytest.approx(1e-4)] and group[1] == pytest.approx(0.01)
    # warm-up over 5% of the optimizer steps of 30 epochs of ceil(40 / 32) = 2 batches, then constant
    steps_per_epoch = math.ceil(math.ceil(NUM_TRAIN / 32) / accumulate)
    total = 30 * steps_per_epoch
    assert seen["total"] == total and seen["interval"] == "step"
    warmup = max(int(0.05 * total), 1)
    expected = [min(1.0, (s + 1) / warmup) for s in range(400)]
    assert seen["lr_at"] == pytest.approx(expected)
    assert group[0] == pytest.approx(1e-4 * expected[0])  # the lr of the first step

    # 4. the early-stopping monitor of the config (patience 5, max) is a key the module logs
    (stopper,) = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    assert (stopper.monitor, stopper.mode, stopper.patience) == ("val/f1_l2", "max", 5)
    assert trainer.gradient_clip_val is None and trainer.precision == "32-true"
    trainer.validate(model, datamodule=trainer.datamodule, verbose=False)
    assert stopper.monitor in trainer.callback_metrics
