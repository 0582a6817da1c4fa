"""The sparsity fields an `edgeshrink run --sparsity S` bundle report carries."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from toolkit.sparsity.xnnpack import NO_SPEEDUP


def bundle_sparsity_fields(record: dict, files: dict[str, tuple[str | Path, str]], *,
                           sparse_timing: Optional[dict] = None) -> dict:
    """`record`: what `sparsify` returned; `files`: label -> (path, "onnx"|"tflite") of the
    bundle's exported files; `sparse_timing`: `measure_sparse_speedup(...)` of the FP32 TFLite
    file against its sparse-encoded twin, when the run made one. Per file: zeros present, raw
    and gzip bytes, and whether any kernel uses the zeros (only XNNPACK's FP32 sparse path can;
    INT8 and ONNX Runtime files always run dense kernels)."""
    from toolkit.sparsity.measure import sparsity_report

    out = {"target_sparsity": record["config"]["sparsity"], "scope": record["config"]["scope"],
           "schedule": record["config"]["schedule"], "model_prunable_zero_fraction": record["prunable_zero_fraction"],
           "files": {}}
    for label, (path, fmt) in files.items():
        r = sparsity_report(path, fmt)
        out["files"][label] = {"prunable_zero_fraction": r["prunable_zero_fraction"], "raw_bytes": r["raw_bytes"],
                               "gzip_bytes": r["gzip_bytes"], "gzip_ratio": r["gzip_ratio"],
                               "kernels": NO_SPEEDUP}
    if sparse_timing is not None:
        out["xnnpack_sparse"] = sparse_timing
        for label, (path, fmt) in files.items():
            if fmt == "tflite" and "float32" in Path(path).name:
                out["files"][label]["kernels"] = sparse_timing["verdict"]
    return out
