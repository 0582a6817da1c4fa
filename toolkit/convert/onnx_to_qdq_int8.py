"""ONNX FP32 -> ONNX INT8 in QDQ form (static, per-channel) with onnxruntime.quantization."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from toolkit.errors import EdgeShrinkError


def onnx_to_qdq_int8(onnx_path: str | Path, out_path: str | Path, calibration_nchw: np.ndarray,
                     input_name: str = "input", per_channel: bool = True, method: str = "minmax") -> Path:
    """Static QDQ quantization (int8 weights per channel, int8 activations), calibrated on
    `calibration_nchw` (already normalised, model layout). Refuses an empty calibration set."""
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

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ortq-") as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return out_path
