"""torch_to_onnx's second exporter: a graph the TorchScript exporter refuses (an adaptive pool whose
output is not a factor of its input, here with the matrix form that torch_to_onnx now gives such
pools switched off; timm's HaloNet Unfold is the same case) is exported with
torch.export (dynamo, opset 18), keeps the maths in onnxruntime, and onnx2tf turns it into a TFLite
file that passes parity. When both exporters fail, one error names both reasons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn


class _OddAdaptivePool(nn.Module):
    """7x7 features pooled to 3x3: the TorchScript exporter refuses (3 is not a factor of 7)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(72, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class _Eigenvalues(nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x.flatten(2)[..., :3, :3]).real


def test_a_graph_the_torchscript_exporter_refuses_is_exported_by_torch_export(tmp_path, monkeypatch):
    import contextlib

    import onnx
    import onnxruntime as ort

    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.runtime.tflite import TFLiteRunner

    torch.manual_seed(0)
    model = _OddAdaptivePool().eval()
    with pytest.raises(Exception, match="factor"):  # the first exporter's own refusal
        torch.onnx.export(model, (torch.zeros(1, 3, 9, 9),), str(tmp_path / "ts.onnx"), dynamo=False)
    monkeypatch.setattr("toolkit.convert.resize_matrices.resizes_as_matrices",
                        lambda model, example: contextlib.nullcontext(0))  # the pool as torch writes it
    path = torch_to_onnx(model, (1, 3, 9, 9), tmp_path / "m.onnx")
    assert onnx.load(str(path)).opset_import[0].version >= 18
    x = np.random.default_rng(0).normal(size=(1, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    got = session.run(None, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    out = onnx_to_tflite(path, tmp_path, None, int8=False)
    tflite = TFLiteRunner(out.float32, threads=1)(x)
    assert np.abs(tflite - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_both_exporters_failing_give_one_error_naming_both(tmp_path):
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    with pytest.raises(RuntimeError) as caught:
        torch_to_onnx(_Eigenvalues().eval(), (1, 3, 3, 3), tmp_path / "e.onnx")
    message = str(caught.value)
    assert "TorchScript exporter" in message and "torch.export" in message and "eig" in message
    assert "\n" not in message and "\x1b" not in message
    assert not (tmp_path / "e.onnx").exists()


def test_the_uneven_adaptive_pool_as_matrices_needs_no_fallback(tmp_path):
    import onnx
    import onnxruntime as ort

    from toolkit.convert.torch_to_onnx import torch_to_onnx

    torch.manual_seed(0)
    model = _OddAdaptivePool().eval()
    path = torch_to_onnx(model, (1, 3, 9, 9), tmp_path / "m.onnx")
    assert onnx.load(str(path)).opset_import[0].version == 17  # the TorchScript exporter's file
    x = np.random.default_rng(0).normal(size=(1, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
