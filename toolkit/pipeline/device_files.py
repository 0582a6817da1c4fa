"""Make a pipeline output self-contained for its target: device scripts, requirements, README,
and (returned) the manifest's deploy section + device file hashes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from toolkit.core.paths import DEPLOY_DIR

DEPLOY = DEPLOY_DIR  # <repo>/deploy, or the installed package data

REQUIREMENTS = {
    "tflite": "# On the device (Raspberry Pi OS 64-bit, Debian, ...). Verified: these pins on x86-64 and on\n"
              "# aarch64 (Debian bookworm, Python 3.11, emulated) by tests/stages/test_aarch64.py.\n"
              "numpy==1.26.4\nai-edge-litert==2.1.0\n# or instead of ai-edge-litert: tflite-runtime==2.14.0 with numpy<2\n"
              "# optional, to read image files / video / cameras: pillow, opencv-python-headless, picamera2;\n"
              "# NIfTI volumes (segmentation bundles): nibabel\n",
    "tensorrt": "# On the Jetson (JetPack ships TensorRT and trtexec under /usr/src/tensorrt/bin):\n"
                "numpy\n# fallback when TensorRT is absent: onnxruntime-gpu (Jetson Zoo wheel) or onnxruntime\n",
    "onnxruntime": "numpy\nonnxruntime\n",
}


# The TFLite runner: the script and the modules it loads from beside itself (each hash-checked before it runs).
RPI_RUNNER = ("edgeshrink_run.py", "edgeshrink_run_model.py", "edgeshrink_run_images.py", "edgeshrink_run_inputs.py",
              "edgeshrink_run_eval.py", "edgeshrink_run_segment.py", "edgeshrink_run_detect.py", "edgeshrink_run_bench.py")


def device_scripts(engine: str, transport: str) -> list[Path]:
    """The device files copied into a bundle for this engine and transport (each gets its sha256
    in the manifest's device_files)."""
    files = [DEPLOY / "common" / "edgeshrink_common.py", DEPLOY / "common" / "edgeshrink_detect.py"]
    if engine == "tflite":
        files += [DEPLOY / "rpi" / name for name in RPI_RUNNER]
    if engine in ("tensorrt", "onnxruntime"):
        files.append(DEPLOY / "jetson" / "edgeshrink_trt.py")
    if transport == "adb":
        files.append(DEPLOY / "android" / "android_bench.py")
    return files


def device_readme(manifest: dict, target, artifact: dict) -> str:
    name = Path(manifest.get("bundle_name", f"{manifest['model']}-{target.name}")).name
    lines = [f"# {manifest['model']} for {target.name}", "", target.description, "",
             f"Model file: `{artifact['file']}` ({artifact['format']} {artifact['precision']}, "
             f"{artifact['size_bytes'] / 1024:.0f} KB). Input: {manifest['input']['height']}x{manifest['input']['width']}"
             f"x{manifest['input']['channels']}, scaling `{manifest['input']['scaling']}`, mean {manifest['input']['mean']}, "
             f"std {manifest['input']['std']}. Every file's sha256 is in manifest.json.", "",
             "## On the device", "", "```bash", f"cd {name}", "python3 -m venv .venv && . .venv/bin/activate",
             "pip install -r requirements-device.txt", "python3 edgeshrink_common.py .          # check every file's sha256"]
    segmentation = manifest.get("task", "classification") == "segmentation"
    if target.runtime.engine == "tflite" and target.deploy.transport != "adb" and segmentation:
        lines += ["python3 edgeshrink_run.py --bench --json results/device.json",
                  "python3 edgeshrink_run.py --input slice.png --out masks/     # label mask PNG + colour overlay PNG",
                  "pip install nibabel                                          # for NIfTI volumes",
                  "python3 edgeshrink_run.py --input case.nii.gz --out masks/   # NIfTI mask, same affine and header",
                  "python3 edgeshrink_run.py --eval-pack heldout.npz --json results/dice.json   # per-case Dice"]
    elif target.runtime.engine == "tflite" and target.deploy.transport != "adb":
        lines += ["python3 edgeshrink_run.py --bench --json results/device.json",
                  "python3 edgeshrink_run.py --input some/images/ --top-k 3",
                  "python3 edgeshrink_run.py --camera 0            # Pi camera (picamera2) or webcam (OpenCV)"]
    elif target.runtime.engine == "tensorrt":
        lines += ["python3 edgeshrink_trt.py --json results/device.json   # builds/caches the TensorRT engine, benchmarks it",
                  "python3 edgeshrink_trt.py --runtime onnxruntime --json results/ort.json  # the fallback path"]
    lines += ["```", ""]
    if segmentation and target.runtime.engine == "tflite" and target.deploy.transport != "adb":
        axis = (manifest.get("data") or {}).get("slice_axis", 0)
        lines += [f"Segmentation: labels {', '.join(f'{i} {n}' for i, n in enumerate(manifest.get('labels') or []))}. "
                  f"Each image or volume is normalised on its own (`{manifest['input']['scaling']}`), volumes are "
                  f"sliced along axis {axis}, and each slice is centre-padded to "
                  f"{manifest['input']['height']}x{manifest['input']['width']} (larger slices are shrunk to fit). "
                  "`--input` takes PNG/JPEG/TIFF images (grey or colour), folders, `.npy` slices or volumes, "
                  "`.nii`/`.nii.gz` volumes, videos and `--camera N`. The eval pack comes from the host: "
                  f"`edgeshrink eval-pack --model {manifest['model']} --out heldout.npz`; its Dice per case equals "
                  "the manifest's.", ""]
    if target.deploy.transport == "adb":
        lines += ["## From the host, with the phone on adb", "", "```bash",
                  "python3 android_bench.py --bundle . --benchmark-binary /path/to/android_aarch64_benchmark_model "
                  "--json results/android.json", "```", "",
                  f"Runs the LiteRT benchmark tool with {target.runtime.threads} threads on "
                  f"{', '.join([target.runtime.delegate] + list(target.runtime.delegate_variants))}.", ""]
    if target.deploy.transport == "ssh":
        lines += ["## From the host, over SSH", "", "```bash",
                  f"make deploy TARGET={target.name} MODEL={manifest['model']} HOST=user@device[:port]", "```", "",
                  "copies this folder, checks the hashes on the device, runs the benchmark there and pulls "
                  "results/<host>.json back.", ""]
    return "\n".join(lines)


def add_device_files(work: Path, target, manifest: dict) -> tuple[dict, list]:
    """Copy the device scripts and write requirements/README into `work`; returns the manifest's
    deploy section and its device files (each with its sha256). `manifest` is only read."""
    from toolkit.models.checkpoint import sha256_file

    artifact = next(a for a in manifest["artifacts"] if a["name"] == target.deploy.artifact)
    deploy = {"artifact": target.deploy.artifact, "engine": target.runtime.engine,
              "delegate": target.runtime.delegate, "delegate_variants": list(target.runtime.delegate_variants),
              "threads": target.runtime.threads, "fp16": target.runtime.fp16,
              "transport": target.deploy.transport, "remote_dir": target.deploy.remote_dir,
              "select": target.deploy.select, "python": target.runtime.python,
              "benchmark": {"warmup": target.benchmark.warmup, "min_runs": target.benchmark.min_runs,
                            "min_seconds": target.benchmark.min_seconds},
              "budget": target.budget.model_dump(), "device": target.device.model_dump()}
    written = []
    for src in device_scripts(target.runtime.engine, target.deploy.transport):
        shutil.copyfile(src, work / src.name)
        written.append(work / src.name)
    (work / "requirements-device.txt").write_text(REQUIREMENTS[target.runtime.engine])
    (work / "README.md").write_text(device_readme(manifest, target, artifact))
    written += [work / "requirements-device.txt", work / "README.md"]
    return deploy, [{"file": p.name, "sha256": sha256_file(p)} for p in written]


def write_eval_pack(task, path: Path) -> Path:
    """Held-out data exactly as the host evaluated it (uint8 images after resize, or z-scored
    slices with their case ids, slice counts and volume shapes) with labels, so a device without
    image libraries reproduces the host's metric."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if task.primary_metric == "top1":
        np.savez_compressed(path, images=task.val.images, labels=task.val.labels)
    elif task.primary_metric == "map50":
        _write_detection_pack(task, path)
    else:
        from toolkit.data.nifti import slices_of

        held = task.volumes.held_out
        pairs = [slices_of(v, (task.spec.height, task.spec.width)) for v in held]
        # case ids, slice counts, volume shapes and voxel spacings: the device crops each case back and
        # scores 3-D Dice and HD95 per case, exactly as SegmentationTask.metrics does
        np.savez_compressed(path, images=np.concatenate([p[0] for p in pairs]),
                            labels=np.concatenate([p[1] for p in pairs]).astype(np.uint8),
                            cases=np.array([v.name for v in held], dtype=str),
                            case_keys=np.array([v.case for v in held], dtype=str),  # 2-D images of one patient pool
                            case_slices=np.array([v.shape[0] for v in held], np.int64),
                            case_shapes=np.array([v.shape for v in held], np.int64).reshape(-1, 3),
                            case_spacing=np.array([v.spacing for v in held], np.float64).reshape(-1, 3))
    return path


def _write_detection_pack(task, path: Path) -> None:
    """Detection: the held-out images as the model sees them, each image's original size, and every
    box (image index, label, ignore flag, [x1, y1, x2, y2] in original pixels)."""
    samples = task.val.samples
    index = np.concatenate([np.full(len(s.boxes), i, np.int64) for i, s in enumerate(samples)] or [np.zeros(0, np.int64)])
    np.savez_compressed(path, images=task.eval_images, image_sizes=np.array([(s.height, s.width) for s in samples], np.int64),
                        box_image=index, boxes=np.concatenate([s.boxes.reshape(-1, 4) for s in samples]).astype(np.float32),
                        box_labels=np.concatenate([s.labels for s in samples]).astype(np.int64),
                        box_ignore=np.concatenate([s.ignore for s in samples]).astype(bool),
                        classes=np.array(task.labels, dtype=str))
