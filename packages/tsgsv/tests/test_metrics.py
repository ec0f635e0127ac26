from fractions import Fraction

import pytest
import torch

from tsgsv.metrics import (
    GroundingEvalConfig,
    StreamingGroundingMetrics,
    average_precision,
    calibrated_average_precision,
    downsample_scores,
    evaluate_annotation,
    frame_labels,
    median_filter3,
    proposal_grid,
    recall_hits,
    temporal_nms,
)


def test_proposal_counts():
    assert len(proposal_grid(10, 4)) == 53
    assert len(proposal_grid(128, 4)) == 1388
    g2 = proposal_grid(40, 2)
    assert set((g2[:, 1] - g2[:, 0]).tolist()) == {0, 1, 2, 3, 5, 7, 11, 15, 23, 31}
    assert (proposal_grid(200, 4, max_proposal_len=20)[:, 1] - proposal_grid(200, 4, 20)[:, 0]).max() <= 20


def test_median_filter_and_downsampling():
    x = torch.tensor([[5.0], [1.0], [2.0], [9.0], [3.0]])
    torch.testing.assert_close(median_filter3(x)[:, 0], torch.tensor([1.0, 2.0, 2.0, 3.0, 3.0]))
    cfg = GroundingEvalConfig(min_num_segments=16, downsample_stride=2)
    short = torch.rand(16, 3)
    assert torch.equal(downsample_scores(short, cfg), short)  # untouched when T <= min_num_segments
    long = torch.rand(50, 3)
    out = downsample_scores(long, cfg)
    assert out.shape == (25, 3)
    idx = torch.tensor([int(i * 49 / 24) for i in range(25)])  # round_down(linspace(0, 49, 25)), exact here
    torch.testing.assert_close(out, median_filter3(long)[idx])
    assert downsample_scores(torch.rand(20, 3), cfg).shape == (16, 3)  # max(16, 20 // 2)


def test_downsampling_picks_the_official_rows():
    """Spec §3.9 step 2 as the official evaluator computes it: numpy's linspace truncated to int. For T' = 556,
    n_seg = 139 the step is 555/138, and 92·555/138 = 370 exactly, but the official linspace gives 369.99999999999994
    → row 369 (torch.linspace gives 370.0 → row 370)."""
    cfg = GroundingEvalConfig(min_num_segments=128, downsample_stride=4, median_filter=False)
    rows = torch.arange(556, dtype=torch.float32)[:, None].expand(-1, 3)  # row t holds t
    out = downsample_scores(rows, cfg)[:, 0].long()
    assert len(out) == 139 and out[0] == 0 and out[-1] == 555
    step = 555 / 138
    assert out.tolist() == [int(i * step) if i < 138 else 555 for i in range(139)]  # float64 i·step, truncated
    assert out[92] == 369 and out[91] == 365 and out[93] == 374


def test_nms_keeps_top_non_overlapping():
    seg = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 9.0], [40.0, 50.0]])
    score = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert temporal_nms(seg, score, 0.5, 5).tolist() == [0, 2, 4]
    assert temporal_nms(seg, score, 0.5, 2).tolist() == [0, 2]


def test_ap_cap_examples():
    labels = torch.tensor([1, 0, 1, 0, 0, 0])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert abs(average_precision(scores, labels) - 0.8333) < 1e-4
    assert abs(calibrated_average_precision(scores, labels) - 0.9) < 1e-3
    zeros = torch.zeros(6, dtype=torch.long)
    assert average_precision(scores, zeros) == 1.0 and calibrated_average_precision(scores, zeros) == 1.0


def _cap_exact(ranked_labels: list[int]) -> Fraction:
    """cAP in exact rational arithmetic for labels already in descending-score order (spec §5, no ε)."""
    pos = sum(ranked_labels)
    w = Fraction(len(ranked_labels) - pos, pos)
    tp = fp = 0
    total = Fraction(0)
    for y in ranked_labels:
        tp, fp = tp + y, fp + (1 - y)
        if y:
            total += Fraction(tp) / (tp + fp / w)
    return total / pos


@pytest.mark.parametrize("negative_rank", [0, 3, 250])
def test_cap_with_almost_only_positives_matches_exact_value(negative_rank):
    # 1 negative among 500 frames: w = 1/499, the regime of ρ = 1 label extension on long moments. The ε of the
    # denominators must not be felt here (the official evaluator uses the float64 machine epsilon).
    ranked = [1] * 500
    ranked[negative_rank] = 0
    scores = torch.linspace(1.0, 0.0, 500, dtype=torch.float64)
    value = calibrated_average_precision(scores, torch.tensor(ranked))
    assert abs(value - float(_cap_exact(ranked))) < 1e-9
    assert abs(calibrated_average_precision(torch.tensor([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]),
                                            torch.tensor([1, 0, 1, 0, 0, 0])) - 0.9) < 1e-12  # fmt: skip


def test_recall_strict_iou():
    moments = torch.tensor([[0.0, 2.0, 0.9], [0.0, 10.0, 0.8]])
    hits = recall_hits(moments, (0.0, 4.0), [1, 2], [0.5, 0.4])
    # IoU of [0,2] with [0,4] is exactly 0.5 -> not > 0.5, but > 0.4; [0,10] has IoU 0.4 -> never counts
    assert hits.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_strict_iou_key_decides_ties_at_the_threshold():
    # streamed scores whose best proposal is [0, 2] s of a 10-s video ... and a target [0, 4]: IoU exactly 0.5
    cfg_strict = GroundingEvalConfig(recall_at=[1], iou_thresholds=[0.5], min_num_segments=16, group_size=2)
    cfg_loose = GroundingEvalConfig(recall_at=[1], iou_thresholds=[0.5], min_num_segments=16, group_size=2,
                                    strict_iou=False)  # fmt: skip
    scores = torch.full((11, 3), 0.01)
    scores[0, 0] = scores[2, 1] = 0.99  # p_start peaks at step 0, p_end at step 2: the proposal [0 s, 2 s]
    strict = evaluate_annotation(scores, 10.0, (0.0, 4.0), 11, cfg_strict)["hits"]
    loose = evaluate_annotation(scores, 10.0, (0.0, 4.0), 11, cfg_loose)["hits"]
    assert strict.tolist() == [[0.0]] and loose.tolist() == [[1.0]]  # IoU 0.5: not > 0.5, but >= 0.5
    moments = torch.tensor([[0.0, 2.0, 0.9]])
    assert recall_hits(moments, (0.0, 4.0), [1], [0.5], strict=False).tolist() == [[1.0]]


def test_frame_labels_extension():
    lab = frame_labels(2.0, 4.0, 10.0, 11, extension=0.0)  # s* = 2, e* = 4
    assert lab.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    lab = frame_labels(2.0, 4.0, 10.0, 11, extension=1.0)  # [0, 6]
    assert lab.tolist() == [1] * 7 + [0] * 4
    assert frame_labels(2.0, 4.0, 10.0, 11, 0.0, chunk_interval=4).tolist() == [0, 1, 0]


def test_metric_matches_functions_over_batches():
    torch.manual_seed(0)
    cfg = GroundingEvalConfig(min_num_segments=16, downsample_stride=2, group_size=2)
    metric = StreamingGroundingMetrics(cfg)
    results = []
    for _ in range(3):
        batch = []
        for _ in range(2):
            n = int(torch.randint(20, 40, (1,)))
            d = n * 0.5
            s = float(torch.rand(1)) * d / 2
            item = (torch.rand(n, 3), d, (s, s + d / 4), n)
            batch.append(item)
            results.append(evaluate_annotation(item[0], item[1], item[2], item[3], cfg))
        metric.update(*[list(x) for x in zip(*batch, strict=True)])
    out = metric.compute()
    hits = torch.stack([r["hits"] for r in results]).mean(0)
    assert torch.isclose(out["R@1,IoU=0.5"], hits[0, 1]) and torch.isclose(out["R@5,IoU=0.7"], hits[1, 2])
    assert abs(float(out["mcAP"]) - sum(r["cap"] for r in results) / 6) < 1e-6
    assert abs(float(out["mAP"]) - sum(r["ap"] for r in results) / 6) < 1e-6


def test_metric_deduplicates_annotation_indices():
    cfg = GroundingEvalConfig(min_num_segments=16, downsample_stride=2, group_size=2, map_label_extension=0.0)
    g = torch.Generator().manual_seed(1)
    items = [(torch.rand(30, 3, generator=g), 15.0, (2.0 + i, 6.0 + i), 30) for i in range(3)]
    ref = StreamingGroundingMetrics(cfg)
    ref.update(*[list(x) for x in zip(*items, strict=True)], indices=[0, 1, 2])
    dup = StreamingGroundingMetrics(cfg)
    for k in (0, 1, 2, 0, 1):  # repeats of annotations 0 and 1 count once
        dup.update(*[[x] for x in items[k]], indices=[k])
    for key, value in ref.compute().items():
        torch.testing.assert_close(dup.compute()[key], value)
    anon = StreamingGroundingMetrics(cfg)  # without indices every update counts
    for k in (0, 0):
        anon.update(*[[x] for x in items[k]])
    single = StreamingGroundingMetrics(cfg)
    single.update(*[[x] for x in items[0]])
    torch.testing.assert_close(anon.compute()["mcAP"], single.compute()["mcAP"])
    assert float(StreamingGroundingMetrics(cfg).compute()["mcAP"]) == 0.0  # empty: zeros, no error


def test_perfect_scores_hit():
    cfg = GroundingEvalConfig(min_num_segments=16, downsample_stride=2, group_size=2, map_label_extension=0.0)
    n, d = 16, 15.0  # one second per frame, T = min_num_segments: no smoothing / downsampling
    scores = torch.full((n, 3), 0.01)
    scores[4, 0] = scores[9, 1] = 0.99  # (4, 9) lies on the g = 2 grid (length 5, start stride 2)
    scores[4:10, 2] = 0.99
    r = evaluate_annotation(scores, d, (4.0, 9.0), n, cfg)
    assert r["hits"][0].tolist() == [1.0, 1.0, 1.0] and r["cap"] > 0.99


def test_eval_config_errors():
    with pytest.raises(ValueError, match="recall_at"):
        GroundingEvalConfig(recall_at=[])


def test_ddp_padding_is_not_counted(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import tsgsv_dist_helpers as h
    from mmzoo.testing import run_distributed

    from tsgsv.data import TSGVEvalDataset, collate_annotations
    from tsgsv.synthetic import SyntheticStreamConfig, write_synthetic_dataset

    # 3 test annotations (not divisible by 2): the sampler pads rank 1 with a repeat of annotation 0
    write_synthetic_dataset(tmp_path, SyntheticStreamConfig((1, 1, 3), 1, (75, 90), (2, 2), (15, 25), video_dim=8,
                                                            text_dim=8, video_feature_file="f_{split}.hdf5", seed=3))  # fmt: skip
    module = h.tiny_eval_module()
    ds = TSGVEvalDataset(tmp_path, "test", "f_{split}.hdf5")
    assert len(ds) == 3
    single = StreamingGroundingMetrics(module.eval_config)
    padded = StreamingGroundingMetrics(module.eval_config)  # what sum states without indices would give
    for i in range(3):
        module._evaluate(collate_annotations([ds[i]]), single)
    for i in (0, 2, 1, 0):
        item = ds[i]
        scores = module.stream_scores(item["video"], item["sentence"], item["sentence_length"])
        padded.update([scores], [item["duration"]], [item["target"]], [item["num_frames"]])
    one = {k: float(v) for k, v in single.compute().items()}
    naive = {k: float(v) for k, v in padded.compute().items()}
    assert one["mcAP"] != pytest.approx(naive["mcAP"], abs=1e-6)  # the padding repeat would change the metric
    results = run_distributed(h.ddp_tiny_eval, world_size=2, args=(str(tmp_path),))
    assert sorted(results[0][0] + results[1][0]) == [0, 0, 1, 2]  # padded: annotation 0 evaluated twice
    for _, metrics in results:
        assert metrics.keys() == one.keys()
        for key, value in one.items():
            assert metrics[key] == pytest.approx(value, abs=1e-6), key
