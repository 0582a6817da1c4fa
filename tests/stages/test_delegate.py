"""XNNPACK partitions measured by loading real converted files with LiteRT, and the torch rewrite
that makes MobileNetV3 one XNNPACK partition in FP32 and full-integer INT8."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.stages.test_convert import MEAN, STD, real_images
from toolkit.core.errors import EdgeShrinkError


def data_initialised_mnv3():
    """Tiny MobileNetV3-Small whose BN statistics come from real images, so activations keep a
    trained network's scale (random BN stats shrink deep activations to ~1e-7, which no INT8
    kernel treats like a real model)."""
    import torch

    from toolkit.models.architectures import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=10, width_mult=0.5)
    images = real_images(32, 64)
    x = torch.from_numpy(((images - np.array(MEAN)) / np.array(STD)).astype(np.float32).transpose(0, 3, 1, 2))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval(), images, x


class ReluNet:
    @staticmethod
    def build():
        import torch.nn as nn

        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.convert.graph_rewrite import rewrite_for_delegates

    out = tmp_path_factory.mktemp("delegate")
    model, images, x = data_initialised_mnv3()
    plain_onnx = torch_to_onnx(model, (1, 3, 64, 64), out / "plain.onnx")
    plain = onnx_to_tflite(plain_onnx, out, None, int8=False)
    relu = onnx_to_tflite(torch_to_onnx(ReluNet.build(), (1, 3, 32, 32), out / "relu.onnx"), out, None, int8=False)
    rewritten, changes = rewrite_for_delegates(copy.deepcopy(model))
    friendly = onnx_to_tflite(torch_to_onnx(rewritten, (1, 3, 64, 64), out / "friendly.onnx"), out, images, MEAN, STD,
                              int8=True, io_dtype="int8")
    return {"plain": plain.float32, "plain_onnx": plain_onnx, "relu": relu.float32, "friendly": friendly, "model": model,
            "rewritten": rewritten, "changes": changes, "x": x}


def test_plain_mobilenetv3_is_split_by_hard_sigmoid(files):
    from toolkit.runtime.delegate import delegate_report

    rep = delegate_report(files["plain"])
    assert rep["name"] == "xnnpack" and rep["partitions"] > 1
    assert {"RELU_0_TO_1", "HARD_SWISH"} & set(rep["undelegated_ops"])
    assert rep["delegated_ops"] + sum(rep["undelegated_ops"].values()) == rep["total_ops"]


def test_relu_only_net_is_one_partition(files):
    from toolkit.runtime.delegate import delegate_report

    rep = delegate_report(files["relu"])
    assert rep["partitions"] == 1 and rep["undelegated_ops"] == {} and rep["delegated_ops"] == rep["total_ops"]


def test_rewrite_keeps_outputs_and_gives_one_partition_fp32_and_int8(files):
    import torch

    from toolkit.runtime.tflite_check import require_full_integer
    from toolkit.runtime.delegate import delegate_report
    from toolkit.convert.graph_rewrite import functional_activations

    assert any("Hardswish -> DelegateHardswish" in c for c in files["changes"])
    assert any("Hardsigmoid -> DelegateHardsigmoid" in c for c in files["changes"])
    assert functional_activations(files["rewritten"], files["x"][:1]) == []
    with torch.no_grad():
        assert torch.allclose(files["model"](files["x"]), files["rewritten"](files["x"]), atol=1e-5, rtol=1e-5)
    require_full_integer(files["friendly"].int8, "int8")
    for path in (files["friendly"].float32, files["friendly"].int8):
        rep = delegate_report(path)
        assert (rep["partitions"], rep["undelegated_ops"]) == (1, {}), (path.name, rep)


def test_offline_delegates_and_bad_names(files, tmp_path):
    from toolkit.runtime.delegate import delegate_report

    assert delegate_report(files["relu"], delegate="gpu")["partitions"] == "unknown offline"
    with pytest.raises(EdgeShrinkError, match="unknown delegate"):
        delegate_report(files["relu"], delegate="xnnpak")
    with pytest.raises(EdgeShrinkError, match="no TFLite file"):
        delegate_report(tmp_path / "missing.tflite")


def test_first_divergence_names_the_broken_conv(files, tmp_path):
    """Scale one Conv weight in the ONNX: the diagnosis names that node against torch, and against
    the (correct) TFLite file; the untouched files report no divergence."""
    import onnx
    from onnx import numpy_helper

    from toolkit.runtime.diagnose import first_divergence

    onnx_path = files["plain_onnx"]
    sample = files["x"][:1].numpy()
    clean = first_divergence(onnx_path, files["plain"], files["model"], sample, rtol=1e-3)
    assert clean["diverged"] is False and clean["checked"] == ["torch->onnx", "onnx->tflite"]
    proto = onnx.load(str(onnx_path))
    target = [n for n in proto.graph.node if n.op_type == "Conv"][6]
    for init in proto.graph.initializer:
        if init.name == target.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    vs_torch = first_divergence(broken, None, files["model"], sample, rtol=1e-3)
    assert vs_torch["diverged"] and vs_torch["stage"] == "torch->onnx"
    assert vs_torch["node"] == target.name and target.name.split("/")[-2] in vs_torch["module"]
    assert vs_torch["suggestion"]
    vs_tflite = first_divergence(broken, files["plain"], None, sample, rtol=1e-3)
    assert vs_tflite["diverged"] and vs_tflite["stage"] == "onnx->tflite" and vs_tflite["node"] == target.name


def test_functional_hardswish_calls_are_rewritten_too():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from toolkit.convert.graph_rewrite import functional_activations, rewrite_for_delegates

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gate = nn.Hardsigmoid()

        def forward(self, x):
            y = F.hardswish(self.conv(x))
            return y * self.gate(y) + F.hardsigmoid(y)

    torch.manual_seed(0)
    model = Functional().eval()
    x = torch.randn(2, 3, 16, 16) * 4
    rewritten, changes = rewrite_for_delegates(Functional().eval().requires_grad_(False))
    rewritten.load_state_dict(model.state_dict())
    assert len(changes) == 3 and any("F.hardswish" in c for c in changes)
    assert functional_activations(model, x[:1]) and functional_activations(rewritten, x[:1]) == []
    with torch.no_grad():
        assert torch.allclose(model(x), rewritten(x), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 3)])
def test_conv_shift_form_keeps_outputs_for_modules_and_calls(shape):
    """The litert-torch form (the `+ 3` as a 1x1 depthwise conv on 4-D inputs, an ADD otherwise)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from toolkit.convert.graph_rewrite import functional_activations, rewrite_for_delegates

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.act, self.gate = nn.Hardswish(), nn.Hardsigmoid()

        def forward(self, x):
            return self.act(x) * self.gate(x) + F.hardswish(x) - F.hardsigmoid(x)

    x = torch.linspace(-5, 5, int(np.prod(shape))).reshape(shape)
    rewritten, changes = rewrite_for_delegates(Mixed().eval(), shift="conv")
    assert len(changes) == 4 and any("ConvShiftHardswish" in c for c in changes)
    assert functional_activations(rewritten, x) == []
    with torch.no_grad():
        assert torch.allclose(Mixed()(x), rewritten(x), atol=1e-6)


def test_litert_int8_mobilenetv3_stays_in_xnnpack_with_the_conv_shift(tmp_path):
    """litert-torch + ai-edge-quantizer: INT8 HARD_SWISH (19 partitions on MobileNetV3-Small) and an
    ADD of the constant 3 (17) are not delegated; with the conv shift only the 2-D head's ADD is left."""
    import torch

    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert
    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.runtime.delegate import delegate_report
    from toolkit.runtime.tflite_check import require_full_integer

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=10).eval()
    save_checkpoint(tmp_path / "m.pt", model, "mobilenet_v3_small", {"num_classes": 10})
    calibration = np.random.default_rng(0).random((8, 64, 64, 3), dtype=np.float32)
    out = checkpoint_to_litert(tmp_path / "m.pt", (1, 3, 64, 64), tmp_path / "litert", calibration,
                               mean=(0.5,) * 3, std=(0.25,) * 3, delegate_rewrites=True)
    require_full_integer(out.int8, "int8")
    int8 = delegate_report(out.int8)
    assert int8["partitions"] <= 2 and set(int8["undelegated_ops"]) <= {"ADD"}, int8
    assert delegate_report(out.float32)["partitions"] == 1
