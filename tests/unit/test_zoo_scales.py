"""The deploy zoo's random weights stand in for trained ones: parameters initialised at (near) zero
(a zero-init last BatchNorm, layer scales at 1e-6) are drawn from U(0.1, 1); biases and ordinary
weights are left alone, and the draw is seeded."""

from __future__ import annotations

import torch
import torch.nn as nn

from toolkit.studies.zoo_sources import trained_like_scales


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gamma = nn.Parameter(torch.full((4, 1, 1), 1e-6))
        nn.init.zeros_(self.bn.weight)

    def forward(self, x):
        return x + self.gamma * self.bn(self.conv(x))


def test_zero_and_tiny_scales_are_drawn_like_trained_ones():
    torch.manual_seed(0)
    block = _Block()
    conv_weight = block.conv.weight.detach().clone()
    drawn = trained_like_scales(block)
    assert sorted(drawn) == ["bn.weight", "gamma"]
    for p in (block.gamma, block.bn.weight):
        assert float(p.min()) >= 0.1 and float(p.max()) <= 1.0
    assert torch.equal(block.conv.weight, conv_weight) and not block.bn.bias.any()
    again = _Block()
    trained_like_scales(again)
    assert torch.equal(again.gamma, block.gamma)  # seeded
