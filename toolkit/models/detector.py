"""An anchor-free MobileNetV3 detector (FCOS-style grid heads on a light FPN), output without any
post-processing: one raw tensor (N, A, 4 + C) that deploy/common/edgeshrink_detect.py decodes
(decoder "grid", box_encoding "ltrb", sigmoid scores; priors per level in row-major cell order).

Backbone: torchvision's MobileNetV3 `features` (the same module names as the classifier, under
`backbone.`, so a classifier trained here can seed it). Neck: a 1x1 lateral conv per level and a
top-down sum (nearest upsampling). Heads: per level a depthwise-separable 3x3 block, then a 1x1
box conv (4) and a 1x1 class conv (C): the only layers whose output width is fixed by the task
(pruning keeps them whole)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, kernel: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def feature_taps(features: nn.Sequential, strides: tuple) -> list[tuple[int, int]]:
    """[(index of the last block at each wanted stride, its channels)] of a features Sequential."""
    x, taps = torch.zeros(1, 3, 64, 64), {}
    with torch.no_grad():
        for i, block in enumerate(features):
            x = block(x)
            taps[64 // x.shape[-1]] = (i, x.shape[1])
    missing = [s for s in strides if s not in taps]
    if missing:
        raise ValueError(f"the backbone has no features at stride(s) {missing}; it has {sorted(taps)}")
    return [taps[s] for s in strides]


class GridDetector(nn.Module):
    """Backbone features -> FPN-lite -> per-level box and class convs -> (N, A, 4 + C)."""

    def __init__(self, features: nn.Sequential, *, num_classes: int, strides: tuple = (8, 16, 32),
                 neck_channels: int = 64, prior_probability: float = 0.01):
        super().__init__()
        taps = feature_taps(features, tuple(strides))
        self.backbone, self.taps = features, [i for i, _ in taps]
        self.lateral = nn.ModuleList(_conv_bn(c, neck_channels, 1) for _, c in taps)
        self.blocks = nn.ModuleList(nn.Sequential(_conv_bn(neck_channels, neck_channels, 3, groups=neck_channels),
                                                  _conv_bn(neck_channels, neck_channels, 1)) for _ in taps)
        self.box = nn.ModuleList(nn.Conv2d(neck_channels, 4, 1) for _ in taps)
        self.cls = nn.ModuleList(nn.Conv2d(neck_channels, num_classes, 1) for _ in taps)
        for box, cls in zip(self.box, self.cls):
            nn.init.normal_(box.weight, std=0.01)
            nn.init.constant_(box.bias, 2.0)  # two strides each side: a plausible first box
            nn.init.normal_(cls.weight, std=0.01)
            nn.init.constant_(cls.bias, -math.log((1 - prior_probability) / prior_probability))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        found = []
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i in self.taps:
                found.append(x)
            if i == self.taps[-1]:
                break
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [lateral(f) for lateral, f in zip(self.lateral, self.features(x))]
        for i in range(len(levels) - 2, -1, -1):
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="nearest")
        outputs = []
        for level, block, box, cls in zip(levels, self.blocks, self.box, self.cls):
            y = block(level)
            outputs.append(torch.cat([box(y), cls(y)], 1).flatten(2))
        return torch.cat(outputs, 2).transpose(1, 2)


def mobilenet_v3_detector(*, num_classes: int = 1, variant: str = "small", width_mult: float = 1.0,
                          strides: tuple = (8, 16, 32), neck_channels: int = 64) -> GridDetector:
    """A GridDetector on torchvision's MobileNetV3 (`variant` small or large) features, freshly initialised."""
    from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

    if variant not in ("small", "large"):
        raise ValueError(f"variant must be 'small' or 'large', got {variant!r}")
    build = mobilenet_v3_small if variant == "small" else mobilenet_v3_large
    features = build(weights=None, width_mult=width_mult).features
    return GridDetector(features, num_classes=num_classes, strides=tuple(strides), neck_channels=neck_channels)
