"""Bicubic resizes and uneven adaptive average pools exported as constant matrix products, and
unfolds as one-hot grouped convolutions and folds as shifted sums (toolkit.convert.resize_matrices): torch's
own outputs for sizes, scale factors, align_corners, pool windows and unfold / fold geometries; other resizes and the torch
functions themselves untouched afterwards; a net resizing bicubically, pooling VGG-style (2x2 -> 7x7)
unfolding TNT-style converts with onnx2tf (no FlexResizeBicubic, no GATHER) and with litert-torch
into files XNNPACK runs in one partition, FP32 within parity of torch; so does VOLO's unfold -> fold
with litert-torch (which lowered torch's fold to a scatter it could not convert)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.convert.resize_matrices import resizes_as_matrices

BICUBIC_NET = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class BicubicNet(nn.Module):
        """CrossViT's branch scaling (a fixed smaller size), a 2x bicubic upsampling, VGG's 2x2 -> 7x7 pool."""

        def __init__(self):
            super().__init__()
            self.stem, self.mid = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, 4)
            self.unfold = nn.Unfold(4, stride=4)  # TNT's pixel embedding

        def forward(self, x):
            s = F.relu(self.stem(x))
            small = F.interpolate(s, size=(s.shape[2] - 4, s.shape[3] - 4), mode="bicubic", align_corners=False)
            up = F.interpolate(self.mid(small), scale_factor=2, mode="bicubic", align_corners=True)
            grown = F.adaptive_avg_pool2d(F.max_pool2d(s, 16), (7, 7))  # timm VGG's ConvMlp at a small input
            cells = self.unfold(s).mean(-1).reshape(s.shape[0], 8, 16).mean(-1)
            return self.head(up.mean((2, 3)) + s.mean((2, 3)) + grown.mean((2, 3)) + cells)
''')


class _Resize(nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.options = options

    def forward(self, x):
        return F.interpolate(x, **self.options)


@pytest.mark.parametrize("options", [dict(size=(56, 56)), dict(scale_factor=2), dict(scale_factor=1.5),
                                     dict(size=(5, 21), align_corners=True),
                                     dict(scale_factor=(0.7, 1.3), recompute_scale_factor=True)])
def test_bicubic_resizes_as_matrices_are_torchs_own(options):
    model = _Resize(mode="bicubic", **options)
    x = torch.randn(2, 3, 60, 60, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    with resizes_as_matrices(model, x) as found:
        got = model(x)
    assert found >= 1 and got.shape == reference.shape
    assert float((got - reference).abs().max()) <= 1e-6 * float(reference.abs().max())


def test_other_resizes_and_torchs_function_are_untouched():
    interpolate = F.interpolate
    for options in (dict(mode="bilinear", size=(7, 7)), dict(mode="bicubic", size=(7, 7), antialias=True),
                    dict(mode="nearest", scale_factor=2)):
        model = _Resize(**options)
        x = torch.randn(1, 2, 12, 12)
        with resizes_as_matrices(model, x) as found:
            assert found == 0 and torch.equal(model(x), F.interpolate(x, **options))
    assert F.interpolate is interpolate


def _bicubic_net():
    namespace: dict = {}
    exec(compile(BICUBIC_NET, "bicubic_net.py", "exec"), namespace)  # noqa: S102 - the test's own source
    torch.manual_seed(0)
    return namespace["BicubicNet"]().eval()


def test_onnx2tf_converts_bicubic_resizes_into_one_xnnpack_partition(tmp_path):
    import onnx

    from toolkit.convert.onnx_rewrite import rewrites_for
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from tests.stages.litert_helpers import assert_one_partition_and_parity

    model = _bicubic_net()
    onnx_path = torch_to_onnx(model, (1, 3, 32, 32), tmp_path / "net.onnx")
    assert not {"Resize", "Gather"} & {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    calibration = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    out = onnx_to_tflite(onnx_path, tmp_path / "tflite", calibration, (0.5,), (0.25,), int8=True, io_dtype="int8",
                         rewrite_ops=rewrites_for("xnnpack"))
    assert_one_partition_and_parity(model, out, calibration)


def test_litert_converts_bicubic_resizes_into_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, BICUBIC_NET, "bicubic_net.py:BicubicNet")


@pytest.mark.parametrize("sizes", [((2, 2), (7, 7)), ((5, 9), (3, 4)), ((6, 6), (4, None)), ((8, 8), (4, 2))])
def test_uneven_adaptive_average_pools_as_matrices_are_torchs_own(sizes):
    (h, w), output_size = sizes
    model = nn.AdaptiveAvgPool2d(output_size)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    with resizes_as_matrices(model, x) as found:
        got = model(x)
    assert found == (0 if (h, w) == (8, 8) else 1)  # 8 -> 4 and 8 -> 2 are even windows: torch's own pool
    assert got.shape == reference.shape
    assert float((got - reference).abs().max()) <= 1e-6 * float(reference.abs().max())


@pytest.mark.parametrize("geometry", [dict(kernel_size=4, stride=4), dict(kernel_size=3, padding=1, stride=2),
                                      dict(kernel_size=(2, 3), dilation=(1, 2), padding=(0, 2))])
def test_unfolds_as_one_hot_convolutions_are_torchs_own(geometry):
    unfold = F.unfold
    model = nn.Unfold(**geometry)
    x = torch.randn(2, 5, 12, 16, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    with resizes_as_matrices(model, x) as found:
        got = model(x)
    assert found == 1 and torch.equal(got, reference)
    assert F.unfold is unfold


@pytest.mark.parametrize("geometry", [dict(kernel_size=3, padding=1, stride=2, output_size=(14, 14)),
                                      dict(kernel_size=3, padding=1, output_size=(9, 11)),
                                      dict(kernel_size=4, stride=4, output_size=(16, 12)),
                                      dict(kernel_size=(2, 3), dilation=(1, 2), padding=(0, 2), stride=2, output_size=(13, 10)),
                                      dict(kernel_size=3, padding=2, stride=3, output_size=(10, 8)),
                                      dict(kernel_size=2, stride=3, output_size=(8, 8))])
def test_folds_as_shifted_sums_are_torchs_own(geometry):
    fold = F.fold
    model = nn.Fold(**geometry)
    options = {k: v for k, v in geometry.items() if k != "output_size"}
    blocks = F.unfold(torch.zeros(1, 1, *geometry["output_size"]), **options).shape[-1]
    kernel = options["kernel_size"] if isinstance(options["kernel_size"], tuple) else (options["kernel_size"],) * 2
    cols = torch.randn(2, 5 * kernel[0] * kernel[1], blocks, generator=torch.Generator().manual_seed(0))
    reference = model(cols)
    with resizes_as_matrices(model, cols) as found:
        assert found == 0 and torch.equal(model(cols), reference)  # the ONNX export keeps torch's fold
    with resizes_as_matrices(model, cols, folds_as_sums=True) as found:
        got = model(cols)
    assert found == 1 and torch.allclose(got, reference, rtol=0, atol=1e-6 * float(reference.abs().max()))
    assert F.fold is fold


OUTLOOK_NET = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class OutlookNet(nn.Module):
        """VOLO's outlook attention in short: unfold 3x3 windows at stride 2, weight them, fold them back."""

        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
            self.weights = nn.Linear(9, 9)

        def forward(self, x):
            s = F.relu(self.stem(x))
            b, c, h, w = s.shape
            cols = F.unfold(s, 3, padding=1, stride=2).reshape(b, c, 9, -1).transpose(2, 3)
            cols = self.weights(cols).transpose(2, 3).reshape(b, c * 9, -1)
            return self.head(F.fold(cols, (h, w), 3, padding=1, stride=2))
''')


def test_litert_converts_an_unfold_and_fold_into_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, OUTLOOK_NET, "outlook_net.py:OutlookNet")
