"""The shipped Koubei configs run end to end (``fit`` then ``test`` from the saved checkpoint) on a tiny data set
in the spec §4.2 layout as Koubei-style data would be: Chinese labels and descriptions, ConceptNet Numberbatch text
(gzipped, ``/c/zh/`` URIs) for ``data.kg_lang: zh``, 6 level-1 and 320 level-2 labels, N_f = 12 keyframes and
N_r = 10 regions as the configs set them.

Overridden: the data paths, the feature and KG widths with ``model.config.dim`` (tiny, as tiny.yaml; the KG and
features here are random), batch sizes, workers and the trainer limits (one step, cpu, no logger). Every other key
is the shipped one.

Representatives (the configs within a group differ only in model switches of the non-temporal stream):

- ``koubei``: both streams, S1 evaluated, S2 logged as ``s2_*``;
- ``koubei_mmbt``: S1 alone with ``data.kg_path: null`` (no KG, no keywords);
- ``koubei_s2``: S2 alone; stands for ``koubei_s2_wo_hier`` (``nt_beta1``), ``koubei_s2_wo_know``
  (``nt_fusion: mean``), ``koubei_s2_wo_know_w_temp`` (``nt_fusion: transformer``) and ``koubei_s2_wo_kw``
  (``keyword_source: random_shared``).

Every third annotation has no ``keywords`` key, so its keywords are extracted from the description with the shipped
``tokenizer: jieba`` (the ``zh`` extra; installed with the test dependencies).
"""

import json
import math

import numpy as np
import pytest
import torch
from mmzoo.testing import QUIET_CPU_RUN

from kevsr.cli import main
from kevsr.synthetic import write_features, write_kg_file

NUM_FRAMES, NUM_REGIONS = 12, 10  # the configs' N_f and N_r
DIMS = {"f2d_dim": 16, "f3d_dim": 8, "text_dim": 12, "region_dim": 16}
KG_DIM = 8
LEVEL1 = ["美食", "休闲娱乐", "丽人", "运动健身", "酒店", "购物"]  # six level-1 labels, as Koubei's


def _write_koubei_like(root, kg_path, sizes=(6, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    level2 = [{"name": f"{LEVEL1[i % 6]}{i:03d}", "parent": LEVEL1[i % 6]} for i in range(320)]
    level2[0] = {"name": "火锅", "parent": "美食", "kg": "/c/zh/火锅"}
    level2[1] = {"name": "电影院", "parent": "休闲娱乐", "kg": "电影院"}
    level2[2] = {"name": "面馆", "parent": "美食", "kg": None}
    hierarchy = {"level1": [{"name": n, "kg": n} for n in LEVEL1], "level2": level2}
    root.mkdir(parents=True, exist_ok=True)
    (root / "hierarchy.json").write_text(json.dumps(hierarchy, ensure_ascii=False), encoding="utf-8")
    terms = [*LEVEL1, "火锅", "电影院", "麻辣", "朋友", "电影", "票"]
    write_kg_file(kg_path, {t: rng.standard_normal(KG_DIM).astype(np.float32) for t in terms}, uri_lang="zh")
    paths = [[["美食", "火锅"]], [["美食", "面馆"], ["休闲娱乐", "电影院"]], [["休闲娱乐", None]]]
    keywords = [["麻辣", "火锅", "朋友"], ["电影", "票", "未知词"], None]  # None: extracted by jieba
    for split, n in zip(("train", "val", "test"), sizes):
        rows, items = [], {}
        for i in range(n):
            vid = f"{split}{i:03d}"
            row = {"video_id": vid, "text": "和朋友一起吃麻辣火锅", "label_paths": paths[i % 3]}
            if keywords[i % 3] is not None:
                row["keywords"] = keywords[i % 3]
            rows.append(row)
            mask = (np.arange(NUM_REGIONS)[None] < rng.integers(0, NUM_REGIONS + 1, NUM_FRAMES)[:, None]).astype(
                np.uint8
            )
            items[vid] = {
                "f2d": rng.standard_normal((NUM_FRAMES, DIMS["f2d_dim"])).astype(np.float16),
                "f3d": rng.standard_normal((NUM_FRAMES, DIMS["f3d_dim"])).astype(np.float32),
                "text": rng.standard_normal(DIMS["text_dim"]).astype(np.float32),
                "regions": rng.standard_normal((NUM_FRAMES, NUM_REGIONS, DIMS["region_dim"])).astype(np.float32),
                "region_mask": mask,
                "region_boxes": rng.uniform(0, 224, (NUM_FRAMES, NUM_REGIONS, 4)).astype(np.float32),
            }
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        write_features(root, split, items, "h5")


def _overrides(tmp_path, config):
    args = ["--config", config, "--data.data_root", str(tmp_path / "koubei")]
    if config != "koubei_mmbt":
        args += ["--data.kg_path", str(tmp_path / "numberbatch-19.08.txt.gz")]
    args += ["--data.kg_dim", str(KG_DIM), "--model.config.kg_dim", str(KG_DIM), "--model.config.dim", "48"]
    for key, value in DIMS.items():
        args += [f"--model.config.{key}", str(value)]
    return [
        *args,
        *("--data.batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "2"),
        *QUIET_CPU_RUN,
        *("--trainer.default_root_dir", str(tmp_path / config)),
    ]


@pytest.fixture(scope="module")
def koubei_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shipped")
    _write_koubei_like(tmp / "koubei", tmp / "numberbatch-19.08.txt.gz")
    return tmp


@pytest.mark.parametrize(("config", "s2_logged"), [("koubei", True), ("koubei_mmbt", False), ("koubei_s2", False)])
def test_shipped_koubei_config_fits_and_tests(koubei_dir, config, s2_logged):
    args = _overrides(koubei_dir, config)
    limits = ["--trainer.max_steps", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    cli = main(args=["fit", *args, *limits])
    kg = cli.datamodule.kg
    if config == "koubei_mmbt":
        assert kg is None
    else:  # /c/zh/ rows kept for kg_lang: zh, label and keyword terms found
        assert "火锅" in kg and "电影院" in kg and "麻辣" in kg
        train = cli.datamodule.datasets["train"]
        assert train.keywords[1] == ["电影", "票"]  # listed; 未知词 is not in the KG
        assert set(train.keywords[2]) == {"朋友", "麻辣", "火锅"}  # jieba's words of the description found in the KG
    m = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    assert math.isfinite(float(m["train/loss"]))
    assert "val/f1_l2" in m and torch.isfinite(m["val/f1_l2"])  # the early-stopping monitor of the configs
    ckpt = koubei_dir / config / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    cli = main(args=["test", *args, "--ckpt_path", str(ckpt)])
    m = cli.trainer.callback_metrics
    for key in ("f1_l1", "f1_l2", "f1_all", "rp90_l1", "rp90_l2", "rp90_all"):
        assert f"test/{key}" in m and torch.isfinite(m[f"test/{key}"]), key
    assert ("test/s2_f1_l2" in m) == s2_logged
    assert len(cli.datamodule.hierarchy.level2) == cli.model.config.num_level2 == 320
