"""A MONAI 2-D UNet (the library medical-imaging users bring: InstanceNorm, PReLU, padded transposed
convolutions, skip concatenations onnx2tf mis-lays) through a card to a verified rpi4 bundle: every
float file passes parity (litert-torch takes over when onnx2tf's file fails it), a file is deployed,
and pruning is done or skipped with a true reason. Random weights, synthetic volumes, tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from toolkit.core.paths import REPO_ROOT

ARGUMENTS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2],
             "num_res_units": 1}
CARD = {"name": "monai_unet_tiny", "architecture": "monai.networks.nets:UNet", "arguments": ARGUMENTS,
        "task": "segmentation", "dataset": "hippocampus", "metric": "dice",
        "input": {"size": [64, 64], "channels": 1, "mean": [0.0], "std": [1.0], "scaling": "zscore_volume"},
        "labels": ["background", "anterior hippocampus", "posterior hippocampus"],
        "checkpoint": {"path": "unet.pt"}}


def _bundle(tmp_path, card: dict):
    """`edgeshrink run` of `card` for rpi4 (synthetic volumes, no fine-tuning, no bench): (bundle, manifest)."""
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", str(tmp_path / "card.yaml"), "--target",
                           "rpi4", "--synthetic-data", "--finetune-epochs", "0", "--no-bench", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=dict(os.environ), cwd=REPO_ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = tmp_path / "out" / f"{card['name']}-rpi4"
    return bundle, json.loads((bundle / "manifest.json").read_text())


def test_monai_unet_card_bundles_for_rpi4(tmp_path):
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**ARGUMENTS).state_dict(), tmp_path / "unet.pt")
    bundle, manifest = _bundle(tmp_path, CARD)
    floats = [a for a in manifest["artifacts"] if a["precision"] == "fp32" and a["format"] != "torch"]
    assert floats and all(a["parity"]["ok"] for a in floats), [(a["name"], a["parity"]) for a in floats]
    made = {a["name"]: a for a in manifest["artifacts"]}
    assert all("dice" in made[n]["metrics"] for n in ("dense-tflite-fp32", "pruned-tflite-int8"))
    assert (bundle / made[manifest["deploy"]["artifact"]]["file"]).is_file()
    skipped = manifest["pruning"].get("skipped")
    assert skipped is None or "attention" not in skipped["reason"]  # a true reason: no attention here
    # InstanceNorm and PReLU in delegate forms, DIV/SQRT float islands: XNNPACK takes the INT8 file whole
    # (it was 40 partitions with litert-torch's own InstanceNorm: RSQRT, ADD of eps, PRELU)
    assert made["pruned-tflite-int8"]["delegate"]["partitions"] <= 3, made["pruned-tflite-int8"]["delegate"]


def test_monai_attention_unet_is_pruned_its_gates_are_convolutions(tmp_path):
    """MONAI's AttentionUnet: its attention *gates* are convolutions and a sigmoid, no token
    reshapes; pruning must not refuse it as attention (it did), and it is pruned, as far as it
    goes when the MAC target is out of reach (it was left dense)."""
    import torch
    from monai.networks.nets import AttentionUnet

    arguments = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2]}
    torch.manual_seed(0)
    torch.save(AttentionUnet(**arguments).state_dict(), tmp_path / "unet.pt")
    card = {**CARD, "name": "monai_attention_unet_tiny", "architecture": "monai.networks.nets:AttentionUnet",
            "arguments": arguments}
    _, manifest = _bundle(tmp_path, card)
    assert not manifest["pruning"].get("skipped"), manifest["pruning"].get("skipped")
    made = {a["name"]: a for a in manifest["artifacts"]}
    assert made["pruned-torch-fp32"]["macs"] < 0.8 * made["dense-torch-fp32"]["macs"]
    # with 8/16/32 channels the profile's 45 % of MACs is out of reach: pruned as far as it goes, and said
    target = manifest["pruning"]["history"][-1]["target"]
    assert not target["met"] and "pruned as far as the model allows" in target["why"], target
    assert all(a["parity"]["ok"] for a in manifest["artifacts"] if a["precision"] == "fp32" and a["format"] != "torch")
