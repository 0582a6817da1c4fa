"""INT8 accuracy fallback, for real: a small CNN whose stem output carries one large constant
channel (no information, like the outlier channels of real networks) loses its accuracy in
per-tensor INT8; the run measures per-layer SNR with ai-edge-quantizer's venv, protects the
sensitive layers (16-bit activations, then float) and deploys a file that passes the gate."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import yaml

from toolkit.core.errors import EdgeShrinkError

NETS = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class OutlierNet(nn.Module):
        def __init__(self, num_classes=4, width=8):
            super().__init__()
            self.stem = nn.Conv2d(3, width + 1, 3, 2, 1)
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width + 1, 16, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(self.body(self.stem(x)), 1).flatten(1))


    def build(num_classes=4, width=8):
        return OutlierNet(num_classes, width)
''')

OUTLIER = 3000.0


def _trained_outlier_net(module):
    """Train on the synthetic classes, then make the stem's last channel an outlier: about OUTLIER
    everywhere (small weights, large bias) and read by nothing (zero weights downstream), so the
    float function keeps its accuracy."""
    import torch

    from toolkit.tasks.classification import classification_loss, train_batches
    from toolkit.data.imagefolder import synthetic_split
    from toolkit.data.preprocess import InputSpec
    from toolkit.train.loop import TrainConfig, fit

    torch.manual_seed(0)
    model = module.build()
    data = synthetic_split(4, 24, 32, 32, seed=1)
    batches, steps = train_batches(data, InputSpec(32, 32), 16, 0, augment=False)
    fit(model, TrainConfig(epochs=10, batch_size=16, lr=1e-2, label_smoothing=0.0), batches, steps,
        classification_loss(0.0, 0.0, 1.0), lambda m: {"acc": 0.0}, "acc", progress=False)
    with torch.no_grad():
        model.stem.weight[-1] = 0.1 * torch.randn_like(model.stem.weight[-1])
        model.stem.bias[-1] = OUTLIER
        model.body[1].weight[:, -1] = 0.0
    return model.eval()


@pytest.fixture(scope="module")
def outlier_card(tmp_path_factory):
    import torch

    from tests.conftest import write_module

    root = tmp_path_factory.mktemp("outlier")
    module = write_module(root / "outlier_nets.py", NETS, "outlier_nets_for_weights")
    torch.set_num_threads(1)
    torch.save(_trained_outlier_net(module).state_dict(), root / "weights.pt")
    card = {"name": "outlier_net", "architecture": "outlier_nets.py:build", "arguments": {"num_classes": 4},
            "task": "classification", "dataset": "synthetic", "metric": "top1", "labels": ["a", "b", "c", "d"],
            "input": {"size": [32, 32], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "checkpoint": {"path": "weights.pt"}}
    (root / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return root / "card.yaml"


@pytest.fixture(scope="module")
def fallback_bundle(outlier_card, workspace, tmp_path_factory):
    import os

    from toolkit.api import plan, run

    os.environ["EDGESHRINK_TARGETS_DIR"] = str(workspace / "targets")
    try:
        bundle = run(plan(str(outlier_card), target="tiny", out=str(tmp_path_factory.mktemp("dist")), synthetic_data=True,
                          structured=False, finetune_epochs=0, progress=False))
    finally:
        os.environ.pop("EDGESHRINK_TARGETS_DIR", None)
    return bundle.path


def test_int8_that_misses_the_gate_is_rescued_by_protecting_sensitive_layers(fallback_bundle):
    manifest = json.loads((fallback_bundle / "manifest.json").read_text())
    record = manifest["int8_fallback"]["pruned"]
    trigger = record["trigger"]
    assert trigger["dense_fp32"] - trigger["top1"] > trigger["max_metric_drop"]  # the converter's INT8 file failed
    steps = record["steps"]
    assert steps[0]["step"] == "better calibration" and not steps[0]["passes"]
    assert record["chosen"] == steps[-1]["step"] and steps[-1]["passes"]
    assert all(isinstance(s["partitions"], int) for s in steps if s["metric"] is not None)  # re-checked every step
    assert record["sensitivity"][0]["loss_db"] > 10  # the layer that reads the outlier tensor stands out
    protected = steps[-1]["protect"]
    assert protected and set(protected.values()) <= {"int16", "float"}
    art = {a["name"]: a for a in manifest["artifacts"]}["pruned-tflite-int8"]
    dense = {a["name"]: a for a in manifest["artifacts"]}["dense-tflite-fp32"]
    assert dense["metrics"]["top1"] - art["metrics"]["top1"] <= trigger["max_metric_drop"] + 1e-9
    assert "ai-edge-quantizer" in art["converter"]
    report = (fallback_bundle / "report.md").read_text()
    assert "INT8 fallback" in report and steps[-1]["step"] in report
    assert not list(fallback_bundle.glob(".int8-fallback*"))  # no step files left behind


def test_sensitivity_ranks_the_layer_that_reads_the_outlier_first(fallback_bundle):
    from toolkit.quantize.int8_fallback import layer_sensitivity, rank_layers, requantize

    fp32 = fallback_bundle / "outlier_net_pruned_fp32.tflite"
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (8, 32, 32, 3)).astype(np.float32)
    q = fallback_bundle.parent / "q.tflite"
    requantize(fp32, q, calibration=x, protect={}, io_dtype="int8")
    ranked = rank_layers(layer_sensitivity(fp32, q, samples=x))
    assert ranked[0]["op"] == "CONV_2D" and ranked[0]["loss_db"] > 10
    assert ranked[0]["input_snr_db"] > ranked[0]["snr_db"]


def test_missing_quantizer_venv_is_one_line_with_the_fix(tmp_path, monkeypatch):
    from toolkit.quantize.int8_fallback import quant_python

    monkeypatch.setenv("EDGESHRINK_QUANT_VENV", str(tmp_path / "nothing"))
    with pytest.raises(EdgeShrinkError, match="make setup-quant"):
        quant_python()


def test_broken_float_file_and_empty_calibration_are_one_line_errors(tmp_path):
    from toolkit.quantize.int8_fallback import requantize

    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x00not a flatbuffer" * 8)
    x = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(EdgeShrinkError, match="ai-edge-quantizer could not quantize") as err:
        requantize(broken, tmp_path / "q.tflite", calibration=x, protect={}, io_dtype="int8")
    assert "\n" not in str(err.value) and broken.read_bytes().startswith(b"\x00not")  # the input is left as it was
    assert not (tmp_path / "q.tflite").exists()
    with pytest.raises(EdgeShrinkError, match="calibration"):
        requantize(broken, tmp_path / "q.tflite", calibration=x[:0], protect={}, io_dtype="int8")
