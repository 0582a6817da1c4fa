"""torch.nn.Module -> LiteRT directly (litert-torch), INT8 by ai-edge-quantizer static quantization.

A second path beside torch -> ONNX -> onnx2tf. Optional: litert-torch 0.10 needs ai-edge-litert
2.3.0 (ai-edge-quantizer 0.10 pins it) while the project pins 2.1.0, so it is not in
requirements.txt; the function refuses with the install line when the packages are missing.
The file takes NHWC input (a permute is traced into the model), like onnx2tf's files, so
toolkit.runtime.tflite.TFLiteRunner runs both."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.convert.onnx_to_tflite import TFLiteOutputs
from toolkit.errors import EdgeShrinkError

INSTALL = ("pip install litert-torch==0.10.0 --no-deps && pip install ai-edge-quantizer==0.10.0 ai-edge-litert==2.3.0 "
           "litert-converter==0.5.0 litert-lm-builder==0.18.1 torchao==0.18.0 jax==0.7.1 jaxlib==0.7.1 jaxtyping "
           "multipledispatch safetensors tabulate fire rich packaging")


def _nhwc(model):
    import torch

    class NHWCInput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 3, 1, 2))

    return NHWCInput(model).eval()


def torch_to_litert(model, input_shape: tuple[int, ...], out_dir: str | Path,
                    calibration_nhwc: Optional[np.ndarray] = None, mean: tuple = (0.0,), *, std: tuple = (1.0,),
                    int8: bool = True, stem: str = "model") -> TFLiteOutputs:
    """Write `<stem>_float32.tflite` and, with `int8`, `<stem>_int8.tflite` (static int8 weights and
    activations, int8 input/output, calibrated on `calibration_nhwc`: real NHWC images in [0, 1]
    before mean/std). `input_shape` is the torch (N, C, H, W). Refuses INT8 without calibration
    data and says how to install litert-torch when it is missing."""
    try:
        import litert_torch
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise EdgeShrinkError(f"litert-torch is not installed ({exc.name} missing); install it in its own venv: {INSTALL}") from None
    import torch

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
    key, name = _signature(fp32)
    result = q.calibrate({key: [{name: x[i:i + 1]} for i in range(len(x))]})
    q8 = out_dir / f"{stem}_int8.tflite"
    q.quantize(result).export_model(str(q8), overwrite=True)
    return TFLiteOutputs(fp32, q8)


def _signature(path: Path) -> tuple[str, str]:
    """(signature key, its only input name) of a LiteRT file."""
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(sig))
    return key, sig[key]["inputs"][0]
