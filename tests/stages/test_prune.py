"""Structured pruning on real torchvision architectures: MAC budget, rounding, portable reload."""

from __future__ import annotations

import pytest
import torch

from toolkit.models.architectures import create_model
from toolkit.config.pruning import PruneConfig
from toolkit.prune.prune import count_macs_params, prune_model

SHAPE = (1, 3, 64, 64)


@pytest.mark.parametrize("arch,head", [("mobilenet_v3_small", "classifier.3"), ("mobilenet_v2", "classifier.1")])
def test_prune_to_mac_budget_and_reload_bit_exact(arch, head, tmp_path):
    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model(arch, num_classes=10, width_mult=0.5).eval()
    dense_macs, dense_params = count_macs_params(model, SHAPE)
    cfg = PruneConfig(scope="uniform", target_macs=0.6, steps=2, round_to=8)
    calls = []
    model, history = prune_model(model, input_shape=SHAPE, cfg=cfg, never_prune=[head],
                                 finetune=lambda m, s: calls.append(s) or {}, progress=False)
    assert calls == [1, 2]  # fine-tuned after each step
    assert history[-1]["macs"] <= 0.6 * dense_macs and history[-1]["params"] < dense_params
    assert history[1]["macs"] > history[2]["macs"]
    layer = dict(model.named_modules())[head]
    assert layer.out_features == 10  # the classifier output is never pruned
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.out_channels > 10:
            assert m.out_channels % 8 == 0, m
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model, arch, {"num_classes": 10, "width_mult": 0.5})
    reloaded, payload = load_checkpoint(path)
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert "channel_spec" in payload and "state_dict" in payload


@pytest.mark.parametrize("importance", ["l1", "bn_scale", "taylor"])
def test_importances_and_global_scope(importance):
    torch.manual_seed(0)
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5).eval()
    with torch.no_grad():  # a trained model's BN scales differ; fresh ones are all 1 (a tie)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.1, 1.0)
    dense_macs, _ = count_macs_params(model, SHAPE)
    grads = (lambda: [(torch.randn(4, *SHAPE[1:]), torch.tensor([0, 1, 2, 3]))]) if importance == "taylor" else None
    cfg = PruneConfig(importance=importance, scope="global", target_macs=0.7, steps=1)
    model, history = prune_model(model, input_shape=SHAPE, cfg=cfg, never_prune=["classifier.3"], grad_batches=grads, progress=False)
    assert history[-1]["macs"] <= 0.7 * dense_macs
    assert model(torch.randn(1, *SHAPE[1:])).shape == (1, 4)


def test_channel_ratio_mode():
    model = create_model("mobilenet_v2", num_classes=4, width_mult=0.5).eval()
    _, params = count_macs_params(model, SHAPE)
    model, history = prune_model(model, input_shape=SHAPE, cfg=PruneConfig(target_macs=None, channel_ratio=0.3, steps=1),
                                 never_prune=["classifier.1"], progress=False)
    assert history[-1]["params"] < 0.8 * params
