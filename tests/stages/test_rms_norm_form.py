"""RMS norm in XNNPACK's form for litert-torch (toolkit.convert.rms_norm_form): modules are found by
what they compute (timm's RmsNorm, RmsNorm2d and RmsNormAct2d, torch's nn.RMSNorm), the maths stays
the same, look-alikes (LayerNorm, a norm with a bias) are left alone, and a small conv net with
timm's RMS norms converts to a full-integer litert-torch INT8 file in one XNNPACK partition. Without
the form that file keeps RSQRT and an ADD of eps outside XNNPACK (MobileNetV5: 81 of each)."""

from __future__ import annotations

import textwrap

import torch
import torch.nn as nn

RMS_NET = textwrap.dedent('''
    import torch.nn as nn
    from timm.layers import RmsNorm2d, RmsNormAct2d


    class RmsNet(nn.Module):
        def __init__(self, c=16):
            super().__init__()
            self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
            self.norm1 = RmsNormAct2d(c, act_layer=nn.ReLU)
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.norm2 = RmsNorm2d(c)
            self.head = nn.Linear(c, 4)

        def forward(self, x):
            x = self.norm1(self.stem(x))
            return self.head(self.norm2(x + self.conv(x)).mean((2, 3)))
''')


class _BiasedRms(nn.Module):  # an RMS norm plus a bias: not what the form computes
    def __init__(self, c):
        super().__init__()
        self.normalized_shape, self.eps = (c,), 1e-6
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight + self.bias


def test_rms_norms_are_found_by_what_they_compute():
    from timm.layers import RmsNorm, RmsNorm2d, RmsNormAct2d

    from toolkit.convert.rms_norm_form import rms_norm_forms

    torch.manual_seed(0)
    model = nn.Sequential(RmsNorm2d(8), nn.Conv2d(8, 8, 1), RmsNormAct2d(8, act_layer=nn.GELU), nn.Flatten(2),
                          RmsNorm(9), nn.RMSNorm(9), nn.LayerNorm(9), _BiasedRms(9)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1:
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 3, 3) * 3
    with torch.no_grad():
        reference = model(x)
        model, changes = rms_norm_forms(model)
        got = model(x)
    assert changes == ["0: RmsNorm2d -> DelegateRmsNorm(channels)", "2: RmsNormAct2d -> DelegateRmsNorm(channels) + GELU",
                       "4: RmsNorm -> DelegateRmsNorm(last)", "5: RMSNorm -> DelegateRmsNorm(last)"]
    assert torch.allclose(got, reference, rtol=1e-4, atol=1e-5)


def test_litert_int8_rms_net_is_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, RMS_NET, "rms.py:RmsNet")
