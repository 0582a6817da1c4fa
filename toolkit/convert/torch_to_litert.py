"""torch.nn.Module -> LiteRT directly (litert-torch), INT8 by ai-edge-quantizer static quantization.

A second path beside torch -> ONNX -> onnx2tf. litert-torch 0.10 needs ai-edge-litert 2.3.0
and a numpy/jax stack the main venv's TensorFlow (onnx2tf) does not take, so it lives in its own venv
(requirements-litert.txt, `make setup-litert`) and runs there as a child process
(toolkit.convert.litert_child, called by toolkit.convert.checkpoint_to_litert). ai-edge-quantizer
keeps float input/output (QUANTIZE/DEQUANTIZE at the edges); LiteRT's modify_model_interface then
gives the INT8 file int8 input/output, as onnx2tf's full-integer file has (after the constants the
quantizer stores past the flatbuffer's end are moved back inside it, which that tool needs).
The file takes NHWC input and gives 4-D outputs as NHWC (permutes are traced into the model), like
onnx2tf's files, so toolkit.runtime.tflite.TFLiteRunner runs both."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.convert.onnx_to_tflite import TFLiteOutputs
from toolkit.core.errors import EdgeShrinkError

INSTALL = "make setup-litert (the .venv-litert converter venv; run it there through toolkit.convert.checkpoint_to_litert)"
_TENSOR_TYPE = {"float32": 0, "int8": 9, "uint8": 3}  # tflite schema TensorType


def _nhwc(model):
    import torch

    class NHWCInputOutput(torch.nn.Module):
        """NHWC in; 4-D outputs NHWC out (onnx2tf's layout, which TFLiteRunner expects), others as they are."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x.permute(0, 3, 1, 2))
            return y.permute(0, 2, 3, 1) if y.dim() == 4 else y

    return NHWCInputOutput(model).eval()


def torch_to_litert(model, input_shape: tuple[int, ...], out_dir: str | Path,
                    calibration_nhwc: Optional[np.ndarray] = None, mean: tuple = (0.0,), *, std: tuple = (1.0,),
                    int8: bool = True, stem: str = "model", io_dtype: str = "int8", threads: int = 1,
                    float_ops: tuple = ()) -> TFLiteOutputs:
    """Write `<stem>_float32.tflite` and, with `int8`, `<stem>_int8.tflite` (static int8 weights and
    activations, int8 input/output, calibrated on `calibration_nhwc`: real NHWC images in [0, 1]
    before mean/std), with `io_dtype` (int8/uint8) input and output. `input_shape` is the torch
    (N, C, H, W). Refuses INT8 without calibration data and says how to install litert-torch when
    it is missing. `float_ops` (TFLite op names, e.g. DIV, SQRT for XNNPACK) stay float in the INT8
    file: ai-edge-quantizer makes them INT8, which XNNPACK does not take (a partition break each);
    float, XNNPACK runs them inside the partition (toolkit.runtime.tflite_check.XNNPACK_FLOAT_ISLAND_OPS)."""
    try:
        import litert_torch
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise EdgeShrinkError(f"litert-torch is not installed ({exc.name} missing); install it in its own venv: {INSTALL}") from None
    import torch

    if io_dtype not in ("int8", "uint8"):
        raise EdgeShrinkError(f"io_dtype must be int8 or uint8, got {io_dtype!r}")
    if int8 and (calibration_nhwc is None or len(calibration_nhwc) == 0):
        raise EdgeShrinkError("INT8 conversion needs calibration data and the calibration set is empty; pass real images")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, c, h, w = input_shape
    wrapped = _nhwc(model.eval())
    fp32 = out_dir / f"{stem}_float32.tflite"
    litert_torch.convert(wrapped, (torch.zeros(n, h, w, c),)).export(str(fp32))
    if not int8:
        return TFLiteOutputs(fp32, None)
    x = (np.asarray(calibration_nhwc, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    q = quantizer.Quantizer(str(fp32), recipe.static_wi8_ai8())
    for op in float_ops:
        q.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key="no_quantize")
    key, name = _signature(fp32)
    result = q.calibrate({key: [{name: x[i:i + 1]} for i in range(len(x))]}, num_threads=threads)
    float_io = out_dir / f"{stem}_int8_float_io.tflite"
    q.quantize(result, enable_progress_report=False).export_model(str(float_io), overwrite=True)
    _inline_buffers(float_io)
    q8 = out_dir / f"{stem}_int8.tflite"
    _integer_interface(float_io, q8, io_dtype)
    float_io.unlink()
    return TFLiteOutputs(fp32, q8)


def _inline_buffers(path: Path) -> None:
    """Rewrite `path` with every constant inside the flatbuffer. ai-edge-quantizer 0.10 appends
    buffers over 1 KB after it (offset/size), and modify_model_interface drops that tail: its
    output would fail to load ("Constant buffer N specified an out of range offset")."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))  # resolves offsets
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def _integer_interface(source: Path, dest: Path, io_dtype: str) -> None:
    """Drop the float QUANTIZE/DEQUANTIZE at the model's edges: `dest` takes and returns `io_dtype`."""
    from ai_edge_litert import _pywrap_modify_model_interface as mmi

    status = mmi.modify_model_interface(str(source), str(dest), _TENSOR_TYPE[io_dtype], _TENSOR_TYPE[io_dtype])
    if status != 0 or not dest.is_file():
        raise EdgeShrinkError(f"could not give {source.name} {io_dtype} input/output (modify_model_interface status {status}); "
                              "its first op must be QUANTIZE and its last DEQUANTIZE; inspect it with a TFLite viewer")


def _signature(path: Path) -> tuple[str, str]:
    """(signature key, its only input name) of a LiteRT file."""
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(sig))
    return key, sig[key]["inputs"][0]
