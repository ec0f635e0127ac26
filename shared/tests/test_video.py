import gc
import logging
import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

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


def test_a_damaged_header_raises_the_decode_error(tmp_path):
    """A stream whose codec tag is unreadable (no codec context in PyAV) is a corrupt file, not an AttributeError."""
    data = make_pattern_video(tmp_path / "ok.mp4", num_frames=12).read_bytes()
    at = data.find(b"avc1", data.find(b"stsd"))  # the sample entry's codec tag
    bad = tmp_path / "unknown_codec.mp4"
    bad.write_bytes(data[:at] + b"zzzz" + data[at + 4 :])
    with pytest.raises(VideoDecodeError, match=r"unknown_codec\.mp4.*codec is unknown"):
        VideoReader(bad)


def test_tags_that_are_not_utf8_do_not_stop_the_frames(tmp_path):
    import av

    path = tmp_path / "latin1_title.mp4"
    with av.open(str(path), "w", metadata_encoding="latin-1") as out:
        out.metadata["title"] = "café"  # stored as Latin-1 bytes, which UTF-8 cannot decode
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for k in range(6):
            img = pattern_frame(k).permute(1, 2, 0).contiguous().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with VideoReader(path) as r:
        assert [decode_pattern(f) for f in r.get_frames([5, 0, 3])] == [5, 0, 3]


def test_out_of_range_index(long_video):
    with VideoReader(long_video) as r, pytest.raises(IndexError, match="300"):
        r.get_frames([300])


def test_frames_at_times_are_the_nearest_and_times_outside_the_video_are_refused(long_video):
    with VideoReader(long_video) as r:  # 300 frames at 30 fps: 10 s
        frames = r.get_frames_at_times([0.0, 1.0, 1.02, 9.99, 10.0])
        assert [decode_pattern(f) for f in frames] == [0, 30, 31, 299, 299]
        for times in ([-0.5], [10.5], [float("nan")]):  # -0.5 and 10.5 were clamped to the first and last frame
            with pytest.raises(ValueError, match=r"long\.mp4.*outside the video \[0, 10\.0\d\d\] s"):
                r.get_frames_at_times(times)


# --------------------------------------------------------------------------------------------------- samplers


def test_uniform_segments_eval_centres():
    assert uniform_segment_indices(100, 4) == [12, 37, 62, 87]
    assert uniform_segment_indices(8, 8) == list(range(8))
    assert uniform_segment_indices(3, 6) == [0, 0, 1, 1, 2, 2]


def test_uniform_segments_pick_a_frame_inside_each_segment(monkeypatch):
    # 16 frames in 12 segments: segment 7 covers [9.33, 10.67), centre 10.0 exactly (in floats 9.999...)
    assert uniform_segment_indices(16, 12) == [0, 2, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15]
    monkeypatch.setattr(torch, "rand", lambda n, generator=None: torch.zeros(n))  # u = 0: each segment's start
    for n in range(1, 120):
        for s in range(1, 40):
            for train in (False, True):
                for k, i in enumerate(uniform_segment_indices(n, s, train=train)):
                    # the frame is floor(x) for a point x of segment k, [k·n/s, (k+1)·n/s)
                    assert k * n // s <= i and i * s < (k + 1) * n, (n, s, train, k, i)


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
    assert fixed_fps_indices(300, 30.0, 1.0, start=9.5, end=20.0) == [285]  # end clipped to the video's 10 s


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start": 10.0}, "start"),  # the video lasts 10 s
        ({"start": 12.0}, "start"),
        ({"start": -1.0}, "start"),
        ({"start": 3.0, "end": 2.0}, "end"),
        ({"start": 3.0, "end": 3.0}, "end"),
        ({"num_frames": 0}, "num_frames"),
        ({"target_fps": 0.0}, "target_fps"),
    ],
)
def test_fixed_fps_rejects_bad_windows(kwargs, name):
    args = {"num_frames": 300, "video_fps": 30.0, "target_fps": 1.0, **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fixed_fps_indices(**args)


def test_sliding_and_causal_windows():
    assert sliding_window_indices(10, 4, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert sliding_window_indices(9, 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 8, 8, 8]]
    assert sliding_window_indices(9, 4, 4, pad_last=False) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert causal_window_indices(1, 4) == [0, 0, 0, 1]
    assert causal_window_indices(10, 3) == [8, 9, 10]


# ------------------------------------------------------------------------------------------------- transforms


def test_crop_offsets_and_resized_sizes_follow_torchvision_rules():
    x = torch.arange(2 * 3 * 9 * 11, dtype=torch.float32).reshape(2, 3, 9, 11)
    # margins 3 and 5: offsets round(1.5) = 2 and round(2.5) = 2 (Python rounds halves to even)
    assert torch.equal(center_crop(x, (6, 6)), x[..., 2:8, 2:8])
    assert torch.equal(center_crop(x, (4, 6)), x[..., 2:6, 2:8])  # margin 5 rows: 2; margin 5 columns: 2
    assert torch.equal(center_crop(x, (8, 10)), x[..., 0:8, 0:10])  # margins 1: round(0.5) = 0
    # the long side is truncated: 24 * 400 / 299 = 32.1 -> 32, 24 * 641 / 360 = 42.7 -> 42 (rounding gave 43)
    assert resize_short_side(torch.zeros(1, 3, 299, 400, dtype=torch.uint8), 24).shape[-2:] == (24, 32)
    assert resize_short_side(torch.zeros(1, 3, 641, 360, dtype=torch.uint8), 24).shape[-2:] == (42, 24)
    with pytest.raises(ValueError, match="interpolation='nearest'"):
        resize_short_side(x, 4, interpolation="nearest")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_resize_and_crop_equal_torchvision(interpolation):
    tf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    g = torch.Generator().manual_seed(0)
    for h, w in [(48, 64), (299, 400), (360, 641), (101, 77), (225, 224)]:
        x = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
        expected = tf.resize(x, 24, interpolation=InterpolationMode(interpolation), antialias=True)
        assert torch.equal(resize_short_side(x, 24, interpolation=interpolation), expected), (h, w)
        for th, tw in [(20, 17), (h - 1, w - 3), (h - 3, w - 5)]:
            assert torch.equal(center_crop(x, (th, tw)), tf.center_crop(x, [th, tw])), (h, w, th, tw)


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
    with pytest.raises(ValueError, match="1 channels but the statistics give 3 means"):  # not broadcast to 3
        normalize(x[:, :1], "imagenet")
    assert normalize(x[:, :1], ([0.5], [0.25])).shape == (2, 1, 48, 64)
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


@pytest.mark.parametrize(
    ("fps", "stored"),
    [
        (30000 / 1001, Fraction(30000, 1001)),
        (24000 / 1001, Fraction(24000, 1001)),
        (60000 / 1001, Fraction(60000, 1001)),
        (25.0, Fraction(25)),
        (Fraction(30000, 1001), Fraction(30000, 1001)),
    ],
)
def test_write_video_keeps_common_rates_exact(tmp_path, fps, stored):
    import av

    p = write_video(tmp_path / "r.mp4", torch.stack([pattern_frame(k, 32, 32) for k in range(4)]), fps=fps)
    with av.open(str(p)) as c:
        assert c.streams.video[0].average_rate == stored


def test_torchcodec_backend_matches_pyav(long_video):
    pytest.importorskip("torchcodec.decoders", reason="torchcodec (and a system FFmpeg) is not installed")
    idx = [0, 31, 150, 299]
    with VideoReader(long_video, backend="torchcodec") as r:
        assert r.num_frames == 300
        assert [decode_pattern(f) for f in r.get_frames(idx)] == idx


# ------------------------------------------------------------------------- timestamps, gaps, seeks, containers


def _write_timed(path, pts, rate=30, fmt=None, codec="libx264", options=None, size=32):
    """Frame k shows pattern k and carries timestamp ``pts[k]`` (in units of 1/rate)."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, rate)
        for k, q in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(pattern_frame(k, size, size).permute(1, 2, 0).numpy(), format="rgb24")
            frame.pts, frame.time_base = q, Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory):
    # timestamp 30 is missing (a one-frame gap) and 45..49 too (a five-frame gap)
    pts = list(range(30)) + list(range(31, 45)) + list(range(50, 70))
    path = _write_timed(tmp_path_factory.mktemp("vfr") / "vfr.mp4", pts, options={"g": "10", "bf": "0"})
    return path, pts


def _expected_vfr(reader, pts, tolerance=1):
    """index -> pattern of the nearest frame (earlier on a tie), or None where no frame lies within tolerance;
    and the set of indices that have a frame of their own."""
    at = [round(float(Fraction(q, 30)) * reader.fps) for q in pts]  # index of each frame by its timestamp
    out = {}
    for k in range(reader.num_frames):
        p = min(range(len(pts)), key=lambda p: (abs(at[p] - k), at[p], p))
        out[k] = p if abs(at[p] - k) <= tolerance else None
    return out, set(at)


def test_variable_frame_rate_substitutes_only_the_nearest_frame(vfr_video):
    path, pts = vfr_video
    with VideoReader(path) as r:
        expected, exact = _expected_vfr(r, pts)
        ok = [k for k, p in expected.items() if p is not None]
        gaps = [k for k, p in expected.items() if p is None]
        assert len(gaps) >= 2 and len(ok) == r.num_frames - len(gaps)
        assert set(ok) - exact  # the file does have indices without a frame of their own
        assert [decode_pattern(f) for f in r.get_frames(ok)] == [expected[k] for k in ok]
    # the answer for an index does not depend on the other indices requested with it
    for k in ok[::7] + [ok[-1]]:
        with VideoReader(path) as r:
            assert decode_pattern(r.get_frames([k])[0]) == expected[k]
    with VideoReader(path) as r:
        sample = [0, ok[len(ok) // 2], ok[-1]]
        assert [decode_pattern(f) for f in r.get_frames(sample)] == [expected[k] for k in sample]


def test_variable_frame_rate_gap_raises(vfr_video):
    path, pts = vfr_video
    with VideoReader(path) as r:
        expected, exact = _expected_vfr(r, pts)
        gap = next(k for k, p in expected.items() if p is None)
        one = next(k for k, p in expected.items() if p is not None and k not in exact)
    for idx in ([gap], [0, gap], [0, 5, gap, gap + 10]):
        with VideoReader(path) as r, pytest.raises(VideoDecodeError, match=rf"vfr\.mp4.*index {gap}\b"):
            r.get_frames(idx)
    with VideoReader(path, tolerance=0) as r, pytest.raises(VideoDecodeError, match=rf"index {one}\b"):
        r.get_frames([0, one])
    with pytest.raises(ValueError, match="tolerance"):
        VideoReader(path, tolerance=-1)


def test_truncated_file_raises_instead_of_repeating_frames(tmp_path):
    full = _write_timed(tmp_path / "full.mkv", list(range(60)), fmt="matroska", options={"g": "10"})
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with VideoReader(cut) as r:
        assert r.num_frames == 60  # the header still promises the whole clip
        assert [decode_pattern(f) for f in r.get_frames([0, 5])] == [0, 5]
    for idx in (uniform_segment_indices(60, 8), [55], [0, 55]):
        with (
            VideoReader(cut) as r,
            pytest.raises(VideoDecodeError, match=r"cut\.mkv.*frame \d+ not decodable: the file ends"),
        ):
            r.get_frames(idx)


def test_header_that_overstates_the_count_a_little_gets_the_last_frame(tmp_path, caplog):
    # e.g. a duration-based count when the audio outlasts the video: a few indices past the stream's end
    full = _write_timed(tmp_path / "full.mkv", list(range(60)), fmt="matroska", options={"g": "10"})
    with VideoReader(full) as r, caplog.at_level(logging.WARNING, logger="mmzoo.video"):
        r.num_frames = 64  # the header counts 4 frames more than the stream holds (margin: 10 % of 64 = 6)
        assert [decode_pattern(f) for f in r.get_frames([10, 59, 62, 63])] == [10, 59, 59, 59]
    assert sum("the stream ends at frame 59" in m for m in caplog.messages) == 1  # warned once per reader
    with VideoReader(full, end_margin=0.0) as r, pytest.raises(VideoDecodeError, match="frame 63 not decodable"):
        r.num_frames = 64
        r.get_frames([63])  # no margin: only ``tolerance`` (1 frame) past the end
    with pytest.raises(ValueError, match="end_margin"):
        VideoReader(full, end_margin=1.0)


@pytest.mark.parametrize("shift", [40, 1000])
def test_seek_landing_after_the_target_is_recovered(long_video, monkeypatch, shift):
    # Containers with inexact seeking (e.g. MPEG-TS) can land on a keyframe after the wanted frame.
    real_seek = VideoReader._seek
    monkeypatch.setattr(VideoReader, "_seek", lambda self, target: real_seek(self, target + shift))
    idx = [20, 132, 215, 261, 299]
    with VideoReader(long_video) as r:
        assert [decode_pattern(f) for f in r.get_frames(idx)] == idx
        assert [decode_pattern(f) for f in r.get_frames([3, 100])] == [3, 100]  # backwards again


@pytest.mark.parametrize(
    ("name", "codec", "options"),
    [
        ("bframes.avi", "mpeg4", {"g": "12", "bf": "2"}),  # first decoded timestamp 1, stream start 0
        ("h264.avi", "libx264", {"g": "12"}),  # timestamps come out of the decoder in decode order
    ],
)
def test_avi_frame_origin_and_timestamp_order(tmp_path, name, codec, options):
    path = _write_timed(tmp_path / name, list(range(40)), rate=25, fmt="avi", codec=codec, options=options)
    idx = [0, 1, 2, 3, 4, 13, 20, 27, 39]
    with VideoReader(path) as r:
        assert [decode_pattern(f) for f in r.get_frames(idx)] == idx
    for k in (3, 20, 39):
        with VideoReader(path) as r:
            assert decode_pattern(r.get_frames([k])[0]) == k
    with VideoReader(path) as r:
        assert [decode_pattern(f) for f in r.get_frames(range(40))] == list(range(40))


def _decoder_threads() -> int:
    """Threads of this process that FFmpeg named (``av:<codec>:…``)."""
    tasks = f"/proc/{os.getpid()}/task"
    return sum(open(f"{tasks}/{t}/comm").read().startswith("av:") for t in os.listdir(tasks))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("indices", [[0, 5, 200, 10], [299, 0], [150]])  # seek forward and back, restart, one seek
@pytest.mark.parametrize("ending", ["close", "drop"])
def test_the_decoder_threads_end_without_the_garbage_collector(long_video, indices, ending):
    # closed, or dropped without close(), a reader frees its decoder at once: nothing is left to the cyclic
    # collector (which a forked DataLoader worker may run: see the test below)
    gc.collect()
    before = _decoder_threads()
    gc.disable()
    try:
        r = VideoReader(long_video)
        assert [decode_pattern(f) for f in r.get_frames(indices)] == indices
        during = _decoder_threads()
        if ending == "close":
            r.close()
        else:
            del r
        after = _decoder_threads()
    finally:
        gc.enable()
    if during == before:
        pytest.skip("FFmpeg decoded on one thread here: nothing to release")
    assert after == before


def test_forked_child_can_collect_what_a_closed_reader_left(long_video):
    # A DataLoader worker forked after the parent read a video: when the child's garbage collector freed a decoder
    # whose threads live only in the parent, it waited for them forever (the worker hung)
    code = textwrap.dedent(
        f"""
        import gc, os
        from mmzoo.video import VideoReader
        gc.disable()
        with VideoReader({str(long_video)!r}) as r:
            r.get_frames([0, 5, 200, 10])
        del r
        pid = os.fork()
        if pid == 0:
            gc.collect()
            with VideoReader({str(long_video)!r}) as r:
                r.get_frames([3, 40])
            os._exit(0)
        print("child", os.waitpid(pid, 0)[1])
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung while collecting the parent's decoder")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["child", "0"]
