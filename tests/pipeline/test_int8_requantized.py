"""A run whose INT8 file has sums XNNPACK refuses for their inputs' scale (two tiny branches summed,
then concatenated with a large one: the sum gets the concatenation's coarse grid) deploys the file
with those inputs requantized, in one XNNPACK partition; the manifest and report say so."""

from __future__ import annotations

import json

TINY_SUM_NET = '''
import torch
import torch.nn as nn


class TinySumNet(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.tiny_a, self.tiny_b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.large = nn.Conv2d(16, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(32, num_classes)
        with torch.no_grad():
            for conv, gain in ((self.tiny_a, 1e-5), (self.tiny_b, 1e-5), (self.large, 10.0)):
                conv.weight.mul_(gain)
                conv.bias.mul_(gain)

    def forward(self, x):
        x = self.stem(x)
        s = self.tiny_a(x) + self.tiny_b(x)
        return self.head(self.body(torch.cat([s, self.large(x)], dim=1)).mean((2, 3)))
'''


def test_sums_of_too_fine_inputs_are_requantized_into_one_partition(tmp_path):
    from tests.pipeline.user_card import run_user_card

    bundle = run_user_card(tmp_path, source=TINY_SUM_NET, file="tinysum.py", cls="TinySumNet",
                           pruning={"target_macs": 0.7})
    manifest = json.loads((bundle / "manifest.json").read_text())
    requantized = manifest["int8_requantized"]
    assert requantized, manifest.keys()
    for family, record in requantized.items():
        assert record["requantized"] >= 1 and record["partitions_after"] < record["partitions_before"], record
        assert record["converter"] in ("onnx2tf", "litert-torch")
        int8 = next(a for a in manifest["artifacts"] if a["name"] == f"{family}-tflite-int8")
        assert int8["delegate"]["partitions"] == record["partitions_after"]
    report = (bundle / "report.md").read_text()
    assert "ADD/MUL input(s) on a grid finer than XNNPACK takes requantized" in report
