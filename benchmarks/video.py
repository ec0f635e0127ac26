"""Video sampling throughput: mmzoo.video's seeking reader against decoding the whole file with PyAV.

Cases: 8 and 16 frames sampled uniformly (eval centres) from generated H.264 clips. On a GPU machine the default
is the full grid (720p and 1080p, 30 s and 5 min); on a CPU the 30 s clips only (``--full`` forces the grid).
torchcodec is measured too when installed. One JSON line per case (see mmzoo.bench). With ``MMZOO_BENCH_SMOKE=1`` it
runs one 2 s clip of 96×64 once per case (a check that the script runs, not a timing; records say ``"smoke": true``).

    python benchmarks/video.py [--full] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from mmzoo.bench import emit, peak_rss_mb, smoke_mode
from mmzoo.video import VideoReader, uniform_segment_indices
from tqdm import tqdm

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}


def make_clip(path: Path, height: int, width: int, seconds: int, fps: int = 30) -> Path:
    """A moving gradient, encoded frame by frame (never all frames in memory), keyframe every 2 s."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"preset": "ultrafast", "g": str(2 * fps)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in tqdm(range(seconds * fps), desc=f"encode {path.name}", total=seconds * fps):
            img = np.stack([(xx + 4 * k) % 256, (yy + 2 * k) % 256, np.full_like(xx, k % 256)], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def naive_decode_all(path: Path, indices: list[int]) -> torch.Tensor:
    """Decode every frame in order and keep the wanted ones."""
    wanted, frames = set(indices), {}
    with av.open(str(path)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            if k in wanted:
                frames[k] = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="720p/1080p × 30 s/5 min even without a GPU")
    ap.add_argument("--cache", default="benchmarks/.cache", help="where generated clips are kept")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    smoke = smoke_mode()
    full = args.full or torch.cuda.is_available()
    durations = [2] if smoke else [30, 300] if full else [30]
    sizes = {"smoke": (64, 96)} if smoke else SIZES
    repeats = 1 if smoke else args.repeats
    try:
        import torchcodec  # noqa: F401

        backends = ["pyav", "torchcodec"]
    except ImportError:
        backends = ["pyav"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for size, (h, w) in sizes.items():
        for secs in durations:
            clip = make_clip(Path(args.cache) / f"clip_{size}_{secs}s.mp4", h, w, secs)
            with VideoReader(clip) as r:
                n = r.num_frames
            for k in (8, 16):
                idx = uniform_segment_indices(n, k, train=False)
                cases = {"naive_pyav_decode_all": lambda idx=idx, clip=clip: naive_decode_all(clip, idx)}
                for backend in backends:

                    def sample(idx=idx, clip=clip, backend=backend):
                        with VideoReader(
                            clip, backend=backend, device=device if backend == "torchcodec" else "cpu"
                        ) as rd:
                            return rd.get_frames(idx)

                    cases[f"mmzoo_{backend}"] = sample
                for case, fn in cases.items():
                    secs_taken = timed(fn, repeats)
                    emit(
                        {
                            "bench": "video",
                            "case": case,
                            "clip": f"{size}_{secs}s",
                            "batch": k,
                            "device": "cpu" if case != "mmzoo_torchcodec" else device,
                            "step_ms": round(secs_taken * 1000, 1),
                            "samples_per_s": round(k / secs_taken, 2),
                            "peak_mem_mb": round(peak_rss_mb(), 1),
                            **({"smoke": True} if smoke else {}),
                        }
                    )


if __name__ == "__main__":
    main()
