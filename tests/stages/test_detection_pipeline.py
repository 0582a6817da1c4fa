"""A detector nobody here wrote (the tiny anchor-free YOLO-style model of detection_helpers, in its
own file beside its card) through the detection task: trained briefly with `train_card`, the same
mAP from COCO, YOLO and VOC copies of its data, pruning that keeps its heads whole, and one
`edgeshrink run` to a bundle whose every file (TFLite and ONNX, FP32 and INT8) carries its mAP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.stages.detection_helpers import CLASSES, DECODING, TINY_YOLO, write_all_formats

CARD = {"name": "tiny_yolo", "architecture": "tiny_yolo.py:build", "arguments": {"num_classes": 2, "width": 16},
        "task": "detection", "dataset": {"root": "coco", "format": "coco"},
        "input": {"size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "metric": "map50",
        "labels": CLASSES, "detection": DECODING,
        "pruning": {"scope": "global", "target_macs": 0.6, "finetune_epochs": 1, "finetune_lr": 0.002, "distill": 0.5}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A card folder with the model's code, its data in three formats and a briefly trained checkpoint."""
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import sha256_file
    from toolkit.pipeline.train_card import train_card
    from toolkit.train.loop import TrainConfig

    root = tmp_path_factory.mktemp("tiny-yolo")
    write_all_formats(root, train=24, val=8)
    (root / "tiny_yolo.py").write_text(TINY_YOLO)
    (root / "card.yaml").write_text(yaml.safe_dump(CARD, sort_keys=False))
    torch.set_num_threads(2)
    cfg = TrainConfig(epochs=25, batch_size=8, lr=1e-2, weight_decay=1e-4, warmup_epochs=1, seed=0)
    provenance = train_card(load_card(str(root / "card.yaml")), cfg, root / "run", progress=False)
    checkpoint = {"path": "run/last.pt", "sha256": sha256_file(root / "run" / "last.pt")}
    (root / "card.yaml").write_text(yaml.safe_dump({**CARD, "checkpoint": checkpoint}, sort_keys=False))
    return root, provenance


def _task(root, fmt):
    from toolkit.config.cards import card_from_dict
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    card = card_from_dict({**CARD, "dataset": {"root": fmt, "format": fmt}}, root)
    return load_task(card, card_input_spec(card), DataRef(), progress=False)


def test_trained_through_the_task_and_same_map_from_every_format(trained):
    from tests.stages.detection_helpers import tiny_yolo_factory
    from toolkit.models.checkpoint import load_checkpoint

    root, provenance = trained
    assert provenance["held_out_map50_final_epoch"] > 0.2  # it learned (random weights score ~0)
    model, _ = load_checkpoint(root / "run" / "last.pt", factory=tiny_yolo_factory())
    scores = {fmt: _task(root, fmt).metrics(_task(root, fmt).torch_outputs(model), None) for fmt in ("coco", "yolo", "voc")}
    assert scores["coco"]["map50"] == pytest.approx(provenance["held_out_map50_final_epoch"], abs=1e-4)
    for fmt in ("yolo", "voc"):
        assert scores[fmt] == pytest.approx(scores["coco"], abs=1e-3)


def test_pruning_keeps_every_head_whole_and_the_output_shape(trained):
    from tests.stages.detection_helpers import tiny_yolo
    from toolkit.config.pruning import PruneConfig
    from toolkit.prune.prune import prune

    model = tiny_yolo()
    example = torch.randn(2, 3, 64, 64)
    result = prune(model, example_input=example, cfg=PruneConfig(scope="uniform", target_macs=0.5, round_to=4),
                   progress=False)
    assert set(result.protected_outputs) == {"heads.0", "heads.1"}
    assert [h.out_channels for h in result.model.heads] == [6, 6]
    assert result.model(example).shape == (2, 80, 6)
    assert result.history[-1]["macs_fraction"] < 0.7


@pytest.fixture(scope="module")
def detection_bundle(trained, tmp_path_factory):
    """One `edgeshrink run` of the trained card to a bundle: (bundle, its manifest, env, work folder)."""
    from tests.conftest import TINY_TARGET

    root, _ = trained
    work = tmp_path_factory.mktemp("detection-run")
    targets = work / "targets"
    targets.mkdir()
    (targets / "tiny.yaml").write_text(yaml.safe_dump(TINY_TARGET))
    env = {**os.environ, "EDGESHRINK_TARGETS_DIR": str(targets)}
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", str(root / "card.yaml"), "--target", "tiny",
                           "--quiet", "--calibration-size", "16", "--out", str(work / "dist")],
                          capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bundle = work / "dist" / "tiny_yolo-tiny"
    return bundle, json.loads((bundle / "manifest.json").read_text()), env, work


def _eval_pack(root, env, work):
    pack = work / "heldout.npz"
    if not pack.is_file():
        proc = subprocess.run([sys.executable, "-m", "toolkit", "eval-pack", "--model", str(root / "card.yaml"),
                               "--out", str(pack)], capture_output=True, text=True, env=env, cwd=work, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return pack


def test_edgeshrink_run_verifies_every_file_by_map(trained, detection_bundle, tmp_path):
    root, _ = trained
    bundle, manifest, env, work = detection_bundle
    assert manifest["task"] == "detection" and manifest["primary_metric"] == "map50"
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert {"dense-tflite-fp32", "dense-onnx-fp32", "pruned-tflite-int8", "pruned-onnx-int8"} <= set(arts)
    for a in arts.values():
        assert {"map50", "map", "map75"} <= set(a["metrics"]), a["name"]
        if a["format"] != "torch" and a["precision"] == "fp32":
            assert a["parity"]["ok"] and a["parity"]["items"][0]["shape"] == [8, 80, 6]  # raw head outputs
    dense = arts["dense-torch-fp32"]["metrics"]["map50"]
    assert dense > 0.2 and arts["dense-tflite-fp32"]["metrics"]["map50"] == pytest.approx(dense, abs=1e-3)
    assert arts["pruned-tflite-int8"]["metrics"]["map50"] > 0.05
    assert set(manifest["pruning"]["protected_outputs"]) == {"heads.0", "heads.1"}
    decoding = (manifest.get("task_extras") or manifest)["detection"]  # what the device script decodes with
    assert decoding["strides"] == [8, 16] and decoding["labels"] == CLASSES and decoding["box_encoding"] == "ltrb"
    assert (bundle / "detections.png").is_file()
    assert {"edgeshrink_detect.py", "edgeshrink_run_detect.py"} <= {f["file"] for f in manifest["device_files"]}
    e2e = manifest["deploy"]["end_to_end"]  # the deployed file through the device script, decode to boxes
    assert e2e["artifact"] == manifest["deploy"]["artifact"] and e2e["images"] == 8 and e2e["measured_on"] == "host"
    assert e2e["fps"] == pytest.approx(1000.0 / e2e["p50_ms"]) and "NMS" in e2e["includes"]
    assert "End to end on this host" in (bundle / "report.md").read_text()
    _every_tflite_file_has_a_signature(bundle, tmp_path)
    _device_script_reproduces_the_manifest(root, bundle, manifest, tmp_path, env=env, pack=_eval_pack(root, env, work))


def test_device_script_on_emulated_aarch64_reproduces_the_map(trained, detection_bundle, aarch64_env, tmp_path):
    """The bundle's detection script under qemu-aarch64 (Debian arm64 Python, the device pins): the eval
    pack's mAP equals the manifest's for the deployed file, with XNNPACK applied."""
    import shutil

    root, _ = trained
    bundle, manifest, env, work = detection_bundle
    qemu, qemu_env = aarch64_env
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    out = tmp_path / "r.json"
    proc = subprocess.run([*qemu, str(copy / "edgeshrink_run.py"), "--eval-pack", str(_eval_pack(root, env, work)),
                           "--json", str(out), "--threads", "1"], capture_output=True, text=True, env=qemu_env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    deployed = next(a for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"])
    assert r["device"]["arch"] == "aarch64" and r["device"]["emulated_by"].startswith("qemu-aarch64")
    assert r["runtime"]["xnnpack_applied"] is True
    assert r["accuracy"]["map50"] == pytest.approx(deployed["metrics"]["map50"], abs=1e-6)
    assert r["accuracy"]["map"] == pytest.approx(deployed["metrics"]["map"], abs=1e-6)


def _every_tflite_file_has_a_signature(bundle, tmp_path):
    """Signature runners (the INT8 fallback's quantizer) need one; a file without is given one."""
    import shutil

    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.convert.tflite_signature import ensure_signature

    for path in bundle.glob("*.tflite"):
        assert list(Interpreter(model_path=str(path)).get_signature_list()) == ["serving_default"], path.name
    stripped = tmp_path / "stripped.tflite"
    shutil.copyfile(next(bundle.glob("*_fp32.tflite")), stripped)
    model = flatbuffer_utils.read_model(str(stripped))
    model.signatureDefs = []
    flatbuffer_utils.write_model(model, str(stripped))
    assert Interpreter(model_path=str(stripped)).get_signature_list() == {}
    assert ensure_signature(stripped, input_names=["input"], output_names=["output"])
    runner = Interpreter(model_path=str(stripped)).get_signature_runner("serving_default")
    assert runner(input=np.zeros((1, 64, 64, 3), np.float32))["output"].shape == (1, 80, 6)


def _device_script_reproduces_the_manifest(root, bundle, manifest, tmp_path, *, env, pack):
    """The bundle's own device script: the eval pack's mAP (numpy, no pycocotools) equals the host's
    pycocotools figure for the deployed file; an image gives JSON boxes in its pixels and a drawn copy."""
    script = [sys.executable, str(bundle / "edgeshrink_run.py")]
    proc = subprocess.run([*script, "--eval-pack", str(pack), "--json", str(tmp_path / "device.json"), "--threads", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    device = json.loads((tmp_path / "device.json").read_text())
    deployed = next(a for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"])
    assert device["accuracy"]["map50"] == pytest.approx(deployed["metrics"]["map50"], abs=1e-6)
    assert device["accuracy"]["map"] == pytest.approx(deployed["metrics"]["map"], abs=1e-6)
    image = next((root / "coco" / "images").glob("val_*.png"))
    proc = subprocess.run([*script, "--input", str(image), "--out", str(tmp_path / "boxes"), "--threads", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("{")))
    from PIL import Image

    width, height = Image.open(image).size
    assert line["image_size"] == [width, height]
    assert all(0 <= b["box"][0] <= b["box"][2] <= width and b["label"] in CLASSES for b in line["boxes"])
    assert (tmp_path / "boxes" / f"{image.stem}_boxes.png").is_file()
    _device_script_takes_a_folder_and_a_video(root, script, tmp_path)


def _device_script_takes_a_folder_and_a_video(root, script, tmp_path):
    """A folder of images and a video file (OpenCV) in one call: one JSON line per image and per frame,
    each frame drawn with its boxes, boxes inside the frame."""
    import shutil

    import cv2
    from PIL import Image

    images = sorted((root / "coco" / "images").glob("val_*.png"))[:3]
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in images[:2]:
        shutil.copy(path, folder / path.name)
    video, size = tmp_path / "clip.mp4", (96, 80)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for path in images:
        writer.write(np.asarray(Image.open(path).convert("RGB").resize(size))[:, :, ::-1].copy())
    writer.release()
    proc = subprocess.run([*script, "--input", str(folder), str(video), "--out", str(tmp_path / "drawn"), "--threads", "1",
                           "--json", str(tmp_path / "many.json")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    frames = [l for l in lines if l["input"].startswith("clip.mp4:frame")]
    assert len(lines) == 2 + 3 and len(frames) == 3
    assert all(f["image_size"] == list(size) and all(0 <= b["box"][0] <= b["box"][2] <= size[0] for b in f["boxes"])
               for f in frames)
    assert len(list((tmp_path / "drawn").glob("clip_frame*_boxes.png"))) == 3
    assert len(json.loads((tmp_path / "many.json").read_text())["detections"]) == 5


def test_card_problems_are_one_line_errors(trained, tmp_path):
    from toolkit.config.cards import card_from_dict
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task, preflight_task

    root, _ = trained
    for change, words in (({"detection": {}}, "has no detection block"),
                          ({"detection": {**DECODING, "num_classes": 3}}, "num_classes is 3 but there are 2 labels"),
                          ({"detection": {**DECODING, "decoder": "yolo"}}, "detection.decoder must be one of")):
        card = card_from_dict({**CARD, **change}, root)
        with pytest.raises(EdgeShrinkError, match=words) as err:
            preflight_task(card, DataRef())
        assert "\n" not in str(err.value)
    card = card_from_dict({**CARD, "detection": {**DECODING, "strides": [8]}}, root)
    task = load_task(card, card_input_spec(card), DataRef(), progress=False)
    from tests.stages.detection_helpers import tiny_yolo

    with pytest.raises(EdgeShrinkError, match=r"expects \(batch, 64, 6\)"):
        task.torch_outputs(tiny_yolo())
    with pytest.raises(EdgeShrinkError, match="taylor importance"):
        task.grad_batches()


def test_synthetic_detection_data_learns_in_a_few_epochs():
    from tests.stages.detection_helpers import tiny_yolo
    from toolkit.config.cards import card_from_dict
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task
    from toolkit.train.loop import TrainConfig, fit

    card = card_from_dict({**CARD, "dataset": "synthetic"}, ".")
    task = load_task(card, card_input_spec(card), DataRef(synthetic=True), progress=False)
    assert task.synthetic and task.data_description()["synthetic"]
    model = tiny_yolo()
    batches, steps = task.batches(16, 0)
    history = fit(model, TrainConfig(epochs=12, batch_size=16, lr=1e-2, weight_decay=1e-4, warmup_epochs=1), batches, steps,
                  task.train_loss(None), lambda m: task.metrics(task.torch_outputs(m), None), "map50", progress=False)
    assert history["epochs"][-1]["map50"] > 0.2
    x = task.calibration_nhwc(5)
    assert x.shape == (5, 64, 64, 3) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert np.isfinite(history["epochs"][-1]["loss"])
