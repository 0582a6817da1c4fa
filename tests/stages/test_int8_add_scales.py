"""INT8 ADD inputs quantized over 1024x finer than their sum (XNNPACK refuses such an ADD) get a
QUANTIZE in front: a real onnx2tf INT8 file, partitions counted by loading it in LiteRT, outputs
compared with the file as the converter wrote it.

The net sums two tiny branches and concatenates the sum with a large one: TFLite gives a
concatenation's inputs its output's scale, so the sum is quantized on the large branch's grid and
its inputs are ~1e5x finer (MONAI FlexibleUNet's decoder, random weights). One tiny branch is also
read by a conv, which must keep its fine grid. A constant too fine for its sum (the eps of an L2
norm over tokens, XCiT) is requantized in place, with no op added."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.convert.int8_add_scales import MIN_RATIO, requantize_add_inputs, requantize_in_model
from toolkit.runtime.delegate import xnnpack_report


class TinySumBesideLargeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.tiny_a, self.tiny_b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.large = nn.Conv2d(8, 8, 3, padding=1)
        self.reads_tiny_b = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(24, 4, 1)
        with torch.no_grad():
            for conv, gain in ((self.tiny_a, 1e-5), (self.tiny_b, 1e-5), (self.large, 10.0)):
                conv.weight.mul_(gain)
                conv.bias.mul_(gain)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        b = self.tiny_b(x)
        s = self.tiny_a(x) + b
        return self.head(torch.cat([s, self.large(x), self.reads_tiny_b(b) * 1e5], dim=1))


def _onnx2tf_int8(net: nn.Module, work: Path) -> tuple[Path, np.ndarray]:
    """onnx2tf's INT8 file of `net` (seeded, 16 px, 8 calibration images, XNNPACK's ONNX rewrites)
    and the calibration images."""
    from toolkit.convert.onnx_rewrite import rewrites_for
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    onnx_path = torch_to_onnx(net.eval(), (1, 3, 16, 16), work / "net.onnx")
    calib = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    out = onnx_to_tflite(onnx_path, work / "tflite", calib, (0.5,), (0.25,), int8=True, io_dtype="int8",
                         rewrite_ops=rewrites_for("xnnpack"))
    return out.int8, calib


def _seeded(cls) -> nn.Module:
    torch.manual_seed(0)
    return cls()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    q8, calib = _onnx2tf_int8(_seeded(TinySumBesideLargeBranch), tmp_path_factory.mktemp("addscales"))
    return {"int8": q8, "calib": calib}


def _int8_outputs(path: Path, images01: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    results = []
    for image in images01:
        q = np.clip(np.round(((image - 0.5) / 0.25) / scale + zero), -128, 127).astype(np.int8)[None]
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        results.append(interp.get_tensor(out["index"]).astype(np.int32))
    return np.concatenate(results)


def _fine_sum_inputs(path: Path) -> list[tuple[str, float]]:
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.convert.int8_add_scales import _op_names, _scale

    model = flatbuffer_utils.read_model(str(path))
    graph, names = model.subgraphs[0], _op_names(model)
    found = []
    for op in graph.operators:
        if names[op.opcodeIndex] == "ADD":
            out = _scale(graph, int(op.outputs[0]))
            found += [(graph.tensors[t].name.decode(), _scale(graph, t) / out) for t in op.inputs
                      if _scale(graph, t) is not None and _scale(graph, t) / out < MIN_RATIO]
    return found


def test_the_converter_leaves_a_sum_xnnpack_refuses(converted):
    report = xnnpack_report(converted["int8"])
    assert report["undelegated_ops"].get("ADD") == 1 and report["partitions"] > 1, report
    assert _fine_sum_inputs(converted["int8"])


def test_requantized_inputs_put_the_sum_in_xnnpack_and_change_no_output(converted, tmp_path):
    path = tmp_path / "net_int8.tflite"
    shutil.copyfile(converted["int8"], path)
    os.chmod(path, 0o644)
    before = xnnpack_report(path)
    change = requantize_add_inputs(path)
    assert change == {"requantized": 2, "partitions_before": before["partitions"], "partitions_after": 1}, change
    after = xnnpack_report(path)
    assert after["partitions"] == 1 and after["undelegated_ops"] == {}
    assert after["total_ops"] > before["total_ops"]  # QUANTIZE ops only: no op of the net changes
    assert not _fine_sum_inputs(path)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name != path.name]  # no temporary file left

    as_written = _int8_outputs(converted["int8"], converted["calib"])
    requantized = _int8_outputs(path, converted["calib"])
    assert np.abs(as_written - requantized).max() <= 1  # at most a rounding step of the int8 output

    assert requantize_add_inputs(path) is None  # nothing left to do: the file is not touched again


def test_a_tensor_other_ops_read_keeps_its_fine_grid(converted):
    """The tiny branch the 1x1 conv also reads keeps its scale; only the ADD reads the coarse copy."""
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.convert.int8_add_scales import _op_names, _scale

    model = flatbuffer_utils.read_model(str(converted["int8"]))
    graph = model.subgraphs[0]
    scales_before = [_scale(graph, t) for t in range(len(graph.tensors))]
    assert requantize_in_model(model) == 2
    assert [_scale(graph, t) for t in range(len(scales_before))] == scales_before
    names = _op_names(model)
    quantizes = [op for op in graph.operators if names[op.opcodeIndex] == "QUANTIZE"]
    assert len(quantizes) >= 2  # a chain per input where the gap is over 256x (XNNPACK's QUANTIZE limit)
    for op in quantizes:
        readers = [o for o in graph.operators if int(op.outputs[0]) in list(o.inputs)]
        assert len(readers) == 1 and names[readers[0].opcodeIndex] in ("QUANTIZE", "ADD")
        assert 1 < _scale(graph, int(op.outputs[0])) / _scale(graph, int(op.inputs[0])) < 256


def test_a_file_with_nothing_to_requantize_is_left_byte_for_byte(tmp_path):
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    onnx_path = torch_to_onnx(net, (1, 3, 16, 16), tmp_path / "plain.onnx")
    calib = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    q8 = onnx_to_tflite(onnx_path, tmp_path / "tflite", calib, (0.5,), (0.25,), int8=True, io_dtype="int8").int8
    data = q8.read_bytes()
    assert requantize_add_inputs(q8) is None
    assert q8.read_bytes() == data


class TokenL2Norm(nn.Module):
    """F.normalize over the tokens of each head (XCiT): onnx2tf's form sqrt(sum(x * x) + eps^2) adds a
    constant eps^2 quantized ~1e7x finer than the sum."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        b, c, h, w = y.shape
        return self.head(F.normalize(y.reshape(b, 2, c // 2, h * w), dim=-1).reshape(b, c, h, w))


def test_a_constant_too_fine_for_its_sum_is_requantized_in_place(tmp_path):
    q8, calib = _onnx2tf_int8(_seeded(TokenL2Norm), tmp_path)
    as_written = Path(shutil.copyfile(q8, tmp_path / "as_written.tflite"))
    before = xnnpack_report(q8)
    assert before["undelegated_ops"] == {"ADD": 1}, before
    assert requantize_add_inputs(q8) == {"requantized": 1, "partitions_before": before["partitions"],
                                         "partitions_after": 1}
    after = xnnpack_report(q8)
    assert after["undelegated_ops"] == {} and after["total_ops"] == before["total_ops"]  # no op added
    assert np.abs(_int8_outputs(as_written, calib) - _int8_outputs(q8, calib)).max() <= 1


class GeluOnSmallActivations(nn.Module):
    """Exact GELU (onnx2tf's erf form: MULs of x and its powers) on |x| < 0.03: the products' scales
    fall below 1/65536 of the outputs' and XNNPACK refuses the MULs (ViT, Visformer, FastViT)."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        with torch.no_grad():
            self.stem.weight.mul_(1e-3)
            self.stem.bias.mul_(1e-3)

    def forward(self, x):
        return self.head(F.gelu(self.stem(x)))


def test_muls_whose_scale_product_is_too_fine_are_requantized(tmp_path):
    q8, calib = _onnx2tf_int8(_seeded(GeluOnSmallActivations), tmp_path)
    as_written = Path(shutil.copyfile(q8, tmp_path / "as_written.tflite"))
    before = xnnpack_report(q8)
    assert before["undelegated_ops"].get("MUL", 0) >= 2, before
    change = requantize_add_inputs(q8)
    assert change is not None and change["partitions_after"] < change["partitions_before"], change
    after = xnnpack_report(q8)
    # the erf form's relu6(z) - 3 writes a grid over 256x finer than its inputs': that SUB's output is
    # written coarser and requantized after it
    assert (after["partitions"], after["undelegated_ops"]) == (1, {}), after
    assert np.abs(_int8_outputs(as_written, calib) - _int8_outputs(q8, calib)).max() <= 1


class TinyLayerScaleBesideLargeBranch(nn.Module):
    """A per-channel constant (a layer scale) times an activation, concatenated with a large branch:
    the MUL's output takes the concatenation's grid, its scale product falls below 1/65536 of it, and
    the constant input (16 values) is the one requantized."""

    def __init__(self):
        super().__init__()
        self.stem, self.large, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(32, 8, 1)
        self.gamma = nn.Parameter(torch.linspace(1e-4, 2e-4, 16).reshape(16, 1, 1))
        with torch.no_grad():
            self.stem.weight.mul_(1e-3)
            self.stem.bias.mul_(1e-3)
            self.large.weight.mul_(10.0)

    def forward(self, x):
        return self.head(torch.cat([torch.tanh(self.stem(x)) * self.gamma, self.large(x)], dim=1))


def test_a_mul_by_a_per_channel_constant_is_requantized(tmp_path):
    q8, calib = _onnx2tf_int8(_seeded(TinyLayerScaleBesideLargeBranch), tmp_path)
    as_written = Path(shutil.copyfile(q8, tmp_path / "as_written.tflite"))
    before = xnnpack_report(q8)
    change = requantize_add_inputs(q8)  # raised ValueError (an array's truth value) before
    after = xnnpack_report(q8)
    assert "MUL" in before["undelegated_ops"] and "MUL" not in after["undelegated_ops"], (before, change, after)
    assert np.abs(_int8_outputs(as_written, calib) - _int8_outputs(q8, calib)).max() <= 1
