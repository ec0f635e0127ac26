import math

import pytest
import torch

from mmzoo.testing import decode_pattern, make_pattern_video, pattern_frame
from mmzoo.video import (
    VideoDecodeError,
    VideoReader,
    causal_window_indices,
    center_crop,
    fixed_fps_indices,
    normalize,
    random_crop,
    read_video,
    resize_short_side,
    sliding_window_indices,
    uniform_segment_indices,
    write_video,
)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    # 10 s at 30 fps, a keyframe every second.
    return make_pattern_video(tmp_path_factory.mktemp("v") / "long.mp4", num_frames=300, fps=30, gop=30)


def test_pattern_round_trip_exact():
    for k in (0, 1, 5, 255, 4097, 65535):
        assert decode_pattern(pattern_frame(k)) == k


def test_metadata(long_video):
    with VideoReader(long_video) as r:
        assert r.num_frames == 300
        assert math.isclose(r.fps, 30.0)
        assert math.isclose(r.duration, 10.0, rel_tol=1e-3)
        assert (r.height, r.width) == (64, 64)


def test_decoded_frame_k_shows_pattern_k(long_video):
    idx = [0, 1, 29, 30, 31, 150, 299]
    with VideoReader(long_video) as r:
        frames = r.get_frames(idx)
    assert frames.shape == (7, 3, 64, 64) and frames.dtype == torch.uint8
    assert [decode_pattern(f) for f in frames] == idx


def test_any_order_and_repeats(long_video):
    idx = [299, 5, 5, 150, 151, 0]
    with VideoReader(long_video) as r:
        assert [decode_pattern(f) for f in r.get_frames(idx)] == idx


def test_sparse_sample_decodes_far_fewer_frames(long_video):
    with VideoReader(long_video) as r:
        idx = uniform_segment_indices(r.num_frames, 8, train=False)
        frames = r.get_frames(idx)
        assert [decode_pattern(f) for f in frames] == idx
        # each wanted frame costs at most one GOP of decoding: 8 · 30 < 300, and in practice about half
        assert r.frames_decoded <= 8 * 30
        assert r.frames_decoded < 300 * 0.6
    with VideoReader(long_video) as r:
        r.get_frames(list(range(300)))
        assert r.frames_decoded == 300


def test_bytes_source(long_video):
    data = long_video.read_bytes()
    with VideoReader(data) as r:
        assert [decode_pattern(f) for f in r.get_frames([3, 100])] == [3, 100]


def test_read_video(long_video):
    frames = read_video(long_video, 4)
    assert [decode_pattern(f) for f in frames] == uniform_segment_indices(300, 4, train=False)


def test_missing_empty_corrupt_raise(tmp_path, long_video):
    with pytest.raises(VideoDecodeError, match="missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        VideoReader(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        VideoReader(tmp_path / "junk.mp4")
    truncated = tmp_path / "trunc.mp4"
    truncated.write_bytes(long_video.read_bytes()[:2000])
    with pytest.raises(VideoDecodeError, match="trunc.mp4"):
        with VideoReader(truncated) as r:
            r.get_frames([250])


def test_out_of_range_index(long_video):
    with VideoReader(long_video) as r, pytest.raises(IndexError, match="300"):
        r.get_frames([300])


# --------------------------------------------------------------------------------------------------- samplers


def test_uniform_segments_eval_centres():
    assert uniform_segment_indices(100, 4) == [12, 37, 62, 87]
    assert uniform_segment_indices(8, 8) == list(range(8))
    assert uniform_segment_indices(3, 6) == [0, 0, 1, 1, 2, 2]


def test_uniform_segments_train_stay_in_segments():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        idx = uniform_segment_indices(100, 4, train=True, generator=g)
        for k, i in enumerate(idx):
            assert 25 * k <= i < 25 * (k + 1)
        seen.add(tuple(idx))
    assert len(seen) > 40  # random offsets differ between draws


def test_fixed_fps():
    assert fixed_fps_indices(300, 30.0, 1.0) == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]
    assert fixed_fps_indices(300, 30.0, 2.0, start=1.0, end=3.0) == [30, 45, 60, 75]
    assert fixed_fps_indices(300, 30.0, 1.0, max_frames=5) == [30, 90, 150, 210, 270]


def test_sliding_and_causal_windows():
    assert sliding_window_indices(10, 4, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert sliding_window_indices(9, 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 8, 8, 8]]
    assert sliding_window_indices(9, 4, 4, pad_last=False) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert causal_window_indices(1, 4) == [0, 0, 0, 1]
    assert causal_window_indices(10, 3) == [8, 9, 10]


# ------------------------------------------------------------------------------------------------- transforms


def test_transforms():
    x = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    y = resize_short_side(x, 24)
    assert y.shape == (2, 3, 24, 32) and y.dtype == torch.uint8
    c = center_crop(x, 32)
    assert torch.equal(c, x[..., 8:40, 16:48])
    r = random_crop(x, (10, 20), generator=torch.Generator().manual_seed(1))
    assert r.shape == (2, 3, 10, 20)
    n = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), "imagenet")
    assert torch.allclose(
        n[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    )
    with pytest.raises(KeyError, match="unknown statistics"):
        normalize(x, "nope")
    with pytest.raises(ValueError, match="larger than frames"):
        center_crop(x, 100)
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        resize_short_side(x[0], 10)


def test_write_gif_and_mp4(tmp_path):
    frames = torch.stack([pattern_frame(k) for k in range(6)])
    for name in ("a.gif", "a.mp4"):
        p = write_video(tmp_path / name, frames, fps=6)
        with VideoReader(p) as r:
            assert r.num_frames == 6
            assert [decode_pattern(f) for f in r.get_frames(range(6))] == list(range(6))
    with pytest.raises(ValueError, match="even frame sizes"):
        write_video(tmp_path / "odd.mp4", torch.zeros(2, 3, 5, 5, dtype=torch.uint8))


def test_torchcodec_backend_matches_pyav(long_video):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec (and a system FFmpeg) is not installed")
    idx = [0, 31, 150, 299]
    with VideoReader(long_video, backend="torchcodec") as r:
        assert r.num_frames == 300
        assert [decode_pattern(f) for f in r.get_frames(idx)] == idx
