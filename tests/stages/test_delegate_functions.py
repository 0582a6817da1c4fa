"""Softmax, scaled-dot-product attention, layer norm and GELU in XNNPACK's forms for litert-torch
(toolkit.convert.delegate_functions): the same maths, torch's own functions back afterwards, and a
small token net (LayerNorm, F.scaled_dot_product_attention, attention over one token, one key/value
head shared by all query heads, one head alone, Tensor.softmax, both GELUs, a nearest upsampling, average pools,
a padded max pool, reflect and replicate padding, a channels-last 4-D LayerNorm) whose litert-torch
INT8 file is full-integer (XNNPACK's float DIV/SQRT islands excepted) in one XNNPACK partition; a
layer norm on a pooled 1x1 channels-last map (ConvNeXt's head) converts and keeps parity.
Without the forms litert-torch's INT8 file keeps EXP and REDUCE_MAX float (not full-integer), and
its LayerNorm's RSQRT, SQUARED_DIFFERENCE and ADD of eps split it (MobileViT-XXS: 67 partitions)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

TOKEN_NET = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class TokenNet(nn.Module):
        def __init__(self, dim=16, heads=2):
            super().__init__()
            self.heads = heads
            self.stem = nn.Conv2d(3, dim, 4, stride=4)
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mix, self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
            self.kv = nn.Linear(dim, 2 * dim // heads)  # one key/value head that every query head shares
            self.norm0 = nn.LayerNorm(dim)  # ConvNeXt's LayerNorm2d: over the channels of a 4-D channels-last map
            self.act = nn.GELU()
            self.reflect = nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect")  # MONAI's FlexibleUNet
            self.head = nn.Linear(dim, 4)

        def forward(self, x):
            s = self.stem(x)
            s = s + F.interpolate(F.max_pool2d(s, 2), scale_factor=2)  # nearest, a whole factor
            s = s + nn.MaxPool2d(3, 1, 1)(s)  # padded: litert-torch's PADV2 of -inf is not XNNPACK's
            s = s * torch.sigmoid(F.interpolate(nn.AvgPool2d(2)(s), scale_factor=2)) + F.avg_pool2d(s, 3, 1, 1)
            s = s + F.avg_pool2d(s, 3, 1, 1, count_include_pad=False)  # ViTamin's, CoAtNet's downsampling
            s = s + self.reflect(s) + F.pad(s, (1, 1, 2, 0), mode="replicate")[:, :, :-2, 1:-1]
            s = self.norm0(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            t = F.gelu(s, approximate="tanh").flatten(2).transpose(1, 2)
            b, n, c = t.shape
            q, k, v = self.qkv(self.norm1(t)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            t = t + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
            kv = self.kv(t).reshape(b, n, 2, 1, c // self.heads).permute(2, 0, 3, 1, 4)
            t = t + self.proj(F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2).reshape(b, n, c))
            t = t + self.fc2(self.act(self.fc1(t))) + self.fc2(F.gelu(self.fc1(t), approximate="tanh"))
            g = self.qkv(t.mean(1, keepdim=True)).reshape(b, 1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            t = t + self.proj(F.scaled_dot_product_attention(g[0], g[1], g[2]).transpose(1, 2).reshape(b, 1, c))
            one = F.scaled_dot_product_attention(q[:, :1], k[:, :1], v[:, :1])  # one head (timm's CPUBone)
            t = t + self.proj(torch.cat([one] * self.heads, 1).transpose(1, 2).reshape(b, n, c))
            t = t + F.normalize(t, dim=-1) + F.normalize(s, dim=1).flatten(2).transpose(1, 2)  # EdgeNeXt's XCA, SwiftFormer
            gate = (self.mix(self.norm2(t)) * 2.0).softmax(-1)
            return self.head((t * gate).mean(1))
''')


def _reference_and_rewritten(fn):
    from toolkit.convert.delegate_functions import delegate_functions

    with torch.no_grad():
        reference = fn()
        with delegate_functions():
            rewritten = fn()
    return reference, rewritten


@pytest.mark.parametrize("case", ["softmax_method", "softmax_function", "torch_softmax", "sdpa", "sdpa_causal",
                                  "sdpa_mask", "layer_norm", "gelu", "gelu_tanh", "softmax_one",
                                  "sdpa_shared_kv", "nearest", "upsample", "avg_pool", "avg_pool_padded",
                                  "avg_pool_ceil", "avg_pool_partial", "reflect", "replicate", "reflect_conv",
                                  "pad_constant", "sdpa_one_head", "sdpa_one_head_3d", "sdpa_one_head_mask",
                                  "avg_pool_uncounted", "avg_pool_uncounted_uneven", "max_pool_padded",
                                  "max_pool_padded_uneven", "max_pool_ceil", "normalize_last", "normalize_channels",
                                  "normalize_other"])
def test_each_form_keeps_the_maths(case):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8) * 20
    q, k, v = torch.randn(3, 2, 2, 6, 8).unbind(0)
    mask = torch.rand(6, 6) > 0.3
    mask |= torch.eye(6, dtype=torch.bool)
    norm = nn.LayerNorm(8)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.3, 0.3)
    reflect_conv = nn.Conv2d(3, 4, 3, padding=2, padding_mode="reflect")
    cases = {"softmax_method": lambda: x.softmax(-1), "softmax_function": lambda: F.softmax(x, dim=1),
             "torch_softmax": lambda: torch.softmax(x, 2), "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
             "sdpa_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
             "sdpa_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "layer_norm": lambda: norm(x),
             "gelu": lambda: nn.GELU()(x / 4), "gelu_tanh": lambda: F.gelu(x / 4, approximate="tanh"),
             "softmax_one": lambda: x[..., :1].softmax(-1),
             "sdpa_shared_kv": lambda: F.scaled_dot_product_attention(q, k[:, :1], v[:1, :1]),
             "nearest": lambda: F.interpolate(x, size=(15, 16)), "upsample": lambda: nn.Upsample(scale_factor=(2, 3))(x),
             "avg_pool": lambda: F.avg_pool2d(x, 2), "avg_pool_padded": lambda: nn.AvgPool2d(3, 1, 1)(x),
             "avg_pool_ceil": lambda: F.avg_pool2d(x, 2, ceil_mode=True),  # a last window of one row: kept
             "avg_pool_partial": lambda: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
             "avg_pool_uncounted": lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False)(x),
             "avg_pool_uncounted_uneven": lambda: F.avg_pool2d(x, (2, 3), (1, 2), (1, 1), count_include_pad=False),
             "max_pool_padded": lambda: nn.MaxPool2d(3, 2, 1)(x - 100),  # every value below the zeros a pad would add
             "max_pool_padded_uneven": lambda: F.max_pool2d(x, (2, 5), (1, 2), (1, 2)),
             "max_pool_ceil": lambda: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
             "reflect": lambda: F.pad(x, (2, 1, 4, 3), mode="reflect"),
             "replicate": lambda: F.pad(x, (0, 6, 1, 1), mode="replicate"),
             "reflect_conv": lambda: reflect_conv(x),
             "pad_constant": lambda: F.pad(x, (1, 1), value=-1.0),
             "normalize_last": lambda: F.normalize(x, dim=-1), "normalize_channels": lambda: F.normalize(x),
             "normalize_other": lambda: F.normalize(x, dim=2, eps=1e-3),  # kept: torch's own
             "sdpa_one_head": lambda: F.scaled_dot_product_attention(q[:1, :1], k[:1, :1], v[:1, :1]),
             "sdpa_one_head_3d": lambda: F.scaled_dot_product_attention(q[:1, 0], k[:1, 0], v[:1, 0]),
             "sdpa_one_head_mask": lambda: F.scaled_dot_product_attention(q[:1, :1], k[:1, :1], v[:1, :1], attn_mask=mask)}
    reference, rewritten = _reference_and_rewritten(cases[case])
    assert torch.allclose(reference, rewritten, atol=2e-5 * float(reference.abs().max()), rtol=1e-5), case


def test_torch_functions_are_restored():
    originals = (torch.Tensor.softmax, torch.softmax, F.softmax, F.scaled_dot_product_attention, F.layer_norm, F.gelu,
                 F.interpolate, F.avg_pool2d, F.pad, F.max_pool2d, F.normalize)
    _reference_and_rewritten(lambda: torch.ones(2).softmax(0))
    assert (torch.Tensor.softmax, torch.softmax, F.softmax, F.scaled_dot_product_attention, F.layer_norm, F.gelu,
            F.interpolate, F.avg_pool2d, F.pad, F.max_pool2d, F.normalize) == originals
    assert "softmax" not in torch.Tensor.__dict__


def test_litert_int8_token_net_is_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, TOKEN_NET, "tokens.py:TokenNet")


POOLED_NET = textwrap.dedent('''
    import torch.nn as nn


    class PooledNorm(nn.Module):
        def __init__(self, dim=16):
            super().__init__()
            self.stem, self.norm, self.head = nn.Conv2d(3, dim, 4, stride=4), nn.LayerNorm(dim), nn.Linear(dim, 4)

        def forward(self, x):
            pooled = self.stem(x).mean((2, 3), keepdim=True).permute(0, 2, 3, 1)  # (B, 1, 1, C)
            return self.head(self.norm(pooled).flatten(1))
''')


def test_litert_layer_norm_on_a_pooled_map_converts(tmp_path):
    """The layer norm's mean as a FULLY_CONNECTED over 2-D rows: on (B, 1, 1, C) it became a
    BATCH_MATMUL the converter rejected ("invalid output rank, expected 3 but got 4"; timm's ConvNeXt)."""
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert
    from toolkit.models.architectures import build_model, card_code
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.runtime.tflite import TFLiteRunner

    (tmp_path / "pooled.py").write_text(POOLED_NET)
    with card_code("pooled.py:PooledNorm", tmp_path):
        torch.manual_seed(0)
        model = build_model("pooled.py:PooledNorm", {}).eval()
        save_checkpoint(tmp_path / "m.pt", model, "pooled.py:PooledNorm", {})
        out = checkpoint_to_litert(tmp_path / "m.pt", (1, 3, 16, 16), tmp_path / "litert", None, delegate_rewrites=True)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    got = TFLiteRunner(out.float32, threads=1)(x)
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()
