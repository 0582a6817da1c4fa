"""Benchmark one model file in this process and print a JSON result line.

Run as `python -m toolkit.bench.worker FILE --format tflite --threads 2 --shape 1,3,128,128`.
A separate process per model gives each a clean peak-memory figure (ru_maxrss)."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--format", required=True, choices=["torch", "onnx", "tflite"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", required=True, help="NCHW input shape, e.g. 1,3,128,128")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-runs", type=int, default=50)
    p.add_argument("--min-seconds", type=float, default=2.0)
    args = p.parse_args(argv)

    from toolkit.runtime.timing import peak_rss_mb, time_calls
    from toolkit.runtime import open_runner

    from toolkit.core.errors import EdgeShrinkError

    base_rss_mb = peak_rss_mb()
    try:
        runner = open_runner(args.file, args.format, args.threads)
    except EdgeShrinkError as exc:  # one line for the parent (it reports the last stderr line)
        print(exc, file=sys.stderr)
        return 2
    shape = tuple(int(s) for s in args.shape.split(","))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    prepared = runner.prepare(x)
    result = time_calls(lambda: runner.invoke(prepared), args.warmup, args.min_runs, args.min_seconds)
    result.update({"format": args.format, "threads": args.threads, "input_shape": list(shape),
                   "peak_rss_mb": peak_rss_mb(),
                   "runtime_import_rss_mb": base_rss_mb})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
