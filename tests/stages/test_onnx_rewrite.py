"""Delegate-friendly ONNX rewrites (toolkit.convert.onnx_rewrite): each keeps the maths (onnxruntime
on the rewritten graph), and a tiny net using every op converts with onnx2tf into FP32 and INT8
files that XNNPACK takes as one partition, pass parity, and hold no Flex op. Exact GELU without the
rewrite makes onnx2tf emit FlexErf, which is refused in one line.

Files are converted at 20 px: with 16 channels at 16x16 (C == H == W) onnx2tf 1.29.24 places the
axes of GroupNorm and channel-last LayerNorm wrongly even without any rewrite (parity catches it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.core.errors import EdgeShrinkError

C = 16


class _LayerNorm2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(C)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Nearest(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class _Softmax(nn.Module):
    def forward(self, x):
        return x.softmax(1) * C


class _SoftmaxOne(nn.Module):  # softmax over one token (a pooled query)
    def forward(self, x):
        return x * x.mean((2, 3), keepdim=True).softmax(-1)


class _RmsNorm2d(nn.Module):  # timm's RmsNorm2d, by hand: mean(x * x) over the channels + eps
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6)


class _TokenRmsNorm(nn.Module):  # the same over the last axis of tokens
    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)
        return t.transpose(1, 2).reshape(b, c, h, w)


class _TokenLayerNormGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(C)

    def forward(self, x):
        b, c, h, w = x.shape
        t = F.gelu(self.norm(x.flatten(2).transpose(1, 2)))
        return t.transpose(1, 2).reshape(b, c, h, w)


class _L2Normalize(nn.Module):  # F.normalize: ReduceL2, Clip(min=eps), Expand, Div
    def forward(self, x):
        return F.normalize(x, dim=1) * 4


class _L2Norm(nn.Module):  # a bare norm: ReduceL2
    def forward(self, x):
        return x / (x.norm(dim=1, keepdim=True) + 1.0)


class _Gather(nn.Module):  # timm's qkv[0], qkv[1] and a class-token-like x[:, 3]: Gather of one index
    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2).reshape(b, h * w, 2, c // 2).permute(2, 0, 1, 3)
        mixed = torch.cat([t[0] + t[1], t[0] * t[1]], -1).transpose(1, 2).reshape(b, c, h, w)
        return mixed + x[:, 3].unsqueeze(1)


class _SixAxes(nn.Module):  # Twins' 6-D window qkv: split by unbind(0) (Split), indexed (Gather) and sliced (Slice)
    def forward(self, x):  # (no two axes of one size: onnx2tf may swap such axes in a 6-D transpose)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2).reshape(b, h // 4, 4, w, 2, c // 2).permute(4, 0, 1, 3, 2, 5)
        p, q = t.unbind(0)
        first = t[:, :, :, :, :2].transpose(0, 1).reshape(b, h * w, c // 2)
        tokens = torch.cat([(p * q + t[1]).reshape(b, h * w, c // 2), first], -1)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class _MaxPoolSame(nn.Module):  # timm's MaxPool2dSame: a -inf pad (TF-SAME), then an unpadded max pool
    def forward(self, x):
        return F.max_pool2d(F.pad(x, (1, 1, 0, 2), value=-float("inf")), 3, 1)


class _AvgPool(nn.Module):  # a depthwise conv; padding not counted: times a constant map of kh * kw / count
    def forward(self, x):
        return F.avg_pool2d(x, 3, 1, 1) + F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _ConcatMany(nn.Module):  # 8 inputs: XNNPACK takes at most 5 in one CONCATENATION
    def forward(self, x):
        return torch.cat([x[:, 2 * i:2 * i + 2] * (i + 1) for i in range(C // 2)], 1)


class _SharedSumRelu(nn.Module):  # a residual sum both rectified and kept: no op takes the ReLU as its fused one
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x):
        s = x + self.conv(x)
        return torch.relu(s) + s * 0.5


OPS = {"max_pool_same": _MaxPoolSame, "six_axes": _SixAxes, "shared_sum_relu": _SharedSumRelu, "gather": _Gather, "avg_pool": _AvgPool, "concat_many": _ConcatMany, "gelu": nn.GELU, "l2_normalize": _L2Normalize, "l2_norm": _L2Norm, "instance_norm": lambda: nn.InstanceNorm2d(C, affine=True), "group_norm": lambda: nn.GroupNorm(4, C),
       "layer_norm_2d": _LayerNorm2d, "layer_norm_tokens": _TokenLayerNormGelu, "prelu": lambda: nn.PReLU(C),
       "prelu_one": nn.PReLU, "leaky_small": lambda: nn.LeakyReLU(1e-3),
       "reflect_conv": lambda: nn.Conv2d(C, C, 3, padding=1, padding_mode="reflect"),
       "replicate_conv": lambda: nn.Conv2d(C, C, 3, padding=1, padding_mode="replicate"), "nearest": _Nearest, "softmax": _Softmax,
       "softmax_one": _SoftmaxOne, "rms_norm": _RmsNorm2d, "rms_norm_tokens": _TokenRmsNorm}


def _net(*ops) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C)]
    for op in ops:
        layers += [OPS[op](), nn.Conv2d(C, C, 3, padding=1)]
    model = nn.Sequential(*layers, nn.Conv2d(C, 8, 1)).eval()
    with torch.no_grad():  # non-trivial affine parameters and slopes
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
    return model


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_rewrite_keeps_the_maths_in_onnxruntime(op, tmp_path):
    import onnx
    import onnxruntime as ort

    from toolkit.convert.onnx_rewrite import rewrite_onnx_file
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    model = _net(op)
    path = torch_to_onnx(model, (2, 3, 16, 16), tmp_path / "m.onnx")
    done = rewrite_onnx_file(path, tmp_path / "rw.onnx")
    assert done, f"nothing rewritten for {op}: {sorted({n.op_type for n in onnx.load(str(path)).graph.node})}"
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "rw.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 2e-5 * np.abs(ref).max(), op


def _tflite_outputs(path, x01: np.ndarray) -> np.ndarray:
    from toolkit.runtime.tflite import TFLiteRunner

    run = TFLiteRunner(path, threads=1)
    return np.concatenate([run(x01[i:i + 1].transpose(0, 3, 1, 2)) for i in range(len(x01))])


def _one_partition_files(model, tmp_path, *, calibration: int):
    """onnx2tf's FP32 and INT8 files of `model` at 20 px with XNNPACK's rewrites, each checked to be one
    XNNPACK partition with no custom op, and FP32 parity at the runner's tolerance (1e-4 of the output
    scale). Returns (files, calibration images, torch's outputs for the first 4)."""
    from toolkit.convert.onnx_rewrite import rewrites_for
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.runtime.delegate import delegate_report
    from toolkit.runtime.tflite_check import custom_ops

    calib = np.random.default_rng(0).random((calibration, 20, 20, 3), dtype=np.float32)
    onnx_path = torch_to_onnx(model, (1, 3, 20, 20), tmp_path / "net.onnx")
    out = onnx_to_tflite(onnx_path, tmp_path, calib, (0.0,) * 3, (1.0,) * 3, int8=True, io_dtype="int8",
                         rewrite_ops=rewrites_for("xnnpack"))
    for path in (out.float32, out.int8):
        report = delegate_report(path)
        assert (report["partitions"], report["undelegated_ops"]) == (1, {}), (path.name, report)
        assert custom_ops(path) == []
    with torch.no_grad():
        ref = model(torch.from_numpy(calib[:4].transpose(0, 3, 1, 2).copy())).numpy()
    fp32 = _tflite_outputs(out.float32, calib[:4])
    assert np.abs(fp32 - ref).max() <= 1e-4 * np.abs(ref).max()  # the runner's parity tolerance
    return out, calib, ref


def test_every_op_converts_to_one_xnnpack_partition_fp32_and_int8(tmp_path):
    from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS, require_full_integer

    model = _net("gelu", "instance_norm", "prelu", "group_norm", "prelu_one", "layer_norm_2d", "nearest",
                 "layer_norm_tokens", "softmax", "l2_normalize", "gather", "avg_pool", "concat_many",
                 "rms_norm", "rms_norm_tokens", "shared_sum_relu", "leaky_small", "reflect_conv", "replicate_conv", "max_pool_same")
    out, calib, ref = _one_partition_files(model, tmp_path, calibration=16)
    assert {r.split()[0] for r in out.rewrites} == {"Erf", "InstanceNormalization", "PRelu", "LayerNormalization",
                                                     "Resize", "Softmax", "Clip", "Gather", "AveragePool",
                                                     "Concat", "Add", "Div", "Relu", "LeakyRelu", "Pad"}, out.rewrites
    require_full_integer(out.int8, "int8", float_ops=XNNPACK_FLOAT_ISLAND_OPS)
    int8 = _tflite_outputs(out.int8, calib[:4])
    assert np.abs(int8 - ref).max() <= 0.15 * np.abs(ref).max()


def test_a_split_slice_and_gather_of_six_axes_convert_without_flex(tmp_path):
    """TFLite slices at most 5 axes: onnx2tf sent Twins' 6-D qkv split to FlexStridedSlice. Rewritten
    on a copy with the uncut axes merged, the file is one XNNPACK partition in FP32 and INT8."""
    from toolkit.runtime.tflite_check import require_full_integer

    out, _, _ = _one_partition_files(_net("six_axes"), tmp_path, calibration=8)
    assert {r.split()[0] for r in out.rewrites} >= {"Split", "Slice", "Gather"}, out.rewrites
    require_full_integer(out.int8, "int8")


def test_exact_gelu_without_the_rewrite_is_refused_as_flex(tmp_path):
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    onnx_path = torch_to_onnx(_net("gelu"), (1, 3, 20, 20), tmp_path / "gelu.onnx")
    with pytest.raises(EdgeShrinkError, match="FlexErf.*litert-torch"):
        onnx_to_tflite(onnx_path, tmp_path, None, int8=False, rewrite_ops=())


def test_an_average_pool_whose_ceil_mode_adds_a_window_is_kept(tmp_path):
    """ceil_mode can add a window past the padded edge, with its own divisor: that pool stays, while
    the pool whose padding is not counted (edge windows divide by fewer inputs than kh * kw) becomes
    a depthwise conv times a constant map, with the same outputs in onnxruntime."""
    import onnx
    import onnxruntime as ort

    from toolkit.convert.onnx_rewrite import rewrite_onnx_file
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    class _Partial(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(x, (3, 2), (2, 1), (1, 1), count_include_pad=False)[..., :1, :1] \
                + F.avg_pool2d(x, 2, 2, ceil_mode=True)[..., :1, :1]

    path = torch_to_onnx(_Partial().eval(), (1, 4, 9, 9), tmp_path / "m.onnx")
    assert rewrite_onnx_file(path, tmp_path / "rw.onnx", ops=("AveragePool",)) == {"AveragePool": 1}
    assert [n.op_type for n in onnx.load(str(tmp_path / "rw.onnx")).graph.node].count("AveragePool") == 1
    x = np.random.default_rng(0).normal(size=(1, 4, 9, 9)).astype(np.float32)
    outputs = []
    for file in (path, tmp_path / "rw.onnx"):
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-5 * np.abs(outputs[0]).max()
