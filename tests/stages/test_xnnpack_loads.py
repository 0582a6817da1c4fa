"""A TFLite file bound for an XNNPACK target must load with XNNPACK (the delegate can claim ops and
then fail to build its runtime for them, as onnx2tf's INT8 file of timm's vit_tiny_r_s16_p8_224
does): the runner's file checks refuse such a file in one line, which sends an INT8 file to the
other converter's (toolkit.pipeline.tflite_converters.int8_after_failed_check)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from toolkit.core.errors import EdgeShrinkError


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    work = tmp_path_factory.mktemp("loads")
    torch.manual_seed(0)
    onnx_path = torch_to_onnx(torch.nn.Conv2d(3, 4, 3).eval(), (1, 3, 16, 16), work / "tiny.onnx")
    calib = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    return onnx_to_tflite(onnx_path, work / "tflite", calib, (0.5,), (0.25,), int8=True, io_dtype="int8")


def _runner(delegate: str):
    return SimpleNamespace(target=SimpleNamespace(runtime=SimpleNamespace(delegate=delegate),
                                                  quantization=SimpleNamespace(io_dtype="int8")))


def test_files_that_load_pass_the_checks(tiny_tflite):
    from toolkit.pipeline.edge_steps import builtin_ops, full_integer

    builtin_ops(_runner("xnnpack"), tiny_tflite.float32)
    full_integer(_runner("xnnpack"), tiny_tflite.int8)


def test_a_file_that_does_not_load_is_refused_in_one_line(tiny_tflite, tmp_path):
    from toolkit.pipeline.edge_steps import builtin_ops
    from toolkit.runtime.tflite_check import require_loads_with_xnnpack

    broken = tmp_path / "broken_fp32.tflite"
    data = tiny_tflite.float32.read_bytes()
    broken.write_bytes(data[:8] + b"\0" * (len(data) - 8))  # the header kept, the tables gone
    with pytest.raises(EdgeShrinkError) as raised:
        require_loads_with_xnnpack(broken)
    message = str(raised.value)
    assert message.startswith("broken_fp32.tflite does not load with XNNPACK (") and "\n" not in message
    assert "tflite_converter: onnx2tf or litert-torch" in message
    with pytest.raises(EdgeShrinkError, match="does not load with XNNPACK"):
        builtin_ops(_runner("xnnpack"), broken)
