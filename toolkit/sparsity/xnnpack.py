"""Can a runtime use the zeros? XNNPACK's sparse inference (Fast Sparse ConvNets) runs only on
FP32 TFLite files whose weights are stored sparse (DENSIFY operators, written by the TFLite
converter with `tf.lite.Optimize.EXPERIMENTAL_SPARSITY`), on a subgraph that starts with a
3x3 stride-2 conv on 3 channels, ends in a spatial MEAN, holds only 1x1 convs (>= 2/3 zeros),
3x3/5x5 depthwise convs and elementwise ops. `sparse_tflite` writes such a file from an ONNX
model; `measure_sparse_speedup` times it against the dense FP32 file on the same interpreter.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError

NO_SPEEDUP = "no speed-up: dense kernels"


def sparse_tflite(onnx_path: str | Path, out_path: str | Path) -> Path:
    """ONNX -> FP32 TFLite with sparse-encoded weights (onnx2tf to a SavedModel, then the TFLite
    converter with EXPERIMENTAL_SPARSITY). Returns out_path."""
    import onnx2tf
    import tensorflow as tf

    from toolkit.convert.onnx_to_tflite import ONNX2TF_SAMPLE, _cwd

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="sparse-tflite-") as work:
        work = Path(work)
        np.save(work / ONNX2TF_SAMPLE, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        source = work / Path(onnx_path).name
        source.write_bytes(Path(onnx_path).read_bytes())
        with _cwd(work), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            try:
                onnx2tf.convert(input_onnx_file_path=str(source), output_folder_path=str(work / "tf"), non_verbose=True)
            except SystemExit as exc:
                raise EdgeShrinkError(f"onnx2tf could not convert {source.name} (exit {exc.code}); run onnx2tf -i {onnx_path} to see why") from None
        converter = tf.lite.TFLiteConverter.from_saved_model(str(work / "tf"))
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(converter.convert())
    return out_path


def densify_ops(path: str | Path) -> int:
    """How many DENSIFY operators (sparse-stored weights) a TFLite file holds."""
    from ai_edge_litert import schema_py_generated as fb

    raw = Path(path).read_bytes()
    model = fb.Model.GetRootAs(raw, 0)
    count = 0
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
            count += max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == fb.BuiltinOperator.DENSIFY
    return count


def _p50_ms(path: Path, threads: int, runs: int) -> float:
    import time

    from toolkit.runtime.tflite import make_interpreter

    interp = make_interpreter(path, threads)
    inp = interp.get_input_details()[0]
    x = np.random.default_rng(0).random(inp["shape"], dtype=np.float32).astype(inp["dtype"])
    times = []
    for i in range(runs + 5):
        interp.set_tensor(inp["index"], x)
        t0 = time.perf_counter()
        interp.invoke()
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50))


def measure_sparse_speedup(dense_tflite: str | Path, sparse_file: str | Path, *, threads: int = 1,
                           runs: int = 50, repeats: int = 2) -> dict:
    """p50 latency of the dense and the sparse-encoded FP32 file (interleaved, lowest of
    `repeats`), the DENSIFY count and a verdict: "sparse kernels: x.xx times faster" or
    NO_SPEEDUP when the sparse file is not >= 10 % faster."""
    dense_ms, sparse_ms = [], []
    for _ in range(repeats):
        dense_ms.append(_p50_ms(Path(dense_tflite), threads, runs))
        sparse_ms.append(_p50_ms(Path(sparse_file), threads, runs))
    d, s = min(dense_ms), min(sparse_ms)
    speedup = d / s
    verdict = f"sparse kernels: {speedup:.2f} times faster" if speedup >= 1.1 else NO_SPEEDUP
    return {"dense_p50_ms": round(d, 3), "sparse_p50_ms": round(s, 3), "speedup": round(speedup, 3),
            "densify_ops": densify_ops(sparse_file), "threads": threads, "runs": runs, "verdict": verdict}
