"""An INT8 TFLite file that passes its check but that XNNPACK runs in several partitions gives way
to the other converter's INT8 file when that one runs in fewer; the manifest and report say so.
The net keeps a residual sum and rectifies it too (LCNet, MobileViTv2): no op can take that ReLU
as its fused activation, and XNNPACK takes no lone INT8 RELU. In onnx2tf's file EdgeShrink's ONNX
rewrite makes it the fused ReLU of an identity depthwise convolution; litert-torch's keeps it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from toolkit.core.paths import REPO_ROOT

SHARED_SUM_NET = '''
import torch
import torch.nn as nn


class SharedSumNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.branch = nn.Conv2d(16, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        s = x + self.branch(x)
        x = torch.relu(s) + s * 0.5
        return self.head(self.body(x).mean((2, 3)))
'''


def test_the_int8_file_in_fewer_xnnpack_partitions_is_kept(tmp_path):
    import torch

    from tests.conftest import write_module

    module = write_module(tmp_path / "sharedsum.py", SHARED_SUM_NET, f"sharedsum_{tmp_path.name}")
    torch.manual_seed(0)
    torch.save(module.SharedSumNet().state_dict(), tmp_path / "weights.pt")
    card = {"name": "sharedsum", "architecture": "sharedsum.py:SharedSumNet", "arguments": {"num_classes": 4},
            "task": "classification", "dataset": "synthetic", "metric": "top1", "checkpoint": {"path": "weights.pt"},
            "input": {"size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}, "labels": list("abcd"),
            "tflite_converter": "litert-torch"}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", str(tmp_path / "card.yaml"), "--target",
                           "rpi4", "--synthetic-data", "--finetune-epochs", "0", "--no-bench", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=dict(os.environ), cwd=REPO_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bundle = tmp_path / "out" / "sharedsum-rpi4"
    manifest = json.loads((bundle / "manifest.json").read_text())
    chosen = manifest["tflite_converters"]["pruned"]
    assert chosen["used"] == "litert-torch" and chosen["int8"]["used"] == "onnx2tf", chosen
    assert "litert-torch's INT8 file runs in 2 XNNPACK partitions, onnx2tf's in 1" in chosen["int8"]["fallback_reason"]
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    int8 = by_name["pruned-tflite-int8"]
    assert int8["converter"] == "onnx2tf" and int8["delegate"]["partitions"] == 1
    assert by_name["pruned-tflite-fp32"]["converter"] == "litert-torch"
    assert not [p for p in bundle.rglob("*") if p.name.startswith(".")]  # the file set aside is gone
    assert "INT8 TFLite file: made by **onnx2tf**" in (bundle / "report.md").read_text()
