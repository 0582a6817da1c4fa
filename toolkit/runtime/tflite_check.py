"""Inspect a .tflite file: is it really full-integer?"""

from __future__ import annotations

from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}
_INT_TYPES = {"int8", "uint8", "int16", "int32", "int64", "bool"}
# ops TFLite has no delegated INT8 kernel for, which the delegate-friendly rewrites
# (toolkit.convert.onnx_rewrite: normalisation, softmax) leave in float between DEQUANTIZE and
# QUANTIZE; XNNPACK runs them in FP32 inside the same partition as the INT8 ops around them
XNNPACK_FLOAT_ISLAND_OPS = ("DIV", "SQRT")


def custom_ops(tflite_path: str | Path) -> list[str]:
    """Names of the custom ops a .tflite file uses (Select TF ops are `Flex<Op>`), read from the
    flatbuffer: a file with Flex ops cannot even be loaded by a runtime without the Flex delegate."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(tflite_path).read_bytes(), 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == schema.BuiltinOperator.CUSTOM:
            names.append((code.CustomCode() or b"?").decode(errors="replace"))
    return sorted(names)


def require_builtin_ops(tflite_path: str | Path) -> None:
    """Refuse a file holding Select TF ops (`Flex*`): LiteRT, tflite-runtime and the device
    scripts load no Flex delegate, so such a file must never be deployed."""
    flex = [name for name in custom_ops(tflite_path) if name.startswith("Flex")]
    if flex:
        raise EdgeShrinkError(
            f"{Path(tflite_path).name} holds TensorFlow Select op(s) {', '.join(flex)}, which no device runtime here "
            "loads (no Flex delegate); convert with the other converter (tflite_converter: litert-torch, "
            "`make setup-litert`) or replace the op in the model")


def require_loads_with_xnnpack(tflite_path: str | Path) -> None:
    """Refuse a file that LiteRT cannot prepare with XNNPACK: the delegate can claim ops and then fail
    to build its runtime for them (onnx2tf's INT8 file of timm's vit_tiny_r_s16_p8_224: "failed to
    create XNNPACK runtime"), and a device would fail the same way."""
    from toolkit.runtime.tflite import make_interpreter

    try:
        make_interpreter(tflite_path, 1, xnnpack=True)
    except (RuntimeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise EdgeShrinkError(f"{Path(tflite_path).name} does not load with XNNPACK ({(lines or [type(exc).__name__])[0][:200]}); "
                              "convert with the other converter (tflite_converter: onnx2tf or litert-torch) or deploy "
                              "for a target without XNNPACK") from None


def float_compute_ops(tflite_path: str | Path) -> list[str]:
    """Names of ops (other than QUANTIZE/DEQUANTIZE) that read or write a float tensor: the file's
    own ops (no delegate applied, which would hide them inside DELEGATE nodes)."""
    from toolkit.runtime.tflite import make_interpreter

    interp = make_interpreter(tflite_path, threads=1, xnnpack=False)
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


def require_full_integer(tflite_path: str | Path, io_dtype: str, *, float_ops: tuple = ()) -> None:
    """Raise when an "INT8" file still computes in float (other than ops named in `float_ops`, e.g.
    XNNPACK_FLOAT_ISLAND_OPS for XNNPACK targets), has the wrong input/output type, or holds Flex ops."""
    require_builtin_ops(tflite_path)
    bad = [op for op in float_compute_ops(tflite_path) if op.split("#")[0] not in float_ops]
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
