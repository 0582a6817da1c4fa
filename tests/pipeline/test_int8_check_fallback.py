"""An INT8 TFLite file that fails its full-integer check does not end the run: the other converter's
INT8 file is made and checked, and when it fails too the family goes on without an INT8 file, the
report saying why and the bundle deploying a verified float file. The net computes sin(x), which
TFLite has no INT8 kernel for in either converter's file."""

from __future__ import annotations

import json


SINE_NET = '''
import torch
import torch.nn as nn


class SineNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.sin(x) * 0.1 + x
        return self.head(self.body(x).mean((2, 3)))
'''


def test_int8_files_failing_their_check_are_dropped_with_the_reason(tmp_path):
    from tests.pipeline.user_card import run_user_card

    bundle = run_user_card(tmp_path, source=SINE_NET, file="sinenet.py", cls="SineNet")
    manifest = json.loads((bundle / "manifest.json").read_text())
    dropped = manifest["tflite_converters"]["pruned"]["int8_dropped"]
    assert "onnx2tf's INT8 file" in dropped and "litert-torch's INT8 file" in dropped and "SIN" in dropped, dropped
    names = {a["name"] for a in manifest["artifacts"]}
    assert "pruned-tflite-int8" not in names and {"dense-tflite-fp32", "pruned-tflite-fp32"} <= names
    assert not list(bundle.glob("*int8.tflite"))
    assert manifest["deploy"]["artifact"].endswith("tflite-fp32")
    assert "no INT8 TFLite file" in (bundle / "report.md").read_text()
