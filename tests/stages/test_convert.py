"""Real converters and runtimes on tiny real models: parity, full-integer INT8, QDQ, onnx2tf advice."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import data_dir

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def real_images(count: int, size: int) -> np.ndarray:
    """Real Imagenette images when the shared data is present (it is in CI), else generated ones."""
    root = data_dir() / "imagenette2-224" / "val"
    files = sorted(root.glob("*/*.JPEG"))[:: max(1, len(sorted(root.glob("*/*.JPEG"))) // count or 1)][:count] if root.is_dir() else []
    if files:
        from toolkit.data.preprocess import resize_image

        return np.stack([resize_image(f, size, size) for f in files]).astype(np.float32) / 255.0
    from toolkit.data.imagefolder import synthetic_split

    return synthetic_split(4, count // 4 + 1, size, size, 0).images[:count].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import torch

    from toolkit.models.architectures import create_model
    from toolkit.quantize.onnx_to_qdq_int8 import onnx_to_qdq_int8
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=10, width_mult=0.5).eval()
    with torch.no_grad():  # give BN non-trivial statistics so outputs are not near-constant
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp("convert")
    images = real_images(40, 64)
    nchw = ((images - np.array(MEAN)) / np.array(STD)).astype(np.float32).transpose(0, 3, 1, 2)
    onnx_path = torch_to_onnx(model, (1, 3, 64, 64), out / "m.onnx")
    tfl = onnx_to_tflite(onnx_path, out, images[:32], MEAN, STD, int8=True, io_dtype="int8")
    qdq = onnx_to_qdq_int8(onnx_path, out / "m_int8.onnx", nchw[:32])
    with torch.no_grad():
        ref = model(torch.from_numpy(nchw)).numpy()
    return {"onnx": onnx_path, "tflite": tfl, "qdq": qdq, "x": nchw, "ref": ref}


def outputs(runner, x):
    return np.concatenate([runner(x[i:i + 1]) for i in range(len(x))])


def test_float_files_match_torch_within_1e4(converted):
    from toolkit.runtime.onnx import ONNXRunner
    from toolkit.runtime.tflite import TFLiteRunner

    for runner in (ONNXRunner(converted["onnx"], 1), TFLiteRunner(converted["tflite"].float32, 1)):
        err = np.abs(outputs(runner, converted["x"]) - converted["ref"]).max()
        assert err <= 1e-4, err


def test_int8_tflite_is_full_integer_and_close(converted):
    from toolkit.runtime.tflite_check import float_compute_ops, io_dtypes, require_full_integer
    from toolkit.runtime.tflite import TFLiteRunner

    q = converted["tflite"].int8
    require_full_integer(q, "int8")
    assert io_dtypes(q) == ("int8", "int8")
    # the check can fail: the FP32 file is full of float ops
    assert len(float_compute_ops(converted["tflite"].float32)) > 10
    with pytest.raises(EdgeShrinkError, match="not full-integer"):
        require_full_integer(converted["tflite"].float32, "int8")
    y = outputs(TFLiteRunner(q, 1), converted["x"])
    ref = converted["ref"]
    assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.9
    assert converted["tflite"].int8.stat().st_size < converted["tflite"].float32.stat().st_size / 2.5


def test_qdq_onnx_is_per_channel_int8(converted):
    import onnx
    from onnx import numpy_helper

    from toolkit.runtime.onnx import ONNXRunner

    model = onnx.load(str(converted["qdq"]))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] in inits and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
    assert weight_scales and all(s.size > 1 for s in weight_scales)  # one scale per output channel
    y = outputs(ONNXRunner(converted["qdq"], 1), converted["x"])
    assert np.corrcoef(y.ravel(), converted["ref"].ravel())[0, 1] > 0.9


def test_int8_without_calibration_is_refused(converted, tmp_path):
    from toolkit.quantize.onnx_to_qdq_int8 import onnx_to_qdq_int8
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite

    with pytest.raises(EdgeShrinkError, match="calibration set is empty"):
        onnx_to_tflite(converted["onnx"], tmp_path, np.zeros((0, 64, 64, 3), np.float32), MEAN, STD)
    with pytest.raises(EdgeShrinkError, match="calibration set is empty"):
        onnx_to_qdq_int8(converted["onnx"], tmp_path / "q.onnx", np.zeros((0, 3, 64, 64), np.float32))


def test_float_only_conversion_needs_no_network_or_calibration(converted, tmp_path):
    """onnx2tf fetches a sample file from GitHub for 3-channel inputs when none is in its working
    directory; an FP32-only conversion without calibration images must still work offline."""
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.runtime.tflite import TFLiteRunner

    tfl = onnx_to_tflite(converted["onnx"], tmp_path, None, int8=False)
    assert tfl.int8 is None and tfl.float32.is_file()
    y = outputs(TFLiteRunner(tfl.float32, 1), converted["x"][:4])
    assert np.abs(y - converted["ref"][:4]).max() <= 1e-4


def test_onnx2tf_option_it_asks_for_is_retried_and_recorded(tmp_path):
    """RegNet's layer names make TensorFlow refuse the SavedModel; onnx2tf's error says to convert
    again with `-osd`. The converter retries with it, records it, and the file is still exact."""
    import torch
    import torchvision

    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.runtime.tflite import TFLiteRunner

    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf(num_classes=4).eval()
    onnx_path = torch_to_onnx(model, (1, 3, 32, 32), tmp_path / "regnet.onnx")
    out = onnx_to_tflite(onnx_path, tmp_path, None, int8=False)
    assert out.onnx2tf_options == ("-osd",)
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 32, 32)).astype(np.float32)
    runner = TFLiteRunner(out.float32, 1)
    with torch.no_grad():
        for xi in x:
            assert np.abs(runner(xi) - model(torch.from_numpy(xi)).numpy()).max() <= 1e-4


def test_onnx2tf_advice_reads_its_options():
    from toolkit.convert.onnx_to_tflite import onnx2tf_advice

    log = ("\x1b[31mERROR:\x1b[0m Please convert again with the `-osd` or `--output_signaturedefs` option. "
           "Or use -kat input.1 or --not_an_option")
    assert onnx2tf_advice(log) == [("-osd", "output_signaturedefs", True),
                                   ("-kat", "keep_shape_absolutely_input_names", False)]


def test_default_qdq_cannot_saturate_avx2_and_old_scheme_could(converted, tmp_path):
    """The default scheme keeps int8 weights in 7 bits, so no u8 x s8 pair sum can overflow int16 on
    AVX2 CPUs without VNNI; full-range int8 weights can."""
    import onnx
    from onnx import numpy_helper

    from toolkit.quantize.onnx_to_qdq_int8 import onnx_to_qdq_int8, u8s8_saturation_rows

    weights = [numpy_helper.to_array(i) for i in onnx.load(str(converted["qdq"])).graph.initializer]
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.dtype == np.int8 and w.ndim == 4) <= 64
    safe = u8s8_saturation_rows(converted["qdq"])
    assert safe["rows"] > 0 and safe["rows_can_saturate"] == 0 and safe["max_pair"] <= 128
    old = onnx_to_qdq_int8(converted["onnx"], tmp_path / "s8s8.onnx", converted["x"][:16], scheme="s8s8")
    assert u8s8_saturation_rows(old)["rows_can_saturate"] > 0
    with pytest.raises(EdgeShrinkError, match="unknown INT8 scheme"):
        onnx_to_qdq_int8(converted["onnx"], tmp_path / "x.onnx", converted["x"][:4], scheme="s4s4")


def test_cpu_isa_flags_reads_x86_and_arm(tmp_path):
    from toolkit.core.cpuinfo import cpu_isa_flags

    here = cpu_isa_flags()
    assert set(here) == {"vendor", "model", "flags", "vnni", "u8s8_may_saturate"}
    zen2 = tmp_path / "zen2"
    zen2.write_text("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B12\nflags\t\t: sse4_1 avx avx2 fma\n")
    assert cpu_isa_flags(zen2)["u8s8_may_saturate"] is True and cpu_isa_flags(zen2)["vnni"] is False
    icx = tmp_path / "icx"
    icx.write_text("vendor_id\t: GenuineIntel\nmodel name\t: Xeon\nflags\t\t: avx avx2 avx512f avx512_vnni\n")
    assert cpu_isa_flags(icx)["vnni"] is True and cpu_isa_flags(icx)["u8s8_may_saturate"] is False
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n")
    got = cpu_isa_flags(arm)
    assert got["flags"]["asimddp"] is True and got["u8s8_may_saturate"] is False


def test_torch_to_litert_converts_or_says_how_to_install(tmp_path):
    """litert-torch is optional (it needs ai-edge-litert 2.3, so it lives in .venv-litert): where it is
    installed, the direct path gives an exact FP32 file and a full-integer INT8 file; elsewhere a
    one-line hint naming `make setup-litert` (the child-process path is tests/stages/test_litert.py)."""
    import importlib.util

    import torch

    from toolkit.models.architectures import create_model
    from toolkit.convert.torch_to_litert import torch_to_litert

    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5).eval()
    images = real_images(8, 64)
    if importlib.util.find_spec("litert_torch") is None:
        with pytest.raises(EdgeShrinkError, match="litert-torch is not installed.*make setup-litert"):
            torch_to_litert(model, (1, 3, 64, 64), tmp_path, images, MEAN, std=STD)
        return
    from toolkit.runtime.tflite_check import io_dtypes
    from toolkit.runtime.tflite import TFLiteRunner

    out = torch_to_litert(model, (1, 3, 64, 64), tmp_path, images, MEAN, std=STD)
    x = ((images[:2] - np.array(MEAN)) / np.array(STD)).astype(np.float32).transpose(0, 3, 1, 2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y = np.concatenate([TFLiteRunner(out.float32, 1)(x[i:i + 1]) for i in range(2)])
    assert np.abs(y - ref).max() <= 1e-4
    assert io_dtypes(out.int8) == ("int8", "int8")


def test_onnx2tf_failure_without_advice_is_one_line_naming_the_cause(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from toolkit.convert.onnx_to_tflite import onnx_to_tflite

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["r"]),
                               helper.make_node("Frobnicate", ["r"], ["output"], domain="com.example")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(EdgeShrinkError, match="could not convert bad.onnx: .*Frobnicate.*asks for no option") as err:
        onnx_to_tflite(tmp_path / "bad.onnx", tmp_path / "out", None, int8=False)
    assert "\n" not in str(err.value)
