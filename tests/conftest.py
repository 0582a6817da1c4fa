"""Shared fixtures: tiny real models, cards and targets in temporary folders.

Tests never touch the repo's dist/ or models/: EDGESHRINK_MODELS_DIR / EDGESHRINK_TARGETS_DIR
point at temporary copies, and outputs go under tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session", autouse=True)
def fresh_caches(tmp_path_factory):
    """Each test session converts and prunes for real: caches start empty in a temp folder."""
    os.environ["EDGESHRINK_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield

TINY_CARD = {
    "name": "tiny_mnv3",
    "architecture": "mobilenet_v3_small",
    "arguments": {"num_classes": 4, "width_mult": 0.5},
    "task": "classification",
    "dataset": "synthetic",
    "input": {"size": [64, 64], "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "metric": "top1",
    "labels": ["a", "b", "c", "d"],
    "never_prune": ["classifier.3"],
}

TINY_TARGET = {
    "name": "tiny",
    "description": "test target",
    "device": {"soc": "test", "arch": "x86_64", "cores": 2, "memory_gb": 1},
    "runtime": {"engine": "tflite", "delegate": "xnnpack", "threads": 1},
    "formats": ["onnx", "tflite"],
    "precisions": ["fp32", "int8"],
    "pruning": {"importance": "l2", "scope": "uniform", "target_macs": 0.6, "steps": 1, "finetune_epochs": 1,
                "round_to": 8},
    "quantization": {"calibration_size": 32},
    "benchmark": {"warmup": 2, "min_runs": 5, "min_seconds": 0.1, "repeats": 2},
    "budget": {"target_fps": 10},
    "deploy": {"transport": "local"},
}


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A models/ and targets/ folder with the tiny card (briefly trained checkpoint) and target."""
    import torch

    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint, sha256_file
    from toolkit.tasks.classification import classification_loss, train_batches
    from toolkit.data.imagefolder import synthetic_split
    from toolkit.data.preprocess import InputSpec
    from toolkit.train.loop import TrainConfig, fit

    root = tmp_path_factory.mktemp("ws")
    models, targets = root / "models", root / "targets"
    models.mkdir()
    targets.mkdir()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5)
    spec = InputSpec(64, 64)
    data = synthetic_split(4, 24, 64, 64, seed=1)
    batches, steps = train_batches(data, spec, 16, 0, augment=False)
    fit(model, TrainConfig(epochs=8, batch_size=16, lr=5e-3, label_smoothing=0.0), batches, steps, classification_loss(0.0, 0.0, 1.0),
        lambda m: {"acc": 0.0}, "acc", progress=False)
    ckpt = models / "tiny_mnv3.pt"
    save_checkpoint(ckpt, model.eval(), "mobilenet_v3_small", TINY_CARD["arguments"])
    card = dict(TINY_CARD, checkpoint={"path": str(ckpt), "sha256": sha256_file(ckpt)})
    (models / "tiny_mnv3.yaml").write_text(yaml.safe_dump(card))
    (targets / "tiny.yaml").write_text(yaml.safe_dump(TINY_TARGET))
    for profile in (REPO / "targets").glob("*.yaml"):
        shutil.copy(profile, targets / profile.name)
    return root


def build_bundle(model: str, target: str, out_root, **overrides):
    """Plan and run one bundle through the public API; returns the bundle folder."""
    from toolkit.api import plan, run

    return run(plan(model, target=target, out=str(out_root), **overrides)).path


@pytest.fixture(scope="session")
def profile_bundles(workspace, tmp_path_factory):
    """One bundle per shipped target profile, built from the tiny card (no fine-tuning, no bench)."""
    out = tmp_path_factory.mktemp("bundles")
    env = {"EDGESHRINK_MODELS_DIR": str(workspace / "models"), "EDGESHRINK_TARGETS_DIR": str(workspace / "targets")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        bundles = {}
        for profile in sorted((REPO / "targets").glob("*.yaml")):
            bundles[profile.stem] = build_bundle("tiny_mnv3", profile.stem, str(out), synthetic_data=True, finetune_epochs=0,
                calibration_size=16, bench=False, progress=False)
        return bundles
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def device_python(tmp_path_factory):
    """A clean virtual environment holding only numpy + ai-edge-litert: what a Pi needs."""
    import subprocess
    import sys

    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "numpy==1.26.4", "ai-edge-litert==2.1.0"],
                   check=True)
    return venv / "bin" / "python"


@pytest.fixture
def use_workspace(workspace, monkeypatch):
    monkeypatch.setenv("EDGESHRINK_MODELS_DIR", str(workspace / "models"))
    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    return workspace


def write_module(path, source: str, name: str):
    """Write `source` to `path` and import it as module `name` (a user's architecture file)."""
    import importlib.util

    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
