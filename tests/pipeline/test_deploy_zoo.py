"""`make zoo SOURCE=timm` on two of the hard cases, through the real chain (random weights, 64 px):
MobileOne (a training-time form to reparameterise before pruning) and MobileNetV3 (hard-swish, which
XNNPACK takes in INT8 only after the delegate rewrite), with both converters; the JSON rows and the
resumable re-run."""

from __future__ import annotations

import json
import subprocess
import sys

MODELS = "mobileone_s0,mobilenetv3_small_050"


def _zoo(out, *extra):
    return subprocess.run([sys.executable, "-m", "toolkit.studies.zoo", "--source", "timm", "--models", MODELS,
                           "--size", "64", "--threads", "1", "--quiet", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=1200)


def test_timm_hard_cases_give_verified_delegated_bundles(tmp_path):
    proc = _zoo(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = {r["model"]: r for r in json.loads((tmp_path / "zoo_timm.json").read_text())["models"]}
    assert set(rows) == set(MODELS.split(","))
    for name, row in rows.items():
        assert row["bundle"], (name, row["stages"])
        assert all(s["status"] in ("ok", "skipped") for s in row["stages"].values()), (name, row["stages"])
        assert row["partitions"]["fp32"] == 1 and row["partitions"]["int8"] <= 2, (name, row["partitions"])
        assert row["macs_pruned"] < row["macs_fused"] <= row["macs_dense"]
        assert set(row["converters"]) == {"onnx2tf", "litert-torch"}  # both verified: the default is chosen from these
        assert row["converters"][row["converter"]]["verified"]
    mobileone = rows["mobileone_s0"]
    assert "reparameterised" in mobileone["stages"]["reparameterize"]["message"]
    assert mobileone["macs_fused"] < 0.5 * mobileone["macs_dense"]
    for name in rows:
        assert name in proc.stdout  # the table
    assert "litert-torch: made 2, FP32 parity" in proc.stdout
    assert all(set(c["partition_counts"]) == {"fp32", "int8"} for r in rows.values() for c in r["converters"].values())
    text = (tmp_path / "zoo_timm.json").read_text()
    assert str(tmp_path) not in text and "/tmp/" not in text  # rows can be committed and resumed elsewhere
    assert all(r["ran_with"]["commit"] and r["ran_with"]["timm"] for r in rows.values())

    again = _zoo(tmp_path)  # resumable: rows already there are not run again
    assert again.returncode == 0 and json.loads((tmp_path / "zoo_timm.json").read_text())["models"] == list(rows.values())
