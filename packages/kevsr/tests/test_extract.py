"""``kevsr extract`` end to end on generated videos with tiny randomly initialised models (no downloads)."""

import json
import logging

import h5py
import pytest
import torch

from kevsr.cli import main
from kevsr.data import Hierarchy, KEVSRDataset


def _tiny_models(tmp_path):
    """Small torchvision architectures with random weights (saved in float16 to keep the files small) and a
    tiny BERT built from a config with its own word-piece vocabulary."""
    import torchvision
    from torchvision.models import detection, video
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)

    def save(model, name):
        torch.save(
            {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, tmp_path / name
        )
        return str(tmp_path / name)

    paths = {
        "resnet": save(torchvision.models.resnet18(weights=None), "resnet18.pth"),
        "video": save(video.mc3_18(weights=None), "mc3_18.pth"),
        "detector": save(
            detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=2),
            "det.pth",
        ),
    }
    bert = tmp_path / "bert"
    bert.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "spicy", "hot", "pot", "with", "friends", "cinema"]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt")).save_pretrained(bert)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(bert)
    paths["bert"] = str(bert)
    return paths


def test_extract_end_to_end_on_generated_videos(tmp_path):
    from mmzoo.testing import make_pattern_video

    root, videos = tmp_path / "data", tmp_path / "videos"
    (root / "annotations").mkdir(parents=True)
    videos.mkdir()
    make_pattern_video(videos / "v0.mp4", num_frames=20, fps=8, height=48, width=64, gop=5)
    make_pattern_video(tmp_path / "elsewhere.mp4", num_frames=12, fps=8, height=64, width=48, gop=4)
    (videos / "broken.mp4").write_bytes(b"not a video")
    rows = [
        {"video_id": "v0", "text": "spicy hot pot with friends", "label_paths": [["food", "hot pot"]]},
        {
            "video_id": "v1",
            "text": "cinema",
            "label_paths": [["leisure", None]],
            "video_path": str(tmp_path / "elsewhere.mp4"),
        },
        {"video_id": "broken", "text": "cinema", "label_paths": [["leisure", "cinema"]]},
    ]
    (root / "annotations" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    hierarchy = {
        "level1": [{"name": "food"}, {"name": "leisure"}],
        "level2": [{"name": "hot pot", "parent": "food"}, {"name": "cinema", "parent": "leisure"}],
    }
    (root / "hierarchy.json").write_text(json.dumps(hierarchy))
    m = _tiny_models(tmp_path)
    args = [
        "extract",
        "--data-root",
        str(root),
        "--split",
        "test",
        "--videos-dir",
        str(videos),
        "--resnet",
        "resnet18",
        "--resnet-weights",
        m["resnet"],
        "--video-model",
        "mc3_18",
        "--video-model-weights",
        m["video"],
        "--detector",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "--detector-weights",
        m["detector"],
        "--detector-num-classes",
        "2",
        "--bert",
        m["bert"],
        "--num-frames",
        "3",
        "--clip-len",
        "4",
        "--num-regions",
        "2",
        "--score-threshold",
        "0.0",
        "--image-size",
        "64",
        "--clip-size",
        "32",
    ]
    with pytest.raises(FileNotFoundError, match="--detector-weights"):
        main(args=[str(tmp_path / "missing.pth") if a == m["detector"] else a for a in args])
    (tmp_path / "cut.pth").write_bytes(open(m["resnet"], "rb").read()[:4096])  # a download that stopped
    with pytest.raises(ValueError, match=r"--resnet-weights '.*cut\.pth' cannot be read as a torch file"):
        main(args=[str(tmp_path / "cut.pth") if a == m["resnet"] else a for a in args])
    with pytest.raises(Exception, match="broken"):  # on_corrupt: raise (default) names the file
        main(args=args)
    assert list((root / "features").iterdir()) == []  # a stopped run leaves no file that holds v0 and v1 only
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # independent of the root logger's state left by other tests
    logging.getLogger("kevsr.extract").addHandler(handler)
    try:
        out = main(args=[*args, "--on-corrupt", "skip"])
    finally:
        logging.getLogger("kevsr.extract").removeHandler(handler)
    assert any("broken" in r.getMessage() for r in records)  # the skipped video is logged with its path

    assert out == root / "features" / "test.h5" and out.is_file()
    with h5py.File(out) as f:
        assert sorted(f) == ["v0", "v1"]
        for vid in ("v0", "v1"):
            g = f[vid]
            assert g["f2d"].shape == (3, 512) and g["f3d"].shape == (3, 512) and g["text"].shape == (16,)
            assert g["regions"].shape == (3, 2, 512) and g["region_boxes"].shape == (3, 2, 4)
            assert g["region_mask"].shape == (3, 2) and g["region_mask"].dtype == "uint8"
        mask = f["v0"]["region_mask"][()]
        assert mask.sum() > 0  # the random 2-class detector proposes boxes; their features are pooled
        assert (abs(f["v0"]["regions"][()][mask > 0]).sum(-1) > 0).all()

    # the training pipeline reads the extracted file
    keep = rows[:2]
    (root / "annotations" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    ds = KEVSRDataset(str(root), "test", Hierarchy.from_json(root / "hierarchy.json"), None, 8, 2, 3)
    item = ds[1]
    assert item["f2d"].shape == (3, 512) and item["regions"].shape == (3, 2, 512) and item["text"].shape == (16,)


def test_video_model_clips_use_the_kinetics_statistics_of_torchvision_video_models():
    """f3d's torchvision video models were trained on Kinetics clips normalised with Kinetics statistics, which
    differ from ImageNet's (the ResNet trunk's); the clip fed to them must use the weights' own statistics."""
    from torchvision.models.video import MC3_18_Weights, R2Plus1D_18_Weights, R3D_18_Weights

    from kevsr.extract import clip_input

    frames = torch.randint(0, 256, (4, 3, 8, 10), dtype=torch.uint8)  # (C_len, 3, H, W), short side already 8
    got = clip_input(frames, 8)
    assert got.shape == (1, 3, 4, 8, 10)
    for weights in (R3D_18_Weights, R2Plus1D_18_Weights, MC3_18_Weights):
        t = weights.DEFAULT.transforms()
        mean, std = torch.tensor(t.mean).view(1, 3, 1, 1, 1), torch.tensor(t.std).view(1, 3, 1, 1, 1)
        expected = (frames.permute(1, 0, 2, 3)[None].float() / 255.0 - mean) / std
        torch.testing.assert_close(got, expected)


def test_regions_pool_the_c5_cells_under_the_box_on_both_axes():
    """A 480×852 frame resized to 224×398 gives a 7×13 C5 map (13 cells span 416 input pixels, not 398). A box is
    pooled from the cells under it: here a map whose channels hold each cell's column and row centre in input
    pixels, so the pooled means are the box's centre in input pixels on both axes."""
    from kevsr.extract import pool_regions

    rows, cols = torch.meshgrid(torch.arange(7.0), torch.arange(13.0), indexing="ij")
    c5 = torch.stack([cols * 32 + 16, rows * 32 + 16])[None]  # (1, 2, 7, 13): a cell's centre in input pixels
    box = torch.tensor([[200.0, 120.0, 600.0, 360.0]])  # x1, y1, x2, y2 in the 480×852 frame
    got = pool_regions(c5, box, (480, 852), (224, 398))[0]
    centre = torch.tensor([400.0 * 398 / 852, 240.0 * 224 / 480])  # the box centre, in input pixels
    torch.testing.assert_close(got, centre, atol=0.5, rtol=0)


def test_extract_short_and_odd_videos_give_n_f_keyframes(tmp_path):
    """A one-frame video, one with fewer frames than --num-frames, an odd frame size and an empty description:
    every video still gets N_f keyframes (repeated frames), as the data module needs one N_f per split."""
    from mmzoo.testing import make_pattern_video

    root, videos = tmp_path / "data", tmp_path / "videos"
    (root / "annotations").mkdir(parents=True)
    videos.mkdir()
    make_pattern_video(videos / "one.mp4", num_frames=1, fps=8, height=48, width=64, gop=1)
    make_pattern_video(videos / "two.mp4", num_frames=2, fps=8, height=50, width=34, gop=2)
    rows = [{"video_id": v, "text": t, "label_paths": []} for v, t in (("one", ""), ("two", "hot pot"))]
    (root / "annotations" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = _tiny_models(tmp_path)
    out = main(args=["extract", "--data-root", str(root), "--split", "test", "--videos-dir", str(videos),
                     "--resnet", "resnet18", "--resnet-weights", m["resnet"], "--video-model", "mc3_18",
                     "--video-model-weights", m["video"], "--detector", "fasterrcnn_mobilenet_v3_large_320_fpn",
                     "--detector-weights", m["detector"], "--detector-num-classes", "2", "--bert", m["bert"],
                     "--num-frames", "3", "--clip-len", "4", "--num-regions", "2", "--image-size", "64",
                     "--clip-size", "32"])  # fmt: skip
    with h5py.File(out) as f:
        for vid in ("one", "two"):
            assert f[vid]["f2d"].shape == (3, 512) and f[vid]["f3d"].shape == (3, 512)
            assert all(torch.isfinite(torch.from_numpy(f[vid][k][()])).all() for k in ("f2d", "f3d", "text"))
        one = f["one"]["f2d"][()]
        torch.testing.assert_close(torch.from_numpy(one[0]), torch.from_numpy(one[2]))  # the one frame, thrice
