"""End-to-end on the real data with the committed checkpoints (slow: minutes each).
Run with `make test-slow`. They check the issue's acceptance figures, not just that things run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from toolkit.core.paths import data_dir

pytestmark = pytest.mark.slow


def _run(model: str, target: str, tmp_path, *extra) -> dict:
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", model, "--target", target, "--out", str(out),
                    "--quiet", *extra], check=True)
    bundle = out / f"{model}-{target}"
    return json.loads((bundle / "manifest.json").read_text()) | {"_bundle": str(bundle)}


@pytest.mark.skipif(not (data_dir() / "imagenette2-224").is_dir(), reason="needs ../shared/data/imagenette2-224")
def test_mobilenet_v3_small_host_acceptance(tmp_path):
    m = _run("mobilenet_v3_small", "host", tmp_path)
    arts = {a["name"]: a for a in m["artifacts"]}
    base = m["baseline"]
    assert base["metrics"]["top1"] >= 0.80
    q = arts["pruned-tflite-int8"]
    assert q["macs"] <= 0.5 * base["macs"]
    assert base["metrics"]["top1"] - q["metrics"]["top1"] <= 0.015
    assert base["size_bytes"] / q["size_bytes"] >= 6.0
    assert base["latency_ms"]["p50"] / arts["pruned-tflite-fp32"]["latency_ms"]["p50"] >= 1.5


@pytest.mark.skipif(not (data_dir() / "hippocampus").is_dir(), reason="needs ../shared/data/hippocampus")
def test_unet_hippocampus_host_acceptance(tmp_path):
    m = _run("unet_hippocampus", "host", tmp_path)
    arts = {a["name"]: a for a in m["artifacts"]}
    base = m["baseline"]
    assert base["metrics"]["dice"] >= 0.85
    q = arts["pruned-tflite-int8"]
    assert q["macs"] <= 0.4 * base["macs"]
    assert base["metrics"]["dice"] - q["metrics"]["dice"] <= 0.01
    assert base["size_bytes"] / q["size_bytes"] >= 3.5
    full = {r["name"]: r for r in m["full_slice_benchmarks"]["rows"]}
    assert full["dense-tflite-fp32-256"]["latency_ms"]["p50"] / full["pruned-tflite-fp32-256"]["latency_ms"]["p50"] >= 2.0
