"""The synthetic data set decodes to the same frames each time it is written, and a cached copy made by an earlier
version of the generator is written again."""

from pathlib import Path

import av
import numpy as np
import torch
from mmzoo.video import VideoReader
from torchvision.io import read_image

from snps3.data import SNPS3DataModule
from snps3.synthetic import generate_synthetic_dataset


def decoded_clips(root: Path) -> dict[str, torch.Tensor]:
    """Every clip of ``webvid/videos`` (the same bytes as the LMDB values), all frames: name -> uint8 (T, 3, H, W)."""
    out = {}
    for path in sorted((root / "webvid" / "videos").glob("*.mp4")):
        with VideoReader(str(path)) as reader:
            out[path.stem] = reader.get_frames(list(range(reader.num_frames)))
    return out


def test_writing_the_data_twice_decodes_to_the_same_frames(tmp_path):
    # lossy libx264 output changed from one writing to the next for about a fifth of the clips; with 40 clips a
    # non-repeatable writer is caught in all but a vanishing fraction of runs
    first = decoded_clips(generate_synthetic_dataset(tmp_path / "a", num_train=24, num_test=16, seed=3))
    second = decoded_clips(generate_synthetic_dataset(tmp_path / "b", num_train=24, num_test=16, seed=3))
    assert len(first) == 40 and sorted(first) == sorted(second)
    differing = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differing, f"clips that decode differently after a second writing: {differing}"


def test_clips_decode_to_the_frames_that_were_written(tmp_path):
    # every fourth training clip's middle frame is also written as a PNG (lossless): the clip's frame must be that
    # image after the YUV 4:2:0 conversion any H.264 file goes through, and nothing more
    root = generate_synthetic_dataset(tmp_path, num_train=8, num_test=2, num_frames=8, seed=0)
    clips = decoded_clips(root)
    for name in ("train00000", "train00004"):
        image = read_image(str(root / "images" / f"{name}.png")).permute(1, 2, 0).numpy()  # (H, W, 3) uint8
        expected = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
        expected = torch.from_numpy(expected.to_ndarray(format="rgb24")).permute(2, 0, 1)  # (3, H, W)
        assert torch.equal(clips[name][4], expected), (name, (clips[name][4].int() - expected.int()).abs().max())


def test_prepare_data_rewrites_copies_of_an_earlier_generator_only(tmp_path):
    def prepare(**sizes):
        SNPS3DataModule(
            data_root=str(tmp_path), dataset="msrvtt_7k", tokenizer="vocab.txt", generate_synthetic=True, **sizes
        ).prepare_data()

    marker, test_file = tmp_path / "SYNTHETIC_DONE", tmp_path / "msrvtt_retrieval" / "test.jsonl"
    prepare(synthetic_train=4, synthetic_test=2)
    assert marker.read_text() == "version 2\n" and len(test_file.read_text().splitlines()) == 3  # 2 + shared caption

    test_file.write_text("kept\n")  # tells whether the copy is written again
    prepare(synthetic_train=5, synthetic_test=3)  # same generator version: kept, whatever its sizes
    assert test_file.read_text() == "kept\n"

    marker.write_text("ok\n")  # what the first version of the generator (lossy clips) wrote
    prepare(synthetic_train=5, synthetic_test=3)
    assert marker.read_text() == "version 2\n" and len(test_file.read_text().splitlines()) == 4
