#!/usr/bin/env python3
"""Run an EdgeShrink bundle's TFLite model on a Raspberry Pi (or any Linux box).

Needs numpy and ai-edge-litert (or tflite-runtime with numpy<2). Pillow or OpenCV are used when
present to read images, video and cameras (picamera2 for the Pi camera). Preprocessing, labels
and the model file come from the bundle's manifest.json.

  python3 edgeshrink_run.py --bench --json results/device.json      # model-only latency
  python3 edgeshrink_run.py --input photo.jpg --topk 3              # classify images / a folder
  python3 edgeshrink_run.py --input clip.mp4 --save-images out/     # a video file (OpenCV)
  python3 edgeshrink_run.py --camera 0                              # Pi camera / webcam
  python3 edgeshrink_run.py --eval-pack heldout.npz --json r.json   # accuracy on held-out data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from edgeshrink_common import (dequantize_output, normalise, open_bundle, percentiles, quantize_input,  # noqa: E402
                               results_record, time_calls, write_json)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}


def make_interpreter(path, threads: int):
    """LiteRT first, then tflite-runtime; returns (interpreter, runtime description)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        name = "ai-edge-litert"
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
            name = "tflite-runtime"
        except ImportError:
            raise SystemExit("error: neither ai-edge-litert nor tflite-runtime is installed; "
                             "pip install ai-edge-litert (or tflite-runtime with numpy<2)")
    from importlib import metadata

    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = "unknown"
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    return interp, {"name": name, "version": version, "delegate": "xnnpack (default CPU)", "threads": threads}


class Model:
    def __init__(self, path, threads: int, spec: dict):
        self.interp, self.runtime = make_interpreter(path, threads)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.spec = spec

    def run_nhwc(self, x_float_nhwc: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], quantize_input(x_float_nhwc, self.inp))
        self.interp.invoke()
        return dequantize_output(self.interp.get_tensor(self.out["index"]), self.out)


def read_image(path, height: int, width: int) -> np.ndarray:
    """HxWx3 uint8 RGB, bilinear-resized like the host (Pillow, else OpenCV)."""
    try:
        from PIL import Image

        img = Image.open(path).convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    except ImportError:
        pass
    try:
        import cv2
    except ImportError:
        raise SystemExit("error: reading image files needs Pillow or OpenCV (pip install pillow); "
                         "or pass preprocessed arrays with --eval-pack / .npy")
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise SystemExit(f"error: cannot read image {path}")
    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_LINEAR)


def frames(args, height: int, width: int):
    """(name, HxWx3 uint8) from files, folders, .npy arrays, a video file or a camera."""
    for item in args.input or []:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(f), read_image(f, height, width)
        elif p.suffix.lower() == ".npy":
            arr = np.load(p)
            for i, a in enumerate(arr if arr.ndim == 4 else arr[None]):
                yield f"{p.name}[{i}]", a.astype(np.uint8)
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            yield from video_frames(str(p), height, width, args.max_frames)
        else:
            yield str(p), read_image(p, height, width)
    if args.camera is not None:
        yield from camera_frames(args.camera, height, width, args.max_frames)


def video_frames(source, height: int, width: int, limit: int):
    try:
        import cv2
    except ImportError:
        raise SystemExit("error: video input needs OpenCV (pip install opencv-python-headless)")
    cap = cv2.VideoCapture(source)
    count = 0
    while count < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        yield f"frame{count}", cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (width, height))
        count += 1
    cap.release()


def camera_frames(index: int, height: int, width: int, limit: int):
    try:
        from picamera2 import Picamera2  # the Raspberry Pi camera stack

        cam = Picamera2()
        cam.configure(cam.create_preview_configuration(main={"size": (640, 480), "format": "RGB888"}))
        cam.start()
        try:
            for i in range(limit):
                rgb = cam.capture_array()[:, :, :3]
                from PIL import Image

                yield f"camera{i}", np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        finally:
            cam.stop()
    except ImportError:
        yield from video_frames(index, height, width, limit)


def segment_volume_slices(model: Model, slices_nchw: np.ndarray) -> np.ndarray:
    return np.concatenate([model.run_nhwc(s.transpose(1, 2, 0)[None]).argmax(-1) for s in slices_nchw])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(HERE), help="bundle folder (default: this script's folder)")
    p.add_argument("--artifact", help="artifact name from the manifest (default: the profile's deploy artifact)")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the profile's)")
    p.add_argument("--input", nargs="*", help="image files, folders, .npy arrays or a video file")
    p.add_argument("--camera", type=int, help="camera index (picamera2 when present, else OpenCV)")
    p.add_argument("--max-frames", type=int, default=300)
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--save-images", help="folder for outputs with the prediction drawn (Pillow)")
    p.add_argument("--eval-pack", help="held-out .npz from `edgeshrink eval-pack` (images + labels)")
    p.add_argument("--bench", action="store_true", help="model-only latency benchmark")
    p.add_argument("--warmup", type=int)
    p.add_argument("--runs", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--json", help="write the results JSON here")
    p.add_argument("--skip-hash-check", action="store_true")
    args = p.parse_args(argv)

    bundle, manifest, artifact = open_bundle(args.bundle, args.artifact, "tflite", not args.skip_hash_check)
    spec = manifest["input"]
    bench_cfg = manifest.get("deploy", {}).get("benchmark", {})
    threads = args.threads or manifest.get("deploy", {}).get("threads", 4)
    model = Model(bundle / artifact["file"], threads, spec)
    h, w = spec["height"], spec["width"]
    extra: dict = {}

    bench = None
    if args.bench:
        x = np.random.default_rng(0).standard_normal((1, h, w, spec["channels"])).astype(np.float32)
        q = quantize_input(x, model.inp)

        def call():
            model.interp.set_tensor(model.inp["index"], q)
            model.interp.invoke()

        bench = time_calls(call, args.warmup or bench_cfg.get("warmup", 20), args.runs or bench_cfg.get("min_runs", 100),
                           args.seconds if args.seconds is not None else bench_cfg.get("min_seconds", 5.0))
        print(f"model-only: p50 {bench['latency_ms']['p50']:.2f} ms, p90 {bench['latency_ms']['p90']:.2f} ms, "
              f"p99 {bench['latency_ms']['p99']:.2f} ms, {bench['fps']:.1f} FPS over {bench['runs']} runs")

    if args.eval_pack:
        pack = np.load(args.eval_pack)
        if manifest["task"] == "classification":
            images, labels = pack["images"], pack["labels"]
            preds = np.empty(len(images), np.int64)
            for i in range(len(images)):
                preds[i] = model.run_nhwc(normalise(images[i:i + 1], spec)).argmax()
            extra["accuracy"] = {"top1": float((preds == labels).mean()), "images": int(len(labels)),
                                 "manifest_top1": artifact["metrics"].get("top1")}
            print(f"held-out top-1 {100 * extra['accuracy']['top1']:.2f}% on {len(labels)} images "
                  f"(manifest: {100 * (artifact['metrics'].get('top1') or 0):.2f}%)")
        else:
            slices = pack["images"]
            pred = segment_volume_slices(model, slices)
            truth = pack["labels"]
            dice = {}
            for c, name in enumerate(manifest["labels"]):
                if c == 0:
                    continue
                pm, tm = pred == c, truth == c
                d = pm.sum() + tm.sum()
                dice[name] = 1.0 if d == 0 else float(2 * (pm & tm).sum() / d)
            extra["accuracy"] = {"slice_dice": dice, "slices": int(len(slices))}
            print(f"pooled slice Dice: {dice}")

    predictions, e2e = [], []
    labels = manifest.get("labels", [])
    for name, rgb in frames(args, h, w):
        t0 = time.perf_counter()
        out = model.run_nhwc(normalise(rgb[None], spec))
        e2e.append((time.perf_counter() - t0) * 1000.0)
        if manifest["task"] == "classification":
            probs = np.exp(out[0] - out[0].max())
            probs /= probs.sum()
            top = np.argsort(-probs)[: args.topk]
            predictions.append({"input": name, "top": [{"label": labels[i] if i < len(labels) else str(i),
                                                         "index": int(i), "score": float(probs[i])} for i in top]})
            print(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in predictions[-1]["top"]))
        else:
            mask = out[0].argmax(-1).astype(np.uint8)
            predictions.append({"input": name, "foreground_pixels": int((mask > 0).sum())})
            if args.save_images:
                Path(args.save_images).mkdir(parents=True, exist_ok=True)
                np.save(Path(args.save_images) / (Path(name).stem + "_mask.npy"), mask)
        if args.save_images and manifest["task"] == "classification":
            save_annotated(rgb, predictions[-1], Path(args.save_images), name)
    if e2e:
        extra["end_to_end_ms"] = percentiles(e2e)
        extra["predictions"] = predictions
    record = results_record(manifest, artifact, model.runtime, bench, **extra)
    if args.json:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


def save_annotated(rgb, prediction, folder: Path, name: str) -> None:
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("note: --save-images needs Pillow; skipped")
        return
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb).resize((max(224, rgb.shape[1]), max(224, rgb.shape[0])))
    draw = ImageDraw.Draw(img)
    top = prediction["top"][0]
    draw.rectangle([0, 0, img.width, 16], fill=(0, 0, 0))
    draw.text((3, 2), f"{top['label']} {top['score']:.2f}", fill=(255, 255, 0))
    img.save(folder / (Path(name.replace("[", "_").replace("]", "")).stem + "_pred.png"))


if __name__ == "__main__":
    raise SystemExit(main())
