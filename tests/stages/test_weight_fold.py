"""Convolutions computing their weight in forward (timm's weight standardisation, torch
parametrizations) become plain convolutions with the same outputs before export, checkpoints of the
folded model reload, and modules that do something else before convolving are left alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.models.reparameterize import reparameterize, summary
from toolkit.models.weight_fold import computes_weight, fold_weights


class _Padded(nn.Conv2d):
    """Changes its input (reflect pad) before convolving: not a weight transform, kept."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.weight, self.bias, self.stride, 0)


class _Net(nn.Module):
    def __init__(self, conv_a, conv_b):
        super().__init__()
        self.a, self.b = conv_a, conv_b
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))).mean((2, 3)))


def _same(model, other, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = model(x), other(x)
    return float((ref - got).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.parametrize("kind", ["StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"])
def test_timm_weight_standardisation_folds_to_plain_convolutions(kind, tmp_path):
    layers = pytest.importorskip("timm.layers")
    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cls = getattr(layers, kind)
    model = _Net(cls(3, 8, 3, stride=2), cls(8, 8, 3, stride=1)).eval()
    assert computes_weight(model.a)
    fused, report = reparameterize(model, input_shape=(1, 3, 33, 30))
    assert report["fused"] and report["blocks"] == 2, report
    assert {type(m).__name__ for m in (fused.a, fused.b)} <= {"Conv2d", "SamePadConv2d"}
    assert not any(computes_weight(m) for m in fused.modules())
    assert _same(model, fused, (2, 3, 33, 30)) and _same(model, fused, (1, 3, 40, 41))  # any input size
    assert "fold_weight" in summary(report)
    path = tmp_path / "folded.pt"
    save_checkpoint(path, fused, "test", {})
    reloaded, payload = load_checkpoint(path, factory=lambda: _Net(cls(3, 8, 3, stride=2), cls(8, 8, 3)))
    assert payload["weights_folded"] and _same(fused, reloaded, (1, 3, 33, 30))


def test_parametrized_weight_folds_and_other_input_transforms_are_kept():
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = _Net(weight_norm(nn.Conv2d(3, 8, 3, padding=1)), _Padded(8, 8, 3)).eval()
    assert computes_weight(model.a) and computes_weight(model.b)
    folded, done = fold_weights(model)
    assert done == ["a: ParametrizedConv2d.fold_weight"]
    assert type(folded.a) is nn.Conv2d and isinstance(folded.b, _Padded)


def test_plain_models_are_untouched():
    model = _Net(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)).eval()
    same, report = reparameterize(model, input_shape=(1, 3, 16, 16))
    assert same is model and report == {}
