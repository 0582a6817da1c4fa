"""ONNX FP32 -> ONNX INT8 in QDQ form (static, per-channel) with onnxruntime.quantization.

Schemes (activations x weights), and why the default is "s8s7":
- "s8s8": int8 activations and full-range int8 weights. On x86 with AVX2 but without VNNI,
  onnxruntime's u8s8 kernels add two u8 x s8 products in a saturating int16 (VPMADDUBSW), so the
  same file scores differently on VNNI and non-VNNI CPUs (issue 9: 81.81 % Intel vs 81.10 % AMD).
- "s8s7": the same with weights in 7 bits ([-64, 63], reduce_range): 255 * 64 * 2 = 32640 fits
  int16, so no pair sum can saturate and every CPU computes the same int32 sums.
- "u8u8": uint8 activations and weights; onnxruntime's u8u8 kernels widen to int16 before
  multiplying (no saturation) but cannot use VNNI, so they are slower on VNNI CPUs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError


SCHEMES = ("s8s7", "s8s8", "u8u8")


def onnx_to_qdq_int8(onnx_path: str | Path, out_path: str | Path, calibration_nchw: np.ndarray, *,
                     input_name: str = "input", per_channel: bool = True, method: str = "minmax",
                     scheme: str = "s8s7") -> Path:
    """Static QDQ quantization (weights per channel), calibrated on `calibration_nchw` (already
    normalised, model layout). `scheme` picks the integer types (see the module docstring; the
    default gives the same results on VNNI and non-VNNI CPUs). Refuses an empty calibration set."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration_nchw is None or len(calibration_nchw) == 0:
        raise EdgeShrinkError("ONNX INT8 quantization needs calibration data and the calibration set is empty; pass real images")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise EdgeShrinkError(f"unknown calibration method {method!r}; use one of {', '.join(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(np.asarray(calibration_nchw, np.float32))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x[None]}

    if scheme not in SCHEMES:
        raise EdgeShrinkError(f"unknown INT8 scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    act, weight = (QuantType.QUInt8, QuantType.QUInt8) if scheme == "u8u8" else (QuantType.QInt8, QuantType.QInt8)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ortq-") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        reduce_range=scheme == "s8s7", activation_type=act, weight_type=weight,
                        calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": scheme != "u8u8"})
    return out_path


def u8s8_saturation_rows(qdq_path: str | Path) -> dict:
    """How many output channels of Conv/Gemm/MatMul int8 weights *could* saturate onnxruntime's
    AVX2 (non-VNNI) u8s8 kernel: a row whose two largest |w| sum above 128 can, with a full-scale
    uint8 activation (255 * 129 > 32767), overflow the int16 pair sum, whatever the kernel's
    packing order. uint8 weights (scheme u8u8) run in kernels that widen to int16 before
    multiplying: their rows count, none can saturate. Returns {"rows": n, "rows_can_saturate": k,
    "max_pair": m}; k == 0 means the file computes the same int32 sums on every CPU."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_out = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    rows = risky = max_pair = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = inits.get(dq_out.get(node.input[1], ""))
        if w is None or w.dtype not in (np.int8, np.uint8):
            continue
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and groups > 1 and w.shape[1] == 1:
            continue  # depthwise convs run in a separate kernel, not the u8s8 GEMM: not counted
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        m = w.reshape(w.shape[0], -1) if node.op_type == "Conv" or trans_b else w.T
        top2 = -np.sort(-np.abs(m.astype(np.int32)), axis=1)[:, :2].sum(1)
        rows += len(top2)
        if w.dtype == np.int8:
            risky += int((top2 > 128).sum())
            max_pair = max(max_pair, int(top2.max()))
    return {"rows": rows, "rows_can_saturate": risky, "max_pair": max_pair}
