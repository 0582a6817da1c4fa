"""An INT8 TFLite file that fails its full-integer check does not end the run: the other converter's
INT8 file is made and checked, and when it fails too the family goes on without an INT8 file, the
report saying why and the bundle deploying a verified float file. The net computes sin(x), which
TFLite has no INT8 kernel for in either converter's file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from toolkit.core.paths import REPO_ROOT

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
    import torch

    from tests.conftest import write_module

    module = write_module(tmp_path / "sinenet.py", SINE_NET, f"sinenet_{tmp_path.name}")
    torch.manual_seed(0)
    torch.save(module.SineNet().state_dict(), tmp_path / "weights.pt")
    card = {"name": "sinenet", "architecture": "sinenet.py:SineNet", "arguments": {"num_classes": 4},
            "task": "classification", "dataset": "synthetic", "metric": "top1", "checkpoint": {"path": "weights.pt"},
            "input": {"size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}, "labels": list("abcd")}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", str(tmp_path / "card.yaml"), "--target",
                           "rpi4", "--synthetic-data", "--finetune-epochs", "0", "--no-bench", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=dict(os.environ), cwd=REPO_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bundle = tmp_path / "out" / "sinenet-rpi4"
    manifest = json.loads((bundle / "manifest.json").read_text())
    dropped = manifest["tflite_converters"]["pruned"]["int8_dropped"]
    assert "onnx2tf's INT8 file" in dropped and "litert-torch's INT8 file" in dropped and "SIN" in dropped, dropped
    names = {a["name"] for a in manifest["artifacts"]}
    assert "pruned-tflite-int8" not in names and {"dense-tflite-fp32", "pruned-tflite-fp32"} <= names
    assert not list(bundle.glob("*int8.tflite"))
    assert manifest["deploy"]["artifact"].endswith("tflite-fp32")
    assert "no INT8 TFLite file" in (bundle / "report.md").read_text()
