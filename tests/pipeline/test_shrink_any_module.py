"""`toolkit.shrink()` works to the end for any in-memory module: the benchmark workers never need a
name only the parent process knows; a timm model's bundle rebuilds from `timm:create_model`."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.stages.test_outside_model import elsewhere  # noqa: F401 (fixture: an ImageFolder of 10 classes)


@pytest.fixture
def imgs(elsewhere, tmp_path):  # noqa: F811
    data = tmp_path / "imgs"
    shutil.copytree(elsewhere / "data" / "train", data / "train")
    shutil.copytree(elsewhere / "data" / "test", data / "val")
    return data


def test_plain_module_is_benchmarked_through_an_exported_program(imgs, workspace, tmp_path, monkeypatch):
    import torch

    import toolkit

    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    bundle = toolkit.shrink(model, target="tiny", data=str(imgs), input_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                            out=str(tmp_path / "dist"), finetune_epochs=0, progress=False, calibration_size=16)
    torch_rows = [a for a in bundle.manifest["artifacts"] if a["format"] == "torch"]
    assert torch_rows and all(a["latency_ms"]["p50"] > 0 for a in torch_rows)
    assert not (bundle.path / ".bench-exports").exists()


def test_timm_model_bundle_is_benchmarked_and_replayable(imgs, workspace, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    import torch

    import toolkit

    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=10, pretrained=False).eval()
    bundle = toolkit.shrink(model, target="tiny", data=str(imgs), input_size=(64, 64), mean=(0.5,) * 3, std=(0.25,) * 3,
                            out=str(tmp_path / "dist"), finetune_epochs=0, progress=False, calibration_size=16)
    assert bundle.manifest["architecture"] == "timm:create_model"
    assert all((a.get("latency_ms") or {}).get("p50") for a in bundle.manifest["artifacts"])
    config = json.loads((bundle.path / "config.json").read_text())
    from toolkit.pipeline.plan import plan_from_json

    replayed = plan_from_json(config, "config.json")
    assert replayed.source.architecture == "timm:create_model"
    assert replayed.source.arguments["model_name"] == "mobilenetv3_small_050"
