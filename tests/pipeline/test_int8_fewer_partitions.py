"""A verified INT8 TFLite file that XNNPACK runs in several partitions gives way
to the other converter's INT8 file when that one runs in fewer and passes the gate; the manifest
and report say so.
The net keeps a residual sum and rectifies it too (LCNet, MobileViTv2): no op can take that ReLU
as its fused activation, and XNNPACK takes no lone INT8 RELU. In onnx2tf's file EdgeShrink's ONNX
rewrite makes it the fused ReLU of an identity depthwise convolution; litert-torch's keeps it."""

from __future__ import annotations

import json


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
    from tests.pipeline.user_card import run_user_card

    bundle = run_user_card(tmp_path, source=SHARED_SUM_NET, file="sharedsum.py", cls="SharedSumNet", tflite_converter="litert-torch")
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
