"""GroupNorm in the form XNNPACK takes, for litert-torch's files (toolkit.convert.graph_rewrite.
ConvGroupNorm): the same maths for 1, some and one-per-channel groups and for timm's subclasses; a
subclass that computes something else is kept; a conv net with GroupNorms converts to FP32 and
INT8 files in one XNNPACK partition. Without the form litert-torch's files have BROADCAST_TO
(refused by XNNPACK in FP32 too), RSQRT and an ADD of eps: FP32 2 partitions, INT8 4."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_group_norm_form_keeps_the_maths(groups):
    from toolkit.convert.graph_rewrite import rewrite_for_delegates

    torch.manual_seed(0)
    norm = nn.GroupNorm(groups, 16)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.uniform_(norm.bias, -0.3, 0.3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), norm).eval()
    x = torch.randn(2, 3, 9, 11) * 5 + 2
    with torch.no_grad():
        reference = model(x)
    rewritten, changes = rewrite_for_delegates(model, shift="conv")
    assert changes == ["1: GroupNorm -> ConvGroupNorm"]
    with torch.no_grad():
        assert torch.allclose(rewritten(x), reference, atol=1e-5 * float(reference.abs().max()))


def test_timm_group_norm_is_rewritten_and_a_different_subclass_is_kept():
    import timm.layers

    from toolkit.convert.graph_rewrite import rewrite_for_delegates

    class ScaledGroupNorm(nn.GroupNorm):  # not group norm's output: left as it is
        def forward(self, x):
            return super().forward(x) * 2.0

    model = nn.Sequential(timm.layers.GroupNorm1(16), timm.layers.GroupNorm(16, num_groups=4), ScaledGroupNorm(4, 16))
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        reference = model(x)
    rewritten, changes = rewrite_for_delegates(model, shift="conv")
    assert [c.split(": ")[0] for c in changes] == ["0", "1"], changes
    assert type(rewritten[2]) is ScaledGroupNorm
    with torch.no_grad():
        assert torch.allclose(rewritten(x), reference, atol=1e-5)
    assert F.group_norm is torch.nn.functional.group_norm


GROUP_NORM_NET = textwrap.dedent('''
    import torch.nn as nn


    class GroupNormNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(1, 32), nn.ReLU())
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.body(self.stem(x)).mean((2, 3)))
''')


def test_litert_int8_group_norm_net_is_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, GROUP_NORM_NET, "groupnorm.py:GroupNormNet")
