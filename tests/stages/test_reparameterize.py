"""Deploy-time fusion before pruning and export: timm's re-parameterisable families fuse to fewer
MACs with the same outputs, reload from their checkpoints, and a fusion that changes the outputs
or fails is refused with the reason (the original model is kept)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from toolkit.models.reparameterize import is_reparameterized, reparameterize, summary
from toolkit.prune.macs import count_macs

SHAPE = (1, 3, 64, 64)


def _timm(name: str):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10).eval()


@pytest.mark.parametrize("name", ["mobileone_s0", "repvgg_a0", "fastvit_t8"])
def test_timm_families_fuse_to_fewer_macs_with_equal_outputs(name, tmp_path):
    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.models.weights import ModelSource, load_weights

    model = _timm(name)
    fused, report = reparameterize(model, input_shape=SHAPE, count_macs=count_macs)
    assert report["fused"], report
    assert report["macs_after"] < report["macs_before"]
    assert is_reparameterized(fused) and not is_reparameterized(model)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert (ref - got).abs().max() <= 1e-4 * ref.abs().max()
    assert "MACs" in summary(report)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, fused, "timm:create_model", {"model_name": name, "num_classes": 10})
    reloaded, _ = load_checkpoint(path, factory=lambda **kw: _timm(kw["model_name"]))
    again, _ = load_weights(ModelSource("timm:create_model", {"model_name": name, "num_classes": 10}), path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), got) and torch.equal(again(x), got)


class _Wrong(nn.Module):
    """Offers switch_to_deploy, but its 'fused' form computes something else."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = 1.0

    def forward(self, x):
        return self.conv(x) * self.scale

    def switch_to_deploy(self):
        self.scale = 2.0


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)

    def fuse(self, other):  # needs an argument: not the convention
        return self


@pytest.mark.parametrize("block, why", [(_Wrong, "changes the outputs"), (_Broken, "fusing failed")])
def test_a_fusion_that_changes_outputs_or_fails_keeps_the_original(block, why):
    model = nn.Sequential(block(), nn.ReLU())
    kept, report = reparameterize(model, input_shape=SHAPE)
    assert kept is model and not report["fused"]
    assert why in report["reason"] and "kept the unfused model" in summary(report)


def test_a_model_without_fusing_methods_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    kept, report = reparameterize(model, input_shape=SHAPE)
    assert kept is model and report == {} and summary(report) == ""
