"""Checkpoints as they are found in the wild: saved the old way (legacy torch.save format, no
BatchNorm `num_batches_tracked`), from DataParallel (`module.`), nested under `state_dict` /
`model` / `net`: they load as PyTorch's load_state_dict would accept them, with the nesting key and
the prefix found automatically. A real mismatch names the key, both shapes and a fix that helps;
NaN or Inf weights are refused at load, naming the tensor."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from tests.conftest import TINY_CARD
from tests.hostile.conftest import assert_error_line, assert_refused, cli
from toolkit.core.errors import EdgeShrinkError

# akamaster/pytorch_resnet_cifar10 style: option-A shortcuts (strided subsampling + zero channel padding)
RESNET_CIFAR = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class LambdaLayer(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)


    class BasicBlock(nn.Module):
        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                pad = planes // 4
                self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


    class ResNet(nn.Module):
        def __init__(self, blocks, num_classes=10):
            super().__init__()
            self.in_planes = 16
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.layer1 = self._layer(16, blocks[0], 1)
            self.layer2 = self._layer(32, blocks[1], 2)
            self.layer3 = self._layer(64, blocks[2], 2)
            self.linear = nn.Linear(64, num_classes)

        def _layer(self, planes, count, stride):
            layers = []
            for s in [stride] + [1] * (count - 1):
                layers.append(BasicBlock(self.in_planes, planes, s))
                self.in_planes = planes
            return nn.Sequential(*layers)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            return self.linear(F.avg_pool2d(out, out.size()[3]).flatten(1))


    def resnet8(num_classes=10):
        return ResNet([1, 1, 1], num_classes)
''')

CARD = {"name": "resnet8_cifar", "architecture": "resnet_cifar.py:resnet8", "arguments": {"num_classes": 10},
        "task": "classification", "dataset": "synthetic", "metric": "top1",
        "input": {"size": [32, 32], "channels": 3, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]},
        "labels": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}


@pytest.fixture
def cifar(tmp_path):
    """resnet_cifar.py beside the card, and the trained-looking source model (BatchNorm statistics set)."""
    import torch

    from tests.conftest import write_module

    module = write_module(tmp_path / "resnet_cifar.py", RESNET_CIFAR, f"resnet_cifar_{tmp_path.name}")
    torch.manual_seed(0)
    model = module.resnet8(num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return tmp_path, model


def _save_old_way(model, path, *, nest="state_dict", prefix="module.", batches_tracked=False, legacy_format=True, extra=None):
    """As a 2018 training script saved it: DataParallel keys, nested with the epoch and best accuracy,
    the pre-zip torch.save format, no `num_batches_tracked` (PyTorch < 0.4.1)."""
    import torch

    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()
             if batches_tracked or not k.endswith("num_batches_tracked")}
    payload = state if nest is None else {nest: state, "epoch": 200, "best_prec1": 92.1, **(extra or {})}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy_format)


def _card(root, **changes):
    (root / "card.yaml").write_text(yaml.safe_dump({**CARD, "checkpoint": {"path": "weights.th"}, **changes}))
    return str(root / "card.yaml")


def _same_outputs(plan, model):
    import torch

    from toolkit.pipeline.plan import load_dense

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(load_dense(plan)(x), model(x))


def test_old_cifar_resnet_checkpoint_loads_through_an_outside_card(cifar, henv):
    """No num_batches_tracked, `module.` prefix, nested under `state_dict`, legacy format; the card
    names neither a key nor a prefix."""
    import toolkit

    root, model = cifar
    _save_old_way(model, root / "weights.th")
    plan = toolkit.plan(_card(root), target="tiny", synthetic_data=True, bench=False, finetune_epochs=0)
    assert _same_outputs(plan, model)


@pytest.mark.parametrize("case", [
    (None, "", False, True), ("model", "", True, False), ("net", "module.", False, False),
    ("state_dict", "module.model.", True, True), ("model_state_dict", "module.", True, False)],
    ids=["flat-legacy", "model", "net-module", "state_dict-two-levels", "model_state_dict"])
def test_nesting_and_prefix_are_found_automatically(cifar, henv, case):
    import toolkit

    nest, prefix, tracked, legacy = case
    root, model = cifar
    _save_old_way(model, root / "weights.th", nest=nest, prefix=prefix, batches_tracked=tracked, legacy_format=legacy)
    plan = toolkit.plan(_card(root), target="tiny", synthetic_data=True)  # "module.model.": both levels stripped
    assert _same_outputs(plan, model)


def test_card_key_and_prefix_still_win(cifar, henv):
    import toolkit

    root, model = cifar
    _save_old_way(model, root / "weights.th", extra={"ema": {k: v * 0 for k, v in model.state_dict().items()}})
    plan = toolkit.plan(_card(root, checkpoint={"path": "weights.th", "key": "state_dict", "strip_prefix": "module."}),
                        target="tiny", synthetic_data=True)
    assert _same_outputs(plan, model)


def test_legacy_batchnorm_buffers_in_the_library_loader(cifar):
    """toolkit.models.checkpoint.fit_state_dict accepts what load_state_dict accepts."""
    from tests.conftest import write_module
    from toolkit.models.checkpoint import fit_state_dict

    root, model = cifar
    module = write_module(root / "resnet_cifar.py", RESNET_CIFAR, f"resnet_cifar_again_{root.name}")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = fit_state_dict(module.resnet8(num_classes=10).eval(), state, "w.th")
    assert all(fresh.state_dict()[k].equal(v) for k, v in state.items())


def test_wrong_prefix_in_the_card_names_the_right_one(cifar, henv):
    import toolkit

    root, model = cifar
    _save_old_way(model, root / "weights.th")
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(_card(root, checkpoint={"path": "weights.th", "strip_prefix": "net."}), target="tiny",
                     synthetic_data=True)
    assert_error_line(exc, "'conv1.weight'", "is missing", "strip_prefix: 'module.'")


def test_wrong_num_classes_names_key_both_shapes_and_the_fix(cifar, henv):
    import toolkit

    root, model = cifar
    _save_old_way(model, root / "weights.th")
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(_card(root, arguments={"num_classes": 7}, labels=list("abcdefg")), target="tiny",
                     synthetic_data=True)
    assert_error_line(exc, "'linear.weight'", "(10, 64) in the file", "(7, 64) in the model", "num_classes: 10")
    assert "strip_prefix" not in str(exc.value)  # it would not help


def test_other_architecture_does_not_suggest_strip_prefix(cifar, henv):
    import torch

    import toolkit
    from toolkit.models.architectures import create_model

    root, _ = cifar
    torch.save({"state_dict": create_model("resnet18", num_classes=10).state_dict()}, root / "weights.th")
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(_card(root), target="tiny", synthetic_data=True)
    assert_error_line(exc, "does not fit the architecture", "another model")
    assert "strip_prefix" not in str(exc.value)


def test_several_state_dicts_without_a_usual_name_ask_for_the_key(cifar, henv):
    import torch

    import toolkit

    root, model = cifar
    torch.save({"student": model.state_dict(), "teacher": model.state_dict()}, root / "weights.th")
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(_card(root), target="tiny", synthetic_data=True)
    assert_error_line(exc, "several state_dicts", "'student'", "checkpoint.key")
    plan = toolkit.plan(_card(root, checkpoint={"path": "weights.th", "key": "teacher"}), target="tiny",
                        synthetic_data=True)
    assert _same_outputs(plan, model)


# ---- non-finite weights ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf"])
def test_plain_state_dict_with_non_finite_weights_is_refused_naming_the_key(cifar, henv, value):
    import torch

    import toolkit

    root, model = cifar
    state = model.state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float(value)
    torch.save({"state_dict": state}, root / "weights.th")
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(_card(root), target="tiny", synthetic_data=True)
    assert_error_line(exc, "weights.th", "non-finite", "'layer2.0.conv1.weight'", "another checkpoint")


def _all_nan_edgeshrink_checkpoint(path):
    import torch

    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint

    model = create_model("mobilenet_v3_small", **TINY_CARD["arguments"]).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    save_checkpoint(path, model, "mobilenet_v3_small", TINY_CARD["arguments"])


def test_all_nan_weights_are_refused_at_load_not_after_conversion(tmp_path, henv):
    """Once: 159 s of work, then onnxruntime's `AssertionError: scale issue`."""
    import time

    _all_nan_edgeshrink_checkpoint(tmp_path / "nan.pt")
    t0 = time.perf_counter()
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--checkpoint", tmp_path / "nan.pt",
               "--synthetic-data", "--no-bench", "--quiet", "--out", tmp_path / "out")
    assert_refused(proc, "nan.pt", "non-finite", "'features.0.0.weight'")
    assert time.perf_counter() - t0 < 120 and not (tmp_path / "out").exists()


def test_library_loader_refuses_non_finite_checkpoints(tmp_path):
    from toolkit.models.checkpoint import load_checkpoint

    _all_nan_edgeshrink_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(EdgeShrinkError) as exc:
        load_checkpoint(tmp_path / "nan.pt")
    assert_error_line(exc, "non-finite", "features.0.0.weight")
