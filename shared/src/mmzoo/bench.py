"""The benchmark harness: warm-up, CUDA synchronisation, throughput, peak memory, one JSON line per case.

A benchmark script builds a step function and calls :func:`measure`; :func:`emit` prints the record as one
JSON line (and appends it to ``benchmarks/results/<device>.jsonl`` when ``MMZOO_BENCH_OUT`` names a folder)::

    rec = measure(step, items_per_call=batch, warmup=3, iters=10, device=device)
    emit({"bench": "pckd", "case": "train_step", "batch": batch, **rec})

With ``MMZOO_BENCH_SMOKE=1`` in the environment :func:`measure` calls the step once, without warm-up, and marks the
record ``"smoke": true``: a check that a benchmark still runs (the workspace tests use it), not a timing.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["device_name", "measure", "emit", "peak_rss_mb", "pick_device", "smoke_mode"]


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    """A file-name-safe device label: the GPU's name, or ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return "cpu"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def smoke_mode() -> bool:
    """Whether ``MMZOO_BENCH_SMOKE`` asks for a smoke run (set and not ``0`` or empty)."""
    return os.environ.get("MMZOO_BENCH_SMOKE", "").strip() not in ("", "0")


def measure(
    fn: Callable[[], object],
    items_per_call: int,
    device: torch.device,
    warmup: int = 3,
    iters: int = 10,
) -> dict:
    """Time ``fn`` after ``warmup`` calls; report ms per call, items/s and peak memory.

    On CUDA the peak is ``torch.cuda.max_memory_allocated`` over the timed calls; on CPU it is the process's
    peak RSS (which includes everything allocated before, so compare CPU peaks within one run only).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    smoke = smoke_mode()
    if smoke:
        warmup, iters = 0, 1
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = peak_rss_mb()
    return {
        "device": device_name(device),
        "step_ms": round(median * 1000, 3),
        "samples_per_s": round(items_per_call / median, 2),
        "peak_mem_mb": round(peak, 1),
        "iters": iters,
        **({"smoke": True} if smoke else {}),
    }


def emit(record: dict) -> None:
    """Print ``record`` as one JSON line; also append it to ``$MMZOO_BENCH_OUT/<device>.jsonl`` when set."""
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    out = os.environ.get("MMZOO_BENCH_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / f"{record.get('device', 'unknown')}.jsonl", "a") as f:
            f.write(line + "\n")
