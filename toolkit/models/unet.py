"""A configurable 2-D U-Net (depth, base width, normalisation, upsampling, channels, classes).

Layer names are stable (`enc0.conv1`, `up1`, `head`, ...) so model cards can name layers that
must never be pruned; the skip concatenations are plain torch.cat, which Torch-Pruning traces."""

from __future__ import annotations

import torch
import torch.nn as nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use batch, group or none")


class DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none")
        self.norm1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none")
        self.norm2 = _norm(norm, cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif mode == "resize":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
        else:
            raise ValueError(f"unknown upsampling {mode!r}; use transpose or resize")

    def forward(self, x):
        return self.up(x)


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 3, *, base: int = 16, depth: int = 4,
                 norm: str = "batch", upsample: str = "transpose"):
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(DoubleConv(cin, w, norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], norm)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(Up(widths[i + 1], widths[i], upsample))
            self.decoders.append(DoubleConv(widths[i] * 2, widths[i], norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.depth = depth

    def forward(self, x):
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
