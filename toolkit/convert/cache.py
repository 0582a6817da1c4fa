"""Content-addressed cache for ONNX -> TFLite conversions (onnx2tf takes ~20-60 s per model).

The key covers everything that changes the output: the ONNX bytes, the calibration data,
mean/std, INT8 on/off, the I/O dtype and the onnx2tf/TensorFlow versions. Deploying one model to
several targets with the same pruning converts it once. Runs with `--no-cache` do not use it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.convert.onnx_to_tflite import TFLiteOutputs, onnx_to_tflite
from toolkit.core.paths import cache_dir


def _key(onnx_path: Path, calib: Optional[np.ndarray], mean, std, *, int8: bool, io_dtype: str,
         rewrite_ops: Optional[tuple] = None) -> str:
    from toolkit.convert.onnx_rewrite import REWRITE_VERSION

    h = hashlib.sha256(Path(onnx_path).read_bytes())
    if calib is not None:
        h.update(np.ascontiguousarray(calib, np.float32).tobytes())
        h.update(str(calib.shape).encode())
    versions = [metadata.version(n) for n in ("onnx2tf", "tensorflow")]
    rewrites = (REWRITE_VERSION, None if rewrite_ops is None else tuple(rewrite_ops))
    h.update(repr((tuple(mean), tuple(std), int8, io_dtype, versions, rewrites)).encode())
    return h.hexdigest()[:32]


def _write_digests(entry: Path) -> None:
    from toolkit.models.checkpoint import sha256_file

    digests = {p.name: sha256_file(p) for p in sorted(entry.glob("*.tflite"))}
    (entry / "sha256.json").write_text(json.dumps(digests))


def _entry_ok(entry: Path, int8: bool) -> bool:
    """The entry holds the files asked for, each matching the sha256 written with it."""
    from toolkit.models.checkpoint import sha256_file

    try:
        digests = json.loads((entry / "sha256.json").read_text())
    except (OSError, ValueError):
        return False
    needed = ["float32.tflite"] + (["int8.tflite"] if int8 else [])
    return all(n in digests and (entry / n).is_file() and sha256_file(entry / n) == digests[n] for n in needed)


def cached_onnx_to_tflite(onnx_path: Path, out_dir: Path, calibration_nhwc: Optional[np.ndarray], mean, std, *,
                          int8: bool = True, io_dtype: str = "int8", rewrite_ops: Optional[tuple] = None) -> TFLiteOutputs:
    """onnx_to_tflite, reusing an earlier identical conversion when there is one. Every entry is
    stored with the sha256 of its files and checked on each hit; a bad entry is rebuilt."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    entry = cache_dir() / "tflite" / _key(onnx_path, calibration_nhwc, mean, std, int8=int8, io_dtype=io_dtype,
                                          rewrite_ops=rewrite_ops)
    stem = onnx_path.stem
    fp32, q = out_dir / f"{stem}_float32.tflite", (out_dir / f"{stem}_int8.tflite") if int8 else None
    if entry.exists() and not _entry_ok(entry, int8):
        print(f"[edgeshrink] warning: cached TFLite conversion {entry.name} failed its sha256 check; converting again")
        shutil.rmtree(entry, ignore_errors=True)
    if not entry.exists():
        fresh = onnx_to_tflite(onnx_path, out_dir, calibration_nhwc, mean, std, int8=int8, io_dtype=io_dtype,
                               rewrite_ops=rewrite_ops)
        tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh.float32, tmp / "float32.tflite")
        if fresh.int8:
            shutil.copyfile(fresh.int8, tmp / "int8.tflite")
        (tmp / "onnx2tf_options.txt").write_text(" ".join(fresh.onnx2tf_options))
        (tmp / "rewrites.txt").write_text("\n".join(fresh.rewrites))
        _write_digests(tmp)
        if not entry.exists():
            os.replace(tmp, entry)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return fresh
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry / "float32.tflite", fp32)
    if q:
        shutil.copyfile(entry / "int8.tflite", q)
    options = entry / "onnx2tf_options.txt"
    rewrites = entry / "rewrites.txt"
    return TFLiteOutputs(fp32, q, tuple(options.read_text().split()) if options.is_file() else (),
                         tuple(rewrites.read_text().splitlines()) if rewrites.is_file() else ())
