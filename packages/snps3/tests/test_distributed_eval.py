"""Evaluation under DDP equals one process (2 gloo processes): QA accuracy and the pre-training losses count an item
the padding DistributedSampler repeats once, retrieval de-duplicates by index, and a rank without any evaluation item
takes part in the epoch-end gathers with nothing instead of leaving the other rank waiting."""

import sys
from pathlib import Path

import torch
from mmzoo.testing import run_distributed

sys.path.insert(0, str(Path(__file__).parent))
import snps3_dist_helpers as helpers  # noqa: E402


def test_ddp_evaluation_equals_one_process(synthetic_root):
    root = str(synthetic_root)
    single = {task: helpers.evaluate(root, task) for task in helpers.EVALUATED_TASKS}
    assert len(single["qa"]) == 2 and "test/l2_simi_t2v-R@1" in single["retrieval"]
    assert {"test/loss", "test/loss_l1", "test/loss_mlm_cross", "test/loss_itm", "test/mlm_acc"} <= set(
        single["pretrain"]
    )
    # the padded repeat (item 0) is not a typical item: counting it twice would move the loss
    first = helpers.evaluate(root, "pretrain", [0])["test/loss"]
    assert abs(first - single["pretrain"]["test/loss"]) > 1e-3
    for got in run_distributed(helpers.two_rank_evaluation, world_size=2, args=(root,)):
        for (task, case), logged in got.items():
            assert set(logged) == set(single[task]), (task, case)
            for key, value in single[task].items():
                torch.testing.assert_close(logged[key], value, msg=f"{task} {case} {key}")
