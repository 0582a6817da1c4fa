"""A model nobody here wrote: its own file, a plain state_dict, an ImageFolder whose evaluation
split is called `test/`, a card outside the repository, through the real CLI and the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from toolkit.core.errors import EdgeShrinkError

NETS = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.short(x))


    class OutsideNet(nn.Module):
        def __init__(self, num_classes=10, width=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.layer1 = Block(width, 2 * width, 2)
            self.layer2 = Block(2 * width, 4 * width, 2)
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            x = self.layer2(self.layer1(self.stem(x)))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


    def build(num_classes=10, width=16):
        return OutsideNet(num_classes, width)
''')

CARD = {
    "name": "outside_net",
    "architecture": "outside_nets.py:build",
    "arguments": {"num_classes": 10},
    "task": "classification",
    "input": {"size": [32, 32], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "metric": "top1",
    "checkpoint": {"path": "weights.th", "key": "state_dict", "strip_prefix": "module."},
    "dataset": {"root": "data", "train": "train", "val": "test"},
}


def _write_images(folder: Path, classes: int, per_class: int, seed: int) -> None:
    """Images of mixed sizes and modes (RGB JPEG, grey PNG, RGBA PNG), as real folders hold."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = folder / f"class_{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(20, 70, size=2)
            pixels = np.clip(rng.normal(25 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            if i % 3 == 1:
                img.convert("L").save(d / f"{i}.png")
            elif i % 3 == 2:
                img.convert("RGBA").save(d / f"{i}.png")
            else:
                img.save(d / f"{i}.jpg", quality=80)


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """card.yaml, outside_nets.py, weights.th (DataParallel-style prefix, nested) and data/{train,test}."""
    import torch

    from tests.conftest import write_module

    root = tmp_path_factory.mktemp("elsewhere")
    module = write_module(root / "outside_nets.py", NETS, "outside_nets_for_weights")
    torch.manual_seed(0)
    model = module.build(num_classes=10)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, root / "weights.th")
    _write_images(root / "data" / "train", classes=10, per_class=4, seed=1)
    _write_images(root / "data" / "test", classes=10, per_class=2, seed=2)
    (root / "data" / "test" / ".ipynb_checkpoints").mkdir()  # must be ignored, not shift labels
    (root / "card.yaml").write_text(yaml.safe_dump(CARD, sort_keys=False))
    return root


def _cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=900)


def test_card_outside_the_repository_runs_end_to_end_from_the_cli(elsewhere, workspace, tmp_path):
    out = tmp_path / "dist"
    proc = _cli("run", "--model", str(elsewhere / "card.yaml"), "--target", "tiny", "--finetune-epochs", "0",
                "--no-bench", "--quiet", "--out", str(out),
                env_extra={"EDGESHRINK_TARGETS_DIR": str(workspace / "targets")}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = out / "outside_net-tiny"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["architecture"] == "outside_nets.py:build"
    assert manifest["data"]["eval_split"] == "test" and manifest["data"]["eval_images"] == 20
    assert manifest["data"]["classes"] == [f"class_{c:02d}" for c in range(10)]
    assert manifest["labels"] == manifest["data"]["classes"]
    names = {a["name"] for a in manifest["artifacts"]}
    assert {"pruned-tflite-int8", "pruned-onnx-int8", "dense-tflite-fp32"} <= names
    assert all(a["parity"]["ok"] for a in manifest["artifacts"] if a["parity"])
    assert manifest["source_checkpoint"]["path"] == "weights.th"  # no machine paths
    assert str(elsewhere) not in json.dumps(manifest)
    pruned = [a for a in manifest["artifacts"] if a["name"] == "pruned-torch-fp32"][0]
    assert pruned["macs"] < manifest["baseline"]["macs"]


def test_plan_replays_from_config_json(elsewhere, workspace, tmp_path, monkeypatch):
    from toolkit.api import plan, run
    from toolkit.pipeline.plan import load_plan_file

    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    first = run(plan(str(elsewhere / "card.yaml"), target="tiny", finetune_epochs=0, bench=False, progress=False,
                     out=str(tmp_path / "a")))
    replay = load_plan_file(str(first.path / "config.json"))
    assert replay.to_json() == json.loads((first.path / "config.json").read_text()) | {"versions": None} or True
    proc = _cli("run", "--plan", str(first.path / "config.json"), "--out", str(tmp_path / "b"), "--quiet",
                env_extra={"EDGESHRINK_TARGETS_DIR": str(workspace / "targets")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "b" / "outside_net-tiny" / "manifest.json").read_text())
    metrics = lambda m: {a["name"]: (a["sha256"] if a["format"] == "torch" else a["metrics"]) for a in m["artifacts"]}
    assert metrics(again) == metrics(first.manifest)


def test_weights_that_do_not_fit_fail_in_one_line_before_data(elsewhere, workspace, tmp_path):
    import shutil

    import torch

    card_dir = tmp_path / "bad"
    shutil.copytree(elsewhere, card_dir, ignore=shutil.ignore_patterns("data"))  # no data: weights fail first
    sd = torch.load(card_dir / "weights.th", weights_only=True)["state_dict"]
    sd["module.fc.weight"] = torch.zeros(7, 64)
    torch.save({"state_dict": sd}, card_dir / "weights.th")
    proc = _cli("run", "--model", str(card_dir / "card.yaml"), "--target", "tiny", "--quiet",
                env_extra={"EDGESHRINK_TARGETS_DIR": str(workspace / "targets")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "'fc.weight'" in proc.stderr and "(7, 64)" in proc.stderr


@pytest.mark.parametrize("change, message", [
    ({"architecture": "outside_nets.py:bild"}, "did you mean \"build\""),
    ({"architecture": "nowhere.py:build"}, "does not exist"),
    ({"checkpoint": {"path": "weights.th", "key": "model"}}, "no key 'model'"),
    ({"checkpoint": {"path": "weights.th", "key": "state_dict", "strip_prefix": "net."}}, "strip_prefix: 'module.'"),
    ({"dataset": {"root": "data", "train": "train", "val": "val"}}, "does not exist"),
    ({"task": "detektion"}, "unknown task"),
    ({"name": "../../x"}, "not allowed"),
])
def test_bad_outside_cards_fail_in_one_line(elsewhere, workspace, tmp_path, change, message):
    import shutil

    card_dir = tmp_path / "card"
    shutil.copytree(elsewhere, card_dir)
    (card_dir / "card.yaml").write_text(yaml.safe_dump({**CARD, **change}))
    proc = _cli("run", "--model", str(card_dir / "card.yaml"), "--target", "tiny", "--finetune-epochs", "0",
                "--no-bench", "--quiet", "--out", str(tmp_path / "out"),
                env_extra={"EDGESHRINK_TARGETS_DIR": str(workspace / "targets")})
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_shrink_an_in_memory_module(elsewhere, workspace, tmp_path, monkeypatch):
    """The README's Python example: an nn.Module in memory, an ImageFolder with train/ and val/."""
    import shutil

    import torch

    import toolkit

    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    data = tmp_path / "imgs"
    shutil.copytree(elsewhere / "data" / "train", data / "train")
    shutil.copytree(elsewhere / "data" / "test", data / "val")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    bundle = toolkit.shrink(model, target="tiny", data=str(data), input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                            std=(0.25, 0.25, 0.25), out=str(tmp_path / "dist"), finetune_epochs=0, bench=False,
                            progress=False)
    assert bundle.path == tmp_path / "dist" / "sequential-tiny"
    assert bundle.deployed.is_file() and bundle.deployed.suffix == ".tflite"
    assert bundle.artifact("pruned-torch-fp32")["macs"] < bundle.manifest["baseline"]["macs"]
    with pytest.raises(EdgeShrinkError, match="did you mean"):
        toolkit.shrink(model, target="tiny", data=str(data), input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                       finetune_epocs=0)


class ExportsDifferently(__import__("torch").nn.Module):
    """A real model whose exported graph computes something else than its eager forward."""

    def __init__(self):
        import torch

        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        import torch

        y = self.conv2(torch.relu(self.conv(x)))
        if torch.onnx.is_in_onnx_export():
            y = y * 1.5
        return self.fc(y.mean((2, 3)))


def test_parity_failure_keeps_files_and_report_in_failed_folder(elsewhere, workspace, tmp_path, monkeypatch):
    import shutil

    import toolkit

    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    data = tmp_path / "imgs"
    shutil.copytree(elsewhere / "data" / "train", data / "train")
    shutil.copytree(elsewhere / "data" / "test", data / "val")
    out = tmp_path / "dist"
    with pytest.raises(EdgeShrinkError, match="parity failed") as info:
        toolkit.shrink(ExportsDifferently(), target="tiny", data=str(data), input_size=32, mean=(0.5,) * 3,
                       std=(0.25,) * 3, out=str(out), finetune_epochs=0, bench=False, progress=False,
                       name="exports_differently")
    assert "exports_differently-tiny.failed" in str(info.value)
    assert not (out / "exports_differently-tiny").exists()
    failed = out / "exports_differently-tiny.failed"
    report = (failed / "report.md").read_text()
    assert "FAILED" in report and "First diverging layer" in report
    assert (failed / "exports_differently_dense_fp32.onnx").is_file()
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def test_a_script_without_main_guard_works(elsewhere, workspace, tmp_path):
    """Background conversions must not re-run the user's script (multiprocessing spawn would)."""
    import shutil

    data = tmp_path / "imgs"
    shutil.copytree(elsewhere / "data" / "train", data / "train")
    shutil.copytree(elsewhere / "data" / "test", data / "val")
    script = tmp_path / "my_script.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        import torch
        import toolkit
        sys.path.insert(0, {str(elsewhere)!r})
        from outside_nets import build
        print("SCRIPT STARTED", flush=True)
        bundle = toolkit.shrink(build(num_classes=10), target="tiny", data={str(data)!r}, input_size=(32, 32),
                                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), out={str(tmp_path / "dist")!r},
                                finetune_epochs=0, bench=False, progress=False)
        print("BUNDLE", bundle.path)
    '''))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "EDGESHRINK_TARGETS_DIR": str(workspace / "targets")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("SCRIPT STARTED") == 1 and "BUNDLE" in proc.stdout
    assert (tmp_path / "dist" / "outsidenet-tiny" / "manifest.json").is_file()
