"""The timing loop shared by every harness: warm-up, then >= N runs and >= T seconds."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def time_calls(call: Callable[[], object], warmup: int = 10, min_runs: int = 50, min_seconds: float = 2.0,
               max_runs: int = 100_000) -> dict:
    """Latency percentiles (ms) and FPS of `call()`; runs until both min_runs and min_seconds pass."""
    for _ in range(warmup):
        call()
    samples = []
    started = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - started < min_seconds):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000.0)
    ms = np.asarray(samples)
    return summarize_ms(ms)


def summarize_ms(ms: np.ndarray) -> dict:
    """The common latency record from raw per-run milliseconds."""
    ms = np.asarray(ms, dtype=np.float64)
    return {
        "runs": int(ms.size),
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                       "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min())},
        "fps": float(1000.0 / np.percentile(ms, 50)),
    }
