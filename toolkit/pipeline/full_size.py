"""Files a task declares at another input size than the model's (segmentation: whole 256x256
slices), converted through the same converters, benchmarked, and the time per unit estimated."""

from __future__ import annotations

import numpy as np


def _pad_to(x_nchw: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = x_nchw.shape
    out = np.zeros((n, c, size, size), np.float32)
    oy, ox = (size - h) // 2, (size - w) // 2
    out[:, :, oy:oy + h, ox:ox + w] = x_nchw
    return out


def full_size_benchmarks(runner, task, declared: dict) -> dict:
    """Files at the full input size a task declares (`task.extra_sizes()`: size, inputs per unit and
    the unit's name): dense/pruned TFLite FP32 (pruned INT8 too), benchmarked, with the time per unit
    (p50 x inputs per unit, e.g. slices per held-out volume)."""
    full_size = declared["size"]
    work, name, target, clock = runner.work, runner.name, runner.target, runner.clock
    models = {"dense": runner.families["dense"].model, "pruned": runner.families["pruned"].model}
    calib_nchw = runner.calib_nchw
    from toolkit.models.artifact import Artifact
    from toolkit.bench.host import benchmark_file
    from toolkit.convert.cache import cached_onnx_to_tflite
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite as uncached
    from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS, require_full_integer
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.convert.onnx_rewrite import rewrites_for

    xnnpack = target.runtime.delegate == "xnnpack"  # the same delegate-friendly forms as the bundle's files

    shape = (1, task.spec.channels, full_size, full_size)
    calib = _pad_to(calib_nchw, full_size).transpose(0, 2, 3, 1)
    slices_per_volume = declared["per_unit"]
    b = target.benchmark
    rows = []
    for stage, model in models.items():
        int8 = stage == "pruned" and "int8" in target.precisions
        with clock("full-slice 256 export"):
            onnx_path = torch_to_onnx(model, shape, work / f"{name}_{stage}_fp32_{full_size}.onnx")
            convert = cached_onnx_to_tflite if runner.plan.cache else uncached
            out = convert(onnx_path, work, calib, task.spec.mean, task.spec.std, int8=int8,
                          io_dtype=target.quantization.io_dtype, rewrite_ops=rewrites_for(target.runtime.delegate))
            files = [("fp32", out.float32.rename(work / f"{name}_{stage}_fp32_{full_size}.tflite"))]
            if out.int8:
                q = out.int8.rename(work / f"{name}_{stage}_int8_{full_size}.tflite")
                require_full_integer(q, target.quantization.io_dtype, float_ops=XNNPACK_FLOAT_ISLAND_OPS if xnnpack else ())
                files.append(("int8", q))
            onnx_path.unlink()
        for precision, path in files:
            with clock("benchmark"):
                r = benchmark_file(path, "tflite", shape, threads=target.bench_threads, warmup=b.warmup,
                                   min_runs=b.min_runs, min_seconds=b.min_seconds)
            a = Artifact.of_file(work, path, name=f"{stage}-tflite-{precision}-{full_size}", stage=stage, format="tflite",
                                 precision=precision)
            rows.append({**a.to_dict(), "input_shape": list(shape), "latency_ms": r["latency_ms"], "fps": r["fps"],
                         "slices_per_s": r["fps"], "peak_rss_mb": r["peak_rss_mb"],
                         "volume_ms_estimate": r["latency_ms"]["p50"] * slices_per_volume})
    return {"size": full_size, "slices_per_volume": slices_per_volume, "rows": rows,
            "note": "volume_ms_estimate = p50 per slice x mean slices per held-out volume"}
