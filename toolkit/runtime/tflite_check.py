"""Inspect a .tflite file: is it really full-integer?"""

from __future__ import annotations

from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}
_INT_TYPES = {"int8", "uint8", "int16", "int32", "int64", "bool"}


def float_compute_ops(tflite_path: str | Path) -> list[str]:
    """Names of ops (other than QUANTIZE/DEQUANTIZE) that read or write a float tensor."""
    from toolkit.runtime.tflite import make_interpreter

    interp = make_interpreter(tflite_path, threads=1)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    bad = []
    for op in interp._get_ops_details():
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        for idx in list(op["inputs"]) + list(op["outputs"]):
            if idx < 0 or idx not in tensors:
                continue
            if tensors[idx]["dtype"].__name__ not in _INT_TYPES:
                bad.append(f"{op['op_name']}#{op['index']}")
                break
    return bad


def io_dtypes(tflite_path: str | Path) -> tuple[str, str]:
    from toolkit.runtime.tflite import make_interpreter

    interp = make_interpreter(tflite_path, threads=1)
    return interp.get_input_details()[0]["dtype"].__name__, interp.get_output_details()[0]["dtype"].__name__


def require_full_integer(tflite_path: str | Path, io_dtype: str) -> None:
    """Raise when an "INT8" file still computes in float or has the wrong input/output type."""
    bad = float_compute_ops(tflite_path)
    if bad:
        raise EdgeShrinkError(
            f"{Path(tflite_path).name} is not full-integer: {len(bad)} float op(s) remain ({', '.join(bad[:5])}); "
            "check the calibration data and that every op has an int8 kernel"
        )
    require_io_dtype(tflite_path, io_dtype)


def require_io_dtype(tflite_path: str | Path, io_dtype: str) -> None:
    """Raise when the file's input or output is not `io_dtype` (what the profile asks for)."""
    din, dout = io_dtypes(tflite_path)
    if din != io_dtype or dout != io_dtype:
        raise EdgeShrinkError(f"{Path(tflite_path).name} has {din}/{dout} input/output but the profile asks for {io_dtype}")
