"""Reading videos into uint8 ``T×C×H×W`` tensors, frame samplers, tensor transforms and a writer.

Reading decodes only what a sampler asks for::

    with VideoReader("clip.mp4") as reader:
        idx = uniform_segment_indices(reader.num_frames, num_segments=8, train=False)
        frames = reader.get_frames(idx)            # (8, 3, H, W) uint8
    frames = normalize(center_crop(resize_short_side(frames, 224), 224), "clip")

:class:`VideoReader` seeks to the keyframe before the first wanted frame and decodes forward; it seeks again
when the keyframe before the next wanted frame lies ahead of the decoder (keyframe positions are learnt while
decoding; before any is known, when the frame lies more than ``seek_threshold`` frames ahead), so a sparse sample
of a long video decodes a small fraction of its frames (``reader.frames_decoded`` counts them). A seek that lands
after the wanted frame (inexact container indexes, e.g. MPEG-TS) is retried from earlier, then from the start.
Frame indices come from timestamps measured from the first decoded frame; an index without a frame of its own
(variable frame rate, a header that overstates the frame count) gets the nearest frame at most ``tolerance``
frames away, and raises :class:`VideoDecodeError` beyond that. PyAV is the default backend (its wheels carry
FFmpeg); ``backend="torchcodec"`` uses torchcodec (CPU or CUDA decode) when installed.
A missing, empty or corrupt file raises :class:`VideoDecodeError` naming the path.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import weakref
from collections import deque
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "VideoDecodeError",
    "VideoReader",
    "read_video",
    "uniform_segment_indices",
    "fixed_fps_indices",
    "sliding_window_indices",
    "causal_window_indices",
    "resize_short_side",
    "center_crop",
    "random_crop",
    "normalize",
    "NORMALIZATION",
    "write_video",
]

log = logging.getLogger(__name__)

Backend = Literal["pyav", "torchcodec"]

#: Named (mean, std) statistics for :func:`normalize`, on pixel values scaled to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded. ``path`` names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode video {self.path!r}: {reason}")


# --------------------------------------------------------------------------------------------------- reader


class VideoReader:
    """Random access to the frames of one video file (or in-memory bytes).

    Frame ``k`` is the frame shown at ``k / fps`` seconds after the first frame (``fps`` is the average rate):
    a decoded frame's index is ``round((pts - pts_0) · time_base · fps)``, with ``pts_0`` the first decoded
    frame's timestamp. In a constant-rate file every index has exactly one frame. Where timestamps leave an index
    without a frame (variable frame rate, dropped frames) or a header counts more frames than the file holds, the
    nearest decoded frame is returned if it lies at most ``tolerance`` frames away (on a tie, the earlier one), and an index
    past the end of a stream that ends at most ``end_margin`` of its count early gets the last frame;
    farther than that, :class:`VideoDecodeError` names the file and the index. The answer for an index never
    depends on which other indices are requested with it.

    Args:
        source: a path, or the encoded bytes of a video (e.g. a value from an LMDB store).
        backend: ``"pyav"`` (default) or ``"torchcodec"`` (needs ``pip install 'mmzoo[torchcodec]'``). torchcodec
            numbers frames by position, not by timestamp: frame ``k`` is the ``k``-th frame in presentation order
            (its exact mode scans the file, so ``num_frames`` is what the file holds). In a constant-rate file both
            backends return the same frames; in a variable-rate file their indices differ, and the timestamp
            rules above (``tolerance``, ``end_margin``) do not apply to torchcodec.
        device: torchcodec only: ``"cpu"`` or ``"cuda"`` decode.
        seek_threshold: seek instead of decoding forward when the next wanted frame is more than this many
            frames ahead; ``None`` uses the frame rate (one second).
        name: how errors name an in-memory source (defaults to ``"<bytes>"``).
        tolerance: PyAV only: how many frames away from a requested index a substitute frame may lie.
        end_margin: PyAV only: share of the header's frame count by which the stream may end early (a header or
            duration estimate that overstates the count): an index past the last decodable frame but within
            ``max(tolerance, end_margin · num_frames)`` of it gets that frame, with one warning per reader; a
            stream that ends earlier than that (a truncated file) raises.

    Attributes:
        fps, num_frames, duration (seconds), height, width; ``frames_decoded`` counts decoded frames.

    Raises:
        VideoDecodeError: missing, empty, corrupt, or frameless video.
    """

    #: Frames decoded from the start of the file on the first read, to find ``pts_0`` and whether the
    #: container carries timestamps in decode order (then they are sorted back into presentation order).
    PROBE_FRAMES = 8

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        backend: Backend = "pyav",
        device: str = "cpu",
        seek_threshold: int | None = None,
        name: str | None = None,
        tolerance: int = 1,
        end_margin: float = 0.1,
    ):
        self.source = source
        self.path = name or (str(source) if not isinstance(source, bytes | bytearray) else "<bytes>")
        if backend not in ("pyav", "torchcodec"):
            raise ValueError(f"backend must be 'pyav' or 'torchcodec', got {backend!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        if not 0 <= end_margin < 1:
            raise ValueError(f"end_margin must be in [0, 1), got {end_margin}")
        self.end_margin = float(end_margin)
        self._warned_end = False
        self.backend = backend
        self.tolerance = int(tolerance)
        self.frames_decoded = 0
        if not isinstance(source, bytes | bytearray):
            p = Path(source)
            if not p.is_file():
                raise VideoDecodeError(self.path, "file does not exist")
            if p.stat().st_size == 0:
                raise VideoDecodeError(self.path, "file is empty")
        elif len(source) == 0:
            raise VideoDecodeError(self.path, "empty byte string")
        if backend == "pyav":
            self._open_pyav()
        else:
            self._open_torchcodec(device)
        if self.num_frames <= 0:
            raise VideoDecodeError(self.path, "the video stream has no frames")
        self.seek_threshold = int(seek_threshold if seek_threshold is not None else max(1, round(self.fps)))

    # -- PyAV -------------------------------------------------------------------------------------------------
    def _open_container(self) -> None:
        import io

        import av

        try:
            src = io.BytesIO(self.source) if isinstance(self.source, bytes | bytearray) else str(self.source)
            # tags that are not UTF-8 (a title written in Latin-1, a damaged header) must not make the frames unreadable
            self._container = av.open(src, metadata_errors="replace")
            if not self._container.streams.video:
                raise VideoDecodeError(self.path, "no video stream")
            self._stream = self._container.streams.video[0]
            if self._stream.codec_context is None:
                raise VideoDecodeError(self.path, "the video stream's codec is unknown (a damaged header?)")
            self._stream.thread_type = "AUTO"
        except av.FFmpegError as err:
            raise VideoDecodeError(self.path, str(err)) from err

    def _open_pyav(self) -> None:
        self._open_container()
        s = self._stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate:
            raise VideoDecodeError(self.path, "the video stream has no frame rate")
        self.fps = float(rate)
        self._time_base = s.time_base or Fraction(1, 1_000_000)
        if s.duration is not None:
            self.duration = float(s.duration * self._time_base)
        elif self._container.duration is not None:
            self.duration = self._container.duration / 1_000_000
        else:
            self.duration = 0.0
        self.num_frames = int(s.frames) if s.frames else int(math.floor(self.duration * self.fps + 0.5))
        self.height, self.width = int(s.codec_context.height), int(s.codec_context.width)
        self._origin: int | None = None  # pts of the first frame, found by _probe on the first read
        self._reorder = 0  # > 0: timestamps arrive in decode order; sort them over this many frames
        self._keyframes: set[int] = set()  # keyframe indices seen while decoding
        self._seek_unreliable = False  # a seek landed after its target even when retried from earlier
        self._reset_run(None, from_start=False)

    # A "run" is one forward pass of the decoder since the last seek (or since the start of the file). Its state:
    # _iter yields (index, frame) in presentation order; _prev is the frame with the largest index <= the last
    # target searched (None before the first); _ahead is the first frame past that target, if already decoded;
    # _from_start says the run began at the file's first frame (so nothing precedes its first frame); _eof that
    # the decoder is exhausted.
    def _reset_run(self, frames, from_start: bool) -> None:
        self._end_run()
        self._iter = None if frames is None else self._indexed(frames)
        self._prev = None
        self._ahead = None
        self._from_start = from_start
        self._eof = False

    def _end_run(self) -> None:
        """Close the current run's generators (they hold the decoder) and drop its frames."""
        run = getattr(self, "_iter", None)
        self._iter = self._prev = self._ahead = None
        if run is not None:
            run.close()

    # The run's generators see the reader through a weak proxy: a reader dropped without close() is then freed,
    # and its decoder with it, as soon as the last reference goes (see close()).
    def _decoded(self):
        """The decoder's frames from the container's current position, counted in ``frames_decoded``."""
        return self._counted(weakref.proxy(self), self._container.decode(self._stream))

    @staticmethod
    def _counted(reader: VideoReader, frames):
        for frame in frames:
            reader.frames_decoded += 1
            yield frame

    def _indexed(self, frames):
        """(index, frame) pairs in presentation order. When the container stores timestamps in decode order,
        the frames come out in the right order with shuffled timestamps: hand out the smallest pending timestamp
        to each frame, holding ``_reorder`` frames back."""
        return self._presentation_order(weakref.proxy(self), frames)

    @staticmethod
    def _presentation_order(reader: VideoReader, frames):
        last = -1
        pending: deque = deque()
        stamps: list[int] = []  # heap of the pending frames' timestamps (reordering only)
        for frame in itertools.chain(frames, [None]):
            if frame is not None:
                if reader._reorder and frame.pts is not None:
                    heapq.heappush(stamps, frame.pts)
                pending.append(frame)
            while pending and (frame is None or len(pending) > reader._reorder):
                f = pending.popleft()
                pts = (heapq.heappop(stamps) if stamps else None) if reader._reorder else f.pts
                last = reader._frame_index(pts, last)
                if f.key_frame:
                    reader._keyframes.add(last)
                yield last, f

    def _frame_index(self, pts: int | None, last: int) -> int:
        if pts is None:
            return last + 1
        return int(round(float((pts - self._origin) * self._time_base) * self.fps))

    def _probe(self) -> None:
        """Decode the first frames (kept as the start of a run) to find ``pts_0`` and the timestamp order."""
        import av

        frames = self._decoded()
        head = []
        try:
            for frame in frames:
                head.append(frame)
                if len(head) >= self.PROBE_FRAMES:
                    break
        except av.FFmpegError as err:
            raise VideoDecodeError(self.path, f"decoding the first frames failed: {err}") from err
        if not head:
            raise VideoDecodeError(self.path, "no frame could be decoded")
        stamps = [f.pts for f in head if f.pts is not None]
        self._origin = min(stamps) if stamps else 0
        if any(b < a for a, b in zip(stamps, stamps[1:])):
            rank = {p: r for r, p in enumerate(sorted(stamps))}
            self._reorder = max(abs(rank[p] - i) for i, p in enumerate(stamps)) + 2
        self._reset_run(itertools.chain(head, frames), from_start=True)

    def _restart(self) -> None:
        """Reopen the file and decode from its first frame (no seek)."""
        self._end_run()
        self._container.close()
        self._open_container()
        self._reset_run(self._decoded(), from_start=True)

    def _seek(self, target: int) -> None:
        import av

        if target <= 0:
            offset = self._origin
        else:
            offset = self._origin + int(
                Fraction(target) / Fraction(self.fps).limit_denominator(100000) / self._time_base
            )
        try:
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        except av.FFmpegError as err:
            raise VideoDecodeError(self.path, f"seek to frame {target} failed: {err}") from err
        self._reset_run(self._decoded(), from_start=False)

    def _last(self) -> int:
        """Index of the last frame the current run produced (-1 if none)."""
        item = self._ahead or self._prev
        return item[0] if item is not None else -1

    def _gop_estimate(self) -> int | None:
        """Smallest distance between keyframes seen so far (a regular GOP's length, or a multiple of it)."""
        keys = sorted(self._keyframes)
        gaps = [b - a for a, b in zip(keys, keys[1:]) if b > a]
        return min(gaps) if gaps else None

    def _can_continue(self, target: int) -> bool:
        """Whether the current run can answer ``target``: it has not passed it (or ended after reaching it)."""
        if self._iter is None and not self._eof:
            return False
        if self._prev is not None:
            return self._prev[0] <= target
        return self._from_start

    def _should_seek(self, target: int) -> bool:
        """Seek when the keyframe before ``target`` lies after the decoder's position: decoding forward from
        there would redo frames that a seek skips. Without keyframe knowledge, seek past ``seek_threshold``."""
        last = self._last()
        if self._eof or (self._ahead is not None and self._ahead[0] > target) or target - last <= 1:
            return False
        if any(last < k <= target for k in self._keyframes):
            return True
        gop = self._gop_estimate()
        if gop is not None:
            return (target // gop) * gop > last
        return target - last > self.seek_threshold

    def _advance(self, target: int) -> None:
        """Decode forward until the run holds ``target``, or a frame past it, or the file ends."""
        import av

        if self._ahead is not None:
            if self._ahead[0] > target:
                return
            self._prev, self._ahead = self._ahead, None
        while self._iter is not None and (self._prev is None or self._prev[0] < target):
            try:
                item = next(self._iter)
            except StopIteration:
                self._iter, self._eof = None, True
                break
            except av.FFmpegError as err:
                self._iter = None
                raise VideoDecodeError(self.path, f"decoding near frame {target} failed: {err}") from err
            if item[0] > target:
                self._ahead = item
                break
            if self._prev is None or item[0] > self._prev[0]:
                self._prev = item

    def _resolve(self, target: int) -> np.ndarray | None:
        """The frame for ``target`` from the run's neighbours of it; None when the run started after it."""
        prev, ahead = self._prev, self._ahead
        if prev is None and not self._from_start:
            return None  # the seek overshot: frames before the first decoded one are unknown
        candidates = [c for c in (prev, ahead) if c is not None]
        if not candidates:
            return None
        idx, frame = min(candidates, key=lambda c: (abs(c[0] - target), c[0]))
        if ahead is None and self._eof and target > idx and target - idx <= self._end_margin():
            # the header (or the duration estimate) counts a few more frames than the stream holds
            if not self._warned_end:
                log.warning("%s: the stream ends at frame %d, the header counts %d; later indices get frame %d",
                            self.path, idx, self.num_frames, idx)  # fmt: skip
                self._warned_end = True
            return frame.to_ndarray(format="rgb24")
        if abs(idx - target) > self.tolerance:
            if ahead is None:
                raise VideoDecodeError(
                    self.path,
                    f"frame {target} not decodable: the file ends at frame {idx} (header says {self.num_frames})",
                )
            raise VideoDecodeError(
                self.path,
                f"no frame within {self.tolerance} frame(s) of index {target}: the frames around it are "
                f"{prev[0] if prev else None} and {ahead[0]} (a gap in the timestamps)",
            )
        if idx != target:
            log.debug("%s: frame %d substituted by frame %d", self.path, target, idx)
        return frame.to_ndarray(format="rgb24")

    def _end_margin(self) -> int:
        """How far past the last decodable frame an index may lie and still get that frame: ``tolerance``, or
        ``end_margin`` of the header's count if larger (headers and duration-based estimates often count a few
        frames too many, e.g. when the audio outlasts the video); a file cut shorter than that raises."""
        return max(self.tolerance, int(self.end_margin * self.num_frames))

    def _find(self, target: int) -> np.ndarray:
        """Decode the frame for ``target``: continue the run, or seek. A seek that lands after the target is
        retried from one seek threshold (or GOP) earlier, then by decoding from the start of the file."""
        if not self._can_continue(target) or (self._should_seek(target) and not self._seek_unreliable):
            if self._seek_unreliable:
                self._restart()
            else:
                self._seek(target)
        self._advance(target)
        got = self._resolve(target)
        if got is None and not self._from_start:
            back = target - max(self.seek_threshold, self._gop_estimate() or 0)
            if back > 0:
                self._seek(back)
                self._advance(target)
                got = self._resolve(target)
                # landing after the target from this far back too: stop trusting seeks in this file
                self._seek_unreliable = got is None
            if got is None:
                self._restart()
                self._advance(target)
                got = self._resolve(target)
        if got is None:
            raise VideoDecodeError(self.path, f"no frame could be decoded at index {target}")
        return got

    def _get_frames_pyav(self, wanted: list[int]) -> dict[int, np.ndarray]:
        if self._origin is None:
            self._probe()
        return {target: self._find(target) for target in wanted}

    # -- torchcodec -------------------------------------------------------------------------------------------
    def _open_torchcodec(self, device: str) -> None:
        try:
            from torchcodec.decoders import VideoDecoder
        except ImportError as err:
            raise ImportError("backend='torchcodec' needs torchcodec: pip install 'mmzoo[torchcodec]'") from err
        try:
            src = bytes(self.source) if isinstance(self.source, bytes | bytearray) else str(self.source)
            self._decoder = VideoDecoder(src, device=device)
        except (RuntimeError, ValueError) as err:
            raise VideoDecodeError(self.path, str(err)) from err
        md = self._decoder.metadata
        self.fps = float(md.average_fps)
        self.num_frames = int(md.num_frames)
        self.duration = float(md.duration_seconds or self.num_frames / self.fps)
        self.height, self.width = int(md.height), int(md.width)

    # -- public -----------------------------------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) as a uint8 tensor (T, 3, H, W).

        PyAV: an index without a frame of its own gets the nearest decoded frame within ``tolerance`` frames
        (see the class docstring); otherwise :class:`VideoDecodeError` names the file and the index.
        """
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("get_frames: indices is empty")
        bad = [i for i in idx if i < 0 or i >= self.num_frames]
        if bad:
            raise IndexError(f"{self.path!r}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        if self.backend == "torchcodec":
            try:
                batch = self._decoder.get_frames_at(indices=idx)
            except (RuntimeError, ValueError) as err:
                raise VideoDecodeError(self.path, str(err)) from err
            self.frames_decoded += len(set(idx))
            return batch.data.cpu()
        got = self._get_frames_pyav(sorted(set(idx)))
        arr = np.stack([got[i] for i in idx])  # (T, H, W, 3)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W)

    def get_frames_at_times(self, seconds: Sequence[float]) -> torch.Tensor:
        """Frames nearest to the given timestamps (seconds from the start, within the video: a time past the last
        frame's start up to the end maps to the last frame). A time outside the video raises ``ValueError``."""
        end = max(self.duration, self.num_frames / self.fps)
        bad = [t for t in seconds if not 0.0 <= t <= end]  # NaN included
        if bad:
            raise ValueError(f"{self.path!r}: times {bad[:5]} s outside the video [0, {end:.3f}] s")
        return self.get_frames([min(self.num_frames - 1, int(round(t * self.fps))) for t in seconds])

    def close(self) -> None:
        """Release the file and the decoder, with its threads, now (a reader dropped unclosed does so when its last
        reference goes).

        A decoder must never be left to the cyclic garbage collector: a collection in a forked child (a DataLoader
        worker started in the meantime) would free a decoder whose threads exist only in the parent, and wait for
        them forever. Hence the weak proxy in the run's generators, and their explicit close here.
        """
        if self.backend != "pyav":
            return
        self._end_run()
        self._stream = None
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


def read_video(
    source: str | os.PathLike | bytes,
    num_frames: int,
    train: bool = False,
    generator: torch.Generator | None = None,
    backend: Backend = "pyav",
) -> torch.Tensor:
    """Read ``num_frames`` frames sampled by :func:`uniform_segment_indices` as uint8 (T, 3, H, W)."""
    with VideoReader(source, backend=backend) as reader:
        return reader.get_frames(uniform_segment_indices(reader.num_frames, num_frames, train, generator))


# ------------------------------------------------------------------------------------------------- samplers


def uniform_segment_indices(
    num_frames: int, num_segments: int, train: bool = False, generator: torch.Generator | None = None
) -> list[int]:
    """TSN-style sampling: split ``[0, num_frames)`` into ``num_segments`` equal segments, one frame from each.

    Segment k covers ``[k·L, (k+1)·L)`` with ``L = num_frames / num_segments``. In evaluation the frame is the
    segment's centre, ``floor(k·L + L/2)``; in training it is ``floor(k·L + u·L)`` with ``u ~ U[0, 1)`` drawn
    per segment. Videos shorter than ``num_segments`` repeat frames. The centre is computed in integers and the
    training frame is kept within its segment, so float rounding never moves a frame into the previous segment.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    n, s = num_frames, num_segments
    if not train:  # exact: floor((2k+1)·n / 2s); in floats, a centre on a whole frame can come out just below it
        return [(2 * k + 1) * n // (2 * s) for k in range(s)]
    u = torch.rand(s, generator=generator).tolist()
    # floor((k+u)·L), kept inside segment k's frames [floor(k·n/s), ceil((k+1)·n/s) - 1] against rounding
    return [min(((k + 1) * n - 1) // s, max(k * n // s, math.floor((k + u[k]) * n / s))) for k in range(s)]


def fixed_fps_indices(
    num_frames: int,
    video_fps: float,
    target_fps: float,
    start: float = 0.0,
    end: float | None = None,
    max_frames: int | None = None,
) -> list[int]:
    """Frames at a fixed rate: times ``t_k = start + k / target_fps`` for ``t_k < end``, index ``round(t_k·fps)``.

    ``end`` defaults to the video's end (a later ``end`` is clipped to it). With ``max_frames``, the list is
    subsampled uniformly to that length.

    Raises:
        ValueError: a rate <= 0, ``start`` negative or not before the video's end, ``end <= start``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if video_fps <= 0 or target_fps <= 0:
        raise ValueError(f"video_fps and target_fps must be > 0, got {video_fps} and {target_fps}")
    length = num_frames / video_fps
    if start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if start >= length:
        raise ValueError(f"start={start} s is at or past the end of the video ({length:.3f} s)")
    if end is not None and end <= start:
        raise ValueError(f"end must be > start, got start={start} and end={end}")
    stop = length if end is None else min(end, length)
    n = max(1, int(math.ceil((stop - start) * target_fps - 1e-9)))
    idx = [min(num_frames - 1, int(round((start + k / target_fps) * video_fps))) for k in range(n)]
    if max_frames is not None and len(idx) > max_frames:
        idx = [idx[j] for j in uniform_segment_indices(len(idx), max_frames, train=False)]
    return idx


def sliding_window_indices(num_frames: int, window: int, stride: int, pad_last: bool = True) -> list[list[int]]:
    """Consecutive windows of ``window`` frames every ``stride`` frames: ``[s, s+window)`` for s = 0, stride, ...

    The last window is clamped to the last frame (repeating it) when ``pad_last`` and the video does not end on
    a window boundary; without ``pad_last`` incomplete windows are dropped.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    out = []
    s = 0
    while s < num_frames:
        if s + window > num_frames and not pad_last:
            break
        out.append([min(num_frames - 1, s + j) for j in range(window)])
        if s + window >= num_frames:
            break
        s += stride
    return out


def causal_window_indices(t: int, window: int) -> list[int]:
    """Streaming: the ``window`` frames ending at time step ``t`` (``[t-window+1, t]``), left-padded with frame 0.

    No index exceeds ``t``: the window never looks at the future.
    """
    if t < 0 or window < 1:
        raise ValueError(f"t must be >= 0 and window >= 1, got {t} and {window}")
    return [max(0, t - window + 1 + j) for j in range(window)]


# ----------------------------------------------------------------------------------------------- transforms


def _check_video(x: torch.Tensor, fn: str) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{fn}: expected a video tensor (T, C, H, W) with C in (1, 3), got shape {tuple(x.shape)}")


def resize_short_side(
    x: torch.Tensor, size: int, antialias: bool = True, interpolation: Literal["bilinear", "bicubic"] = "bilinear"
) -> torch.Tensor:
    """Resize (T, C, H, W) so that ``min(H, W) == size``, keeping the aspect ratio; dtype is preserved.

    The long side is ``int(size * long / short)``, truncated as torchvision's ``Resize(size)`` computes it, so that
    frames get the sizes the official pipelines (torchvision transforms) give them. ``interpolation``: ``bilinear``
    or ``bicubic`` (CLIP's preprocessing); with ``antialias`` both follow PIL's resampling filters. uint8 results are
    rounded and clamped to [0, 255] (bicubic overshoots)."""
    _check_video(x, "resize_short_side")
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"resize_short_side: interpolation={interpolation!r}, expected 'bilinear' or 'bicubic'")
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = max(1, int(size * long / short))
    new = (size, new_long) if h <= w else (new_long, size)
    if new == (h, w):
        return x
    y = F.interpolate(x.float(), size=new, mode=interpolation, align_corners=False, antialias=antialias)
    if x.dtype == torch.uint8:
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return y.to(x.dtype)


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Crop the central ``size`` (int or (h, w)) of (T, C, H, W). An odd margin is split as torchvision's
    ``CenterCrop`` splits it (offset ``round(margin / 2)``, Python's rounding), so crops match the official
    pipelines pixel for pixel."""
    _check_video(x, "center_crop")
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        raise ValueError(f"center_crop: crop {th}x{tw} larger than frames {h}x{w}")
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def random_crop(x: torch.Tensor, size: int | tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop ``size`` at a random position (the same for every frame) of (T, C, H, W)."""
    _check_video(x, "random_crop")
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        raise ValueError(f"random_crop: crop {th}x{tw} larger than frames {h}x{w}")
    top = int(torch.randint(0, h - th + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - tw + 1, (1,), generator=generator))
    return x[..., top : top + th, left : left + tw]


def normalize(x: torch.Tensor, stats: str | tuple[Sequence[float], Sequence[float]] = "imagenet") -> torch.Tensor:
    """uint8 (T, C, H, W) → float32 ``(x/255 - mean) / std``; ``stats`` is a name in :data:`NORMALIZATION`
    (``clip``, ``imagenet``, ``half``) or a ``(mean, std)`` pair."""
    _check_video(x, "normalize")
    if isinstance(stats, str):
        if stats not in NORMALIZATION:
            raise KeyError(f"normalize: unknown statistics {stats!r}; known: {sorted(NORMALIZATION)}")
        mean, std = NORMALIZATION[stats]
    else:
        mean, std = stats
    if not len(mean) == len(std) == x.shape[1]:  # else broadcasting would turn one channel into three silently
        raise ValueError(
            f"normalize: the video has {x.shape[1]} channels but the statistics give {len(mean)} means and "
            f"{len(std)} stds"
        )
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (y - m) / s


# --------------------------------------------------------------------------------------------------- writer


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor,
    fps: float | Fraction = 8.0,
    codec: str | None = None,
    gop: int | None = None,
    crf: int = 18,
) -> Path:
    """Write uint8 (T, 3, H, W) frames as ``.mp4`` (H.264, falling back to MPEG-4 Part 2) or ``.gif``.

    Args:
        path: output file; the suffix picks the container.
        frames: uint8 (T, 3, H, W), or float in [0, 1] (converted).
        fps: frame rate; a float is stored as the nearest fraction with denominator <= 1001, or pass a
            :class:`~fractions.Fraction`.
        codec: override the codec (``libx264``, ``mpeg4``, ``gif``).
        gop: keyframe interval (frames); ``None`` leaves the encoder's default. With inter-coded frames a
            frame decodes slightly differently depending on its distance from the last keyframe, so a
            single decoded frame carries a cue to its position; synthetic tasks where frame order must not
            be recoverable from one frame should write all-intra clips (``gop=1``).
        crf: H.264 quality (lower is better). ``0`` is lossless: the decoded frames are then the frames' YUV 4:2:0
            conversion exactly. Lossy libx264 output is not always repeatable (the same frames written twice can
            decode a few levels apart for some content), so generated data sets that must repeat bit for bit from
            a fresh write should use ``crf=0``.
    """
    import av

    path = Path(path)
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"write_video: expected frames (T, 3, H, W), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        frames = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (T, H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    h, w = arr.shape[1:3]
    # NTSC rates (30000/1001, 24000/1001, 60000/1001) survive the float round trip exactly
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if suffix == ".gif":
        with av.open(str(path), mode="w", format="gif") as out:
            stream = out.add_stream(codec or "gif", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "rgb8"
            for img in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path
    if h % 2 or w % 2:
        raise ValueError(f"write_video: {suffix} needs even frame sizes, got {h}x{w}")
    candidates = [codec] if codec else ["libx264", "mpeg4"]
    last_err: Exception | None = None
    for name in candidates:
        try:
            with av.open(str(path), mode="w") as out:
                options = {"crf": str(crf)} if name == "libx264" else {}
                if gop is not None:
                    options["g"] = str(gop)
                stream = out.add_stream(name, rate=rate, options=options)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                if name == "mpeg4":
                    stream.codec_context.bit_rate = 8_000_000
                if gop is not None:
                    stream.codec_context.gop_size = gop
                for img in arr:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            return path
        except (av.FFmpegError, ValueError) as err:  # codec not in this FFmpeg build
            last_err = err
    raise RuntimeError(f"write_video: no usable encoder among {candidates} for {str(path)!r}") from last_err
