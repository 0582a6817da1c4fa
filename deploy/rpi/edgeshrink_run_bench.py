"""Benchmarking for edgeshrink_run.py: model-only latency (set_tensor + invoke) on one fixed input.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy and
edgeshrink_common."""

import edgeshrink_common as C
import numpy as np


def benchmark(model, args, cfg: dict) -> dict:
    """Model-only latency on one fixed random input of the model's own input shape and type
    (set_tensor + invoke): RGB pixels prepared as images are for 3-channel models, else random
    values. Warm-up, runs and seconds come from --warmup/--runs/--seconds, else the profile's
    benchmark settings `cfg`. Under an emulator the record carries a 'note' that its timings say
    nothing about the real device."""
    model.set_batch(1)
    rng = np.random.default_rng(0)
    shape, dtype = tuple(int(s) for s in model.inp["shape"]), np.dtype(model.inp["dtype"])
    if model.channels == 3 and model.prep.get("mode") in ("raw", "unit", "mean_std"):
        tensor = model.tensor(rng.integers(0, 256, (1, model.height, model.width, 3), dtype=np.uint8))
    elif dtype.kind in "iu":  # any other input (1-channel slices, ...): random values of the input's type
        info = np.iinfo(dtype)
        tensor = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    else:
        tensor = rng.standard_normal(shape).astype(dtype)

    def call():
        model.interp.set_tensor(model.inp["index"], tensor)
        model.interp.invoke()

    bench = C.time_calls(call, args.warmup if args.warmup is not None else cfg.get("warmup", 20),
                         args.runs or cfg.get("min_runs", 100),
                         args.seconds if args.seconds is not None else cfg.get("min_seconds", 5.0))
    lat = bench["latency_ms"]
    emulated = C.emulator()
    print(f"model-only: p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms, "
          f"{bench['fps']:.1f} FPS over {bench['runs']} runs")
    if emulated:
        bench["note"] = f"emulated by {emulated}: these timings say nothing about the real device"
        print(f"note: {bench['note']}")
    return bench
