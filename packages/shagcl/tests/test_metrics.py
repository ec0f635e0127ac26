import torch

from shagcl.metrics import SGRecall, sgg_recall, sort_relations, write_per_predicate_report

BOXES3 = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0], [40.0, 40.0, 49.0, 49.0]])
PAIRS3 = torch.tensor([[0, 1], [1, 2], [0, 2], [1, 0], [2, 0], [2, 1]])
PROBS3 = torch.tensor(
    [[0.1, 0.7, 0.05, 0.15], [0.1, 0.0, 0.3, 0.6], [0.3, 0.5, 0.1, 0.1]] + [[0.97, 0.01, 0.01, 0.01]] * 3
)


def _images(zero_shot=False):
    img1 = dict(
        gt_boxes=BOXES3,
        gt_labels=torch.tensor([1, 2, 3]),
        gt_rels=torch.tensor([[0, 1, 1], [1, 2, 2], [0, 2, 1]]),
        pred_boxes=BOXES3,
        pred_labels=torch.tensor([1, 2, 3]),
        obj_scores=torch.ones(3),
        pair_idx=PAIRS3,
        rel_probs=PROBS3,
        zero_shot=torch.tensor([False, False, True]) if zero_shot else None,
    )
    img2 = dict(
        gt_boxes=BOXES3[:2],
        gt_labels=torch.tensor([1, 1]),
        gt_rels=torch.tensor([[0, 1, 1]]),
        pred_boxes=BOXES3[:2],
        pred_labels=torch.tensor([1, 1]),
        obj_scores=torch.ones(2),
        pair_idx=PAIRS3[[0, 3]],
        rel_probs=PROBS3[[0, 3]],
    )
    empty = dict(img2, gt_rels=torch.zeros(0, 3, dtype=torch.long))  # no GT relation: skipped
    return [img1, img2, empty]


def test_hand_worked_recall():
    out = sgg_recall(_images(zero_shot=True), num_predicates=4, ks=(1, 4))
    torch.testing.assert_close(out["R@1"], torch.tensor(2 / 3))  # (1/3 + 1) / 2
    torch.testing.assert_close(out["R@4"], torch.tensor(5 / 6))  # (2/3 + 1) / 2
    # per predicate: p1 image-averaged (0.5, 1) @1, (1, 1) @4; p2 0; p3 absent from the test set -> 0
    torch.testing.assert_close(out["mR@1"], torch.tensor(0.75 / 3))
    torch.testing.assert_close(out["mR@4"], torch.tensor(1 / 3))
    torch.testing.assert_close(out["per_predicate"], torch.tensor([[0.75, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    # no graph constraint: pair (1, 2) contributes p3 (wrong) and p2 (right) within the top 4
    torch.testing.assert_close(out["ng-R@4"], torch.tensor(1.0))
    torch.testing.assert_close(out["ng-R@1"], out["R@1"])
    torch.testing.assert_close(out["ng-mR@4"], torch.tensor(2 / 3))
    torch.testing.assert_close(out["zR@1"], torch.tensor(0.0))
    torch.testing.assert_close(out["zR@4"], torch.tensor(1.0))


def test_metric_class_matches_function_over_batches():
    images = _images()
    metric = SGRecall(num_predicates=4, ks=(1, 4))
    metric.update(images[:1])
    metric.update(images[1:])
    ref = sgg_recall(images, num_predicates=4, ks=(1, 4))
    got = metric.compute()
    for key in ("R@1", "R@4", "mR@1", "mR@4", "ng-R@4", "ng-mR@1"):
        torch.testing.assert_close(got[key], ref[key])


def test_iou_threshold_boundary():
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 29.0, 29.0]])
    for pred_x2, expected in ((4.0, 1.0), (3.0, 0.0)):  # '+1' IoU 50/100 = 0.5 matches, 40/100 does not
        pred = gt.clone()
        pred[0, 2] = pred_x2
        img = dict(
            gt_boxes=gt,
            gt_labels=torch.tensor([1, 2]),
            gt_rels=torch.tensor([[0, 1, 1]]),
            pred_boxes=pred,
            pred_labels=torch.tensor([1, 2]),
            obj_scores=torch.ones(2),
            pair_idx=torch.tensor([[0, 1]]),
            rel_probs=torch.tensor([[0.2, 0.8]]),
        )
        assert float(sgg_recall([img], 2, ks=(1,))["R@1"]) == expected


def test_sorting_never_picks_background(tmp_path):
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7]])
    order, cls, score = sort_relations(probs, torch.tensor([1.0, 0.5]), torch.tensor([[0, 1], [1, 0]]))
    assert order.tolist() == [1, 0] and (cls >= 1).all()
    torch.testing.assert_close(score, torch.tensor([0.35, 0.025]))
    csv_path, png_path = write_per_predicate_report(torch.rand(2, 3), ["bg", "on", "has"], (20, 50, 100), tmp_path)
    assert csv_path.read_text().splitlines()[1].startswith("1,on,") and png_path.stat().st_size > 0


def test_two_processes_count_padded_duplicates_once():
    """An odd-size test set on 2 gloo processes (the DistributedSampler repeats image 0) equals 1 process."""
    import shagcl_dist_helpers as h
    from mmzoo.testing import run_distributed

    images = h.random_images()
    ref = sgg_recall(images, h.NUM_PREDICATES, h.KS)
    padded = sgg_recall(images + images[:1], h.NUM_PREDICATES, h.KS)
    assert float(padded["R@1"]) != float(ref["R@1"])  # the duplicate would change the numbers
    one = SGRecall(h.NUM_PREDICATES, h.KS)
    one.update(images + images[:1])  # duplicates inside one process are merged as well
    outs = run_distributed(h.evaluate_rank, world_size=2)
    for got in (*outs, one.compute()):
        for key in ("R@1", "R@3", "mR@1", "mR@3", "ng-R@3", "ng-mR@3"):
            torch.testing.assert_close(got[key], ref[key])
        torch.testing.assert_close(got["per_predicate"], ref["per_predicate"])
