"""Conv2d with TF-style dynamic 'SAME' padding: what timm's StdConv2dSame/ScaledStdConv2dSame
convolve with once their weight is folded (`toolkit.models.weight_fold`). Imports torch at module
level (the class subclasses nn.Conv2d): import this module only where a model needs it."""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F


def same_padding(size: int, *, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial axis: outputs ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def same_pads(shape, *, kernel, stride, dilation) -> list[int]:
    """F.pad's argument (last axis first) for TF 'SAME' padding of an input of `shape`."""
    pads: list[int] = []
    for size, k, s, d in reversed(list(zip(shape[2:], kernel, stride, dilation))):
        pads.extend(same_padding(size, kernel=k, stride=s, dilation=d))
    return pads


class SamePadConv2d(nn.Conv2d):
    """Conv2d padding its input with zeros TF 'SAME' style (from the input's size), then no padding."""

    convolves_its_weight = True  # weight_fold: nothing to fold here

    def forward(self, x):
        x = F.pad(x, same_pads(x.shape, kernel=self.kernel_size, stride=self.stride, dilation=self.dilation))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
