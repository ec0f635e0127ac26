"""``radartag extract-features``: the BERT text path (tiny random BERT saved with save_pretrained) and the video path
(tiny generated mp4s, a random torchvision ResNet-18 state dict), checking the official file layout and shapes."""

import logging
import shutil

import numpy as np
import pytest
import torch
from mmzoo.video import VideoDecodeError

from radartag.cli import main
from radartag.data import read_kwai_files
from radartag.synthetic import SyntheticKwaiConfig, write_synthetic_vertical

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "leaf", "parent", "_", "0", "1", "2", "美", "妆"]


@pytest.fixture
def vertical(tmp_path):
    cfg = SyntheticKwaiConfig(num_users=6, num_parents=2, leaves_per_parent=2, follows=2, feature_dim=8)
    root = write_synthetic_vertical(tmp_path / "kwai", "v", cfg)
    shutil.rmtree(root / "tag_feat_bert")
    shutil.rmtree(root / "video_feat")
    return root


@pytest.fixture
def tiny_bert(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path / "bert"
    folder.mkdir()
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    BertModel(config).eval().save_pretrained(folder)
    BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    return folder


def test_text_features_bert_mean_and_cls(vertical, tiny_bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    main(
        args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--text_encoder", str(tiny_bert)]
    )
    files = read_kwai_files(vertical, "v")  # label-map tags + the extra ontology tag
    assert len(files.tags) > files.num_label_map_tags
    written = {p.stem for p in (vertical / "tag_feat_bert").glob("*.npy")}
    assert written == set(files.tags) and "美妆_0" in written  # raw UTF-8 tag names as file names
    feats = {t: np.load(vertical / "tag_feat_bert" / f"{t}.npy") for t in files.tags}
    assert all(f.shape == (16,) and f.dtype == np.float32 and np.isfinite(f).all() for f in feats.values())
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        hidden = model(**tok("leaf_0_1", return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(feats["leaf_0_1"], hidden.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--text_encoder", str(tiny_bert),
               "--pooling", "cls"])  # fmt: skip
    np.testing.assert_allclose(np.load(vertical / "tag_feat_bert" / "leaf_0_1.npy"), hidden[0].numpy(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    with pytest.raises(OSError, match="text_encoder"):
        main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--text_encoder",
                   str(tmp_path / "missing_bert")])  # fmt: skip


def test_video_features_resnet(vertical, tmp_path, caplog):
    import torchvision
    from mmzoo.testing import make_pattern_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for pid in (10000, 10001):
        make_pattern_video(videos / f"{pid}.mp4", num_frames=6, fps=6.0, height=32, width=40, gop=3)
    (videos / "10002.mp4").write_bytes(b"not a video at all")  # corrupt: an error, or skipped with a warning
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    with pytest.raises(FileNotFoundError, match="image_weights"):
        main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--video_dir", str(videos),
                   "--image_encoder", "resnet18"])  # fmt: skip
    (tmp_path / "cut.pt").write_bytes(weights.read_bytes()[:4096])  # a download that stopped
    with pytest.raises(ValueError, match=r"--image_weights '.*cut\.pt' cannot be read as a torch file"):
        main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--video_dir", str(videos),
                   "--image_encoder", "resnet18", "--image_weights", str(tmp_path / "cut.pt")])  # fmt: skip
    with pytest.raises(VideoDecodeError, match=r"10002\.mp4.*--on_corrupt skip"):  # the default stops, naming it
        main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--video_dir", str(videos),
                   "--image_encoder", "resnet18", "--image_weights", str(weights), "--num_frames", "2"])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--video_dir", str(videos),
                   "--image_encoder", "resnet18", "--image_weights", str(weights), "--num_frames", "2",
                   "--on_corrupt", "skip"])  # fmt: skip
    assert sorted(p.name for p in (vertical / "video_feat").glob("*.npy")) == ["10000.npy", "10001.npy"]
    assert "10002.mp4" in caplog.text
    for pid in (10000, 10001):
        f = np.load(vertical / "video_feat" / f"{pid}.npy")
        assert f.shape == (512,) and f.dtype == np.float32 and np.isfinite(f).all()  # ResNet-18 pooled width
    # the written features are read back by the feature reader used for the graphs
    from mmzoo.features import NpyFolderFeatures

    assert NpyFolderFeatures(vertical / "video_feat")["10000"].reshape(-1).shape == (512,)


def test_unknown_pooling_refused_before_anything_is_written(vertical, tiny_bert):
    from radartag.tools import extract_features

    with pytest.raises(ValueError, match="pooling='max': expected one of"):  # it used to write mean features
        extract_features(vertical, "v", text_encoder=str(tiny_bert), pooling="max")
    assert not (vertical / "tag_feat_bert").exists()


def test_a_run_stopped_mid_file_leaves_only_whole_feature_files(vertical, tiny_bert, monkeypatch):
    real_save, calls = np.save, []

    def save_then_stop(file, arr):
        calls.append(file)
        if len(calls) == 3:  # Ctrl-C while the third file is half written
            file.write(b"\x93NUMPY half")
            raise KeyboardInterrupt
        real_save(file, arr)

    monkeypatch.setattr(np, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(args=["extract-features", "--dataset_root", str(vertical), "--vertical", "v", "--text_encoder",
                   str(tiny_bert)])  # fmt: skip
    left = sorted((vertical / "tag_feat_bert").iterdir())
    assert [p.suffix for p in left] == [".npy", ".npy"]  # the two whole ones; neither the third nor a temporary
    assert all(np.load(p).shape == (16,) for p in left)
