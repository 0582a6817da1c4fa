"""Host benchmark: run the worker in a fresh process for each model file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.work_limit import run_limited


def benchmark_file(path: str | Path, fmt: str, input_shape: tuple[int, ...], *, threads: int = 2, warmup: int = 10,
                   min_runs: int = 50, min_seconds: float = 2.0, cpu_limit_s: float = 1200) -> dict:
    """Latency/FPS/peak-memory record of one model file, measured in a child process that may spend
    `cpu_limit_s` CPU seconds (toolkit.core.work_limit)."""
    from toolkit.core.provenance import machine_description

    cmd = [sys.executable, "-m", "toolkit.bench.worker", str(path), "--format", fmt, "--threads", str(threads),
           "--shape", ",".join(map(str, input_shape)), "--warmup", str(warmup), "--min-runs", str(min_runs),
           "--min-seconds", str(min_seconds)]
    proc = run_limited(cmd, cpu_seconds=cpu_limit_s, what=f"the benchmark of {Path(path).name}",
                       fix="benchmark with fewer runs (--min-runs) or a smaller model", capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeShrinkError(f"benchmark of {Path(path).name} failed: {tail}")
    result = json.loads(lines[-1])
    result["device"] = {"kind": "host", **machine_description()}
    return result
