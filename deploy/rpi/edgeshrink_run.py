#!/usr/bin/env python3
"""Run a TFLite classifier on a Raspberry Pi (or any Linux box): an EdgeShrink bundle's model, or
any .tflite file on its own.

Needs numpy and ai-edge-litert (or tflite-runtime with numpy<2). Pillow or OpenCV decode images
(OpenCV also video and webcams; picamera2 the Pi camera); every decoder's pixels go through the
same resize (Pillow's BILINEAR, antialiased when shrinking, done in numpy), so results do not
depend on which library is installed.

Bundle mode (the default; preprocessing, labels and model come from manifest.json, every file's
sha256 is checked first):
  python3 edgeshrink_run.py --bench --json results/device.json      # model-only latency
  python3 edgeshrink_run.py --input photo.jpg --top-k 3             # classify images / a folder
  python3 edgeshrink_run.py --eval-pack heldout.npz --json r.json   # accuracy on held-out data

Any .tflite file (input size, dtype and quantization are read from the model):
  python3 edgeshrink_run.py --model m.tflite --labels labels.txt --mean 0.485 0.456 0.406 \\
      --std 0.229 0.224 0.225 --input photos/ --top-k 5 --json out.json
  python3 edgeshrink_run.py --model m_quant.tflite --scale raw --truth val/ --json acc.json
  python3 edgeshrink_run.py --model m.tflite --scale unit --input clip.mp4    # or --camera 0
"""

import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
# Never import from the bundle folder: a planted numpy/ or argparse.py there would run unchecked.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != HERE]


def _load_common():
    """edgeshrink_common from beside this script (or ../common in the source tree); inside a bundle
    only when its bytes match the sha256 manifest.json lists, and those same bytes are what runs."""
    import hashlib
    import json
    import types

    for path in (os.path.join(HERE, "edgeshrink_common.py"), os.path.join(HERE, "..", "common", "edgeshrink_common.py")):
        if os.path.isfile(path):
            break
    else:
        raise SystemExit("error: edgeshrink_common.py is not beside this script; copy it from deploy/common/")
    with open(path, "rb") as f:
        code = f.read()
    manifest = os.path.join(HERE, "manifest.json")
    if os.path.exists(manifest):
        try:
            with open(manifest, "rb") as f:
                listed = {e["file"]: e["sha256"] for e in json.loads(f.read())["device_files"]}
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            raise SystemExit(f"error: {manifest} is malformed or lists no device_files; copy the bundle again") from None
        if listed.get(os.path.basename(path)) != hashlib.sha256(code).hexdigest():
            raise SystemExit("error: edgeshrink_common.py: sha256 mismatch or not listed in manifest.json; "
                             "copy the bundle again")
    module = types.ModuleType("edgeshrink_common")
    module.__file__ = path
    sys.modules["edgeshrink_common"] = module
    exec(compile(code, path, "exec"), module.__dict__)
    return module


C = _load_common()

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}
BACKGROUND_NAMES = {"background", "__background__", "???", "bg", "unknown", "none"}
SCALE_HELP = ("raw: pixel values 0..255 go in as they are (uint8 tensor: the bytes; int8: pixel-128; float: "
              "0.0..255.0), the convention of quantized TFLite classifiers; unit: pixel/255")


class Model:
    """One .tflite classifier: bytes hashed as loaded, input prepared as the model's tensor wants."""

    def __init__(self, data: bytes, threads: int, xnnpack: bool, prep: dict):
        self.sha256 = C.sha256_bytes(data)
        self.interp, self.runtime = C.make_interpreter(data, threads, xnnpack)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        shape = [int(s) for s in self.inp["shape"]]
        if len(shape) != 4:
            raise SystemExit(f"error: the model's input is {shape}; this script takes NHWC images (1xHxWxC)")
        self.height, self.width, self.channels = shape[1], shape[2], shape[3]
        self.prep = prep

    def tensor(self, rgb_nhwc: np.ndarray) -> np.ndarray:
        """uint8 NHWC pixels -> the input tensor (dtype and quantization from the model)."""
        dtype, mode = self.inp["dtype"], self.prep["mode"]
        if mode == "raw" and dtype == np.uint8:
            return np.ascontiguousarray(rgb_nhwc, dtype=np.uint8)
        if mode == "raw" and dtype == np.int8:
            return (rgb_nhwc.astype(np.int16) - 128).astype(np.int8)
        if mode == "raw":
            return rgb_nhwc.astype(dtype)
        if mode == "unit":
            return C.quantize_input(rgb_nhwc.astype(np.float32) / 255.0, self.inp)
        return C.quantize_input(C.normalise(rgb_nhwc, self.prep), self.inp)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], tensor)
        self.interp.invoke()
        return C.dequantize_output(self.interp.get_tensor(self.out["index"]), self.out)

    def input_record(self) -> dict:
        scale, zero = self.inp["quantization"]
        return {"height": self.height, "width": self.width, "dtype": np.dtype(self.inp["dtype"]).name,
                "quantization": {"scale": float(scale), "zero_point": int(zero)}, **self.prep}


def softmax_in_graph(interp, tensor_index: int) -> bool:
    """True when the output tensor comes from a SOFTMAX (through (de)quantize/reshape ops)."""
    try:
        ops = interp._get_ops_details()
    except Exception:
        return False
    producer = {int(o): op for op in ops if op.get("op_name") != "DELEGATE" for o in op.get("outputs", [])}
    index = tensor_index
    for _ in range(8):
        op = producer.get(index)
        if op is None:
            return False
        if op["op_name"] == "SOFTMAX":
            return True
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE") or not len(op["inputs"]):
            return False
        index = int(op["inputs"][0])
    return False


def score_kind(model: Model, first_output: np.ndarray) -> str:
    """'probabilities' (no softmax added) or 'logits' (softmax applied), decided once per model."""
    if softmax_in_graph(model.interp, model.out["index"]):
        return "probabilities (softmax in the model)"
    quantized = model.out["dtype"] in (np.int8, np.uint8)
    tol = 0.05 if quantized else 0.01
    if first_output.min() >= 0 and abs(float(first_output.sum()) - 1.0) <= tol:
        return "probabilities (non-negative, sum 1)"
    return "logits (softmax applied)"


def read_label_file(path) -> list:
    """One label per line; '0 tench' / '0: tench' forms drop their index; trailing blank lines ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise SystemExit(f"error: cannot read labels {path}: {exc.strerror}; pass a text file, one label per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for i, line in enumerate(lines):
        head, _, rest = line.strip().replace(":", " ", 1).partition(" ")
        names.append(rest.strip() if head == str(i) and rest.strip() else line.strip())
    return names


def align_labels(labels, classes: int):
    """(names for each model output, note): handles a background row on either side (1001 vs 1000)."""
    if not labels:
        return [str(i) for i in range(classes)], "no labels: class indices shown"
    background = labels[0].strip().lower() in BACKGROUND_NAMES
    if len(labels) == classes:
        return list(labels), (f"labels include a background row at index 0 ({labels[0]!r})" if background
                              else f"{classes} labels for {classes} outputs")
    if len(labels) == classes - 1:
        return ["background"] + list(labels), (f"model has {classes} outputs and the labels {len(labels)} lines: "
                                               "output 0 is background, labels shifted by one")
    if len(labels) == classes + 1 and background:
        return list(labels[1:]), (f"labels have {len(labels)} lines with a background row the model does not "
                                  f"have ({classes} outputs): background row dropped")
    raise SystemExit(f"error: the labels have {len(labels)} lines but the model has {classes} outputs; "
                     "pass the labels file made for this model")


def list_inputs(items) -> list:
    """Image/video paths from files and folders (folders searched recursively, sorted)."""
    found = []
    for item in items or []:
        p = Path(item)
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
        else:
            found.append(p)
    return found


def truth_inputs(folder, names: list) -> list:
    """(path, class index) for folder/<class>/<image>; class folders must name a label (or an index)."""
    root = Path(folder)
    if not root.is_dir():
        raise SystemExit(f"error: --truth {folder} is not a folder; pass a folder with one sub-folder per class")
    lookup = {n.strip().lower().replace(" ", "_"): i for i, n in reversed(list(enumerate(names)))}
    pairs, unknown = [], []
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        key = sub.name.strip().lower().replace(" ", "_")
        index = lookup.get(key, int(key) if key.isdigit() and int(key) < len(names) else None)
        if index is None:
            unknown.append(sub.name)
            continue
        pairs += [(f, index) for f in sorted(sub.rglob("*")) if f.is_file()]
    if unknown:
        raise SystemExit(f"error: truth folders {', '.join(unknown[:5])} name no label; rename them to label names "
                         "(or class indices) or pass the matching --labels")
    return pairs


def video_frames(source, limit: int):
    """(name, HxWx3 uint8 RGB) from a video file or camera index with OpenCV (BGR converted to RGB)."""
    try:
        import cv2
    except ImportError:
        raise SystemExit("error: video and webcam input need OpenCV (pip install opencv-python-headless)") from None
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise SystemExit(f"error: cannot open video source {source!r}; check the file or camera index")
    count = 0
    while count < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        yield f"frame{count}", np.ascontiguousarray(bgr[:, :, ::-1])
        count += 1
    cap.release()


def camera_frames(index: int, limit: int):
    """Pi camera via picamera2 (its 'RGB888' arrays are BGR in memory: converted), else OpenCV."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        yield from video_frames(index, limit)
        return
    cam = Picamera2()
    cam.configure(cam.create_preview_configuration(main={"size": (640, 480), "format": "RGB888"}))
    cam.start()
    try:
        for i in range(limit):
            yield f"camera{i}", np.ascontiguousarray(cam.capture_array()[:, :, 2::-1])
    finally:
        cam.stop()


def sources(args, truth_pairs):
    """(name, truth index or None, decode function) for every input; decode may raise ValueError."""
    for path, index in truth_pairs:
        yield str(path), index, (lambda p=path: C.decode_image(p))
    for path in list_inputs(args.input):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            for name, rgb in video_frames(str(path), args.max_frames):
                yield f"{path.name}:{name}", None, (lambda a=rgb: a)
        elif path.suffix.lower() == ".npy":
            arr = np.load(path)
            for i, a in enumerate(arr if arr.ndim == 4 else arr[None]):
                yield f"{path.name}[{i}]", None, (lambda a=a: a.astype(np.uint8))
        else:
            yield str(path), None, (lambda p=path: C.decode_image(p))
    if args.camera is not None:
        for name, rgb in camera_frames(args.camera, args.max_frames):
            yield name, None, (lambda a=rgb: a)


def classify(model: Model, args, names: list, truth_pairs: list) -> dict:
    """Decode -> resize -> prepare -> invoke -> top-k for every input; end-to-end time includes decode."""
    predictions, skipped, e2e, kind = [], [], [], None
    hits = {"top1": 0, "topk": 0, "images": 0}
    for name, truth, decode in sources(args, truth_pairs):
        t0 = time.perf_counter()
        try:
            rgb = C.resize_bilinear(decode(), model.height, model.width)
        except (ValueError, OSError) as exc:
            skipped.append({"input": name, "reason": str(exc)[:200]})
            print(f"skipped {name}: {str(exc)[:120]}", file=sys.stderr)
            continue
        out = model.invoke(model.tensor(rgb[None]))[0].reshape(-1)
        kind = kind or score_kind(model, out)
        probs = out if kind.startswith("probabilities") else C.softmax(out)
        top = C.top_k(probs, args.top_k)
        e2e.append((time.perf_counter() - t0) * 1000.0)
        rec = {"input": name, "top": [{"label": names[i], "index": int(i), "score": float(probs[i])} for i in top]}
        if truth is not None:
            rec["truth"] = int(truth)
            hits["images"] += 1
            hits["top1"] += int(top[0] == truth)
            hits["topk"] += int(truth in top)
        predictions.append(rec)
        if args.save_images:
            save_annotated(rgb, rec, Path(args.save_images), name)
        print(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in rec["top"]))
    result = {"predictions": predictions, "skipped": skipped, "skipped_count": len(skipped), "scores": kind}
    if e2e:
        result["end_to_end_ms"] = C.percentiles(e2e)
    if hits["images"]:
        n = hits["images"]
        result["accuracy"] = {"top1": hits["top1"] / n, f"top{args.top_k}": hits["topk"] / n, "images": n}
        print(f"accuracy on {n} images: top-1 {100 * hits['top1'] / n:.2f}%, top-{args.top_k} {100 * hits['topk'] / n:.2f}%")
    if skipped:
        print(f"{len(skipped)} input(s) skipped (unreadable); listed under 'skipped' in the JSON")
    return result


def save_annotated(rgb, prediction: dict, folder: Path, name: str) -> None:
    """The model-size input with its top prediction written on it (needs Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("note: --save-images needs Pillow; skipped", file=sys.stderr)
        return
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb).resize((max(224, rgb.shape[1]), max(224, rgb.shape[0])), Image.NEAREST)
    top = prediction["top"][0]
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 16], fill=(0, 0, 0))
    draw.text((3, 2), f"{top['label']} {top['score']:.2f}", fill=(255, 255, 0))
    stem = Path(name.replace("[", "_").replace("]", "").replace(":", "_")).stem
    img.save(folder / f"{stem}_pred.png")


def benchmark(model: Model, args, cfg: dict) -> dict:
    """Model-only latency on one fixed random input (set_tensor + invoke)."""
    rgb = np.random.default_rng(0).integers(0, 256, (1, model.height, model.width, 3), dtype=np.uint8)
    tensor = model.tensor(rgb)

    def call():
        model.interp.set_tensor(model.inp["index"], tensor)
        model.interp.invoke()

    bench = C.time_calls(call, args.warmup if args.warmup is not None else cfg.get("warmup", 20),
                         args.runs or cfg.get("min_runs", 100),
                         args.seconds if args.seconds is not None else cfg.get("min_seconds", 5.0))
    lat = bench["latency_ms"]
    emulated = C.emulator()
    print(f"model-only: p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms, "
          f"{bench['fps']:.1f} FPS over {bench['runs']} runs")
    if emulated:
        bench["note"] = f"emulated by {emulated}: these timings say nothing about the real device"
        print(f"note: {bench['note']}")
    return bench


def eval_pack(model: Model, pack_path, manifest: dict, artifact: dict) -> dict:
    """Accuracy (classification) or pooled slice Dice (segmentation) on `edgeshrink eval-pack` data."""
    pack = np.load(pack_path)
    images, truth = pack["images"], pack["labels"]
    if manifest.get("task", "classification") == "classification":
        preds = np.array([C.top_k(model.invoke(model.tensor(images[i:i + 1]))[0].reshape(-1), 1)[0]
                          for i in range(len(images))])
        top1 = float((preds == truth).mean())
        expected = (artifact.get("metrics") or {}).get("top1")
        print(f"held-out top-1 {100 * top1:.2f}% on {len(truth)} images"
              + (f" (manifest: {100 * expected:.2f}%)" if expected is not None else ""))
        return {"top1": top1, "images": int(len(truth)), "manifest_top1": expected}
    pred = np.concatenate([model.invoke(C.quantize_input(s.transpose(1, 2, 0)[None], model.inp))[0].argmax(-1) for s in images])
    dice = {}
    for c, name in list(enumerate(manifest.get("labels", [])))[1:]:
        pm, tm = pred == c, truth == c
        d = pm.sum() + tm.sum()
        dice[name] = 1.0 if d == 0 else float(2 * (pm & tm).sum() / d)
    print(f"pooled slice Dice: {dice}")
    return {"slice_dice": dice, "slices": int(len(images))}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to run")
    src.add_argument("--model", help="any .tflite classifier (no bundle needed)")
    src.add_argument("--bundle", default=HERE, help="bundle folder (default: this script's folder)")
    src.add_argument("--artifact", help="artifact name from the manifest (default: the profile's deploy artifact)")
    pre = p.add_argument_group("preprocessing (with --model; a bundle's manifest says it)")
    pre.add_argument("--labels", help="labels file, one per line (a background row is detected)")
    pre.add_argument("--mean", type=float, nargs=3, help="per-channel mean of pixel/255, e.g. 0.485 0.456 0.406")
    pre.add_argument("--std", type=float, nargs=3, help="per-channel std of pixel/255, e.g. 0.229 0.224 0.225")
    pre.add_argument("--scale", choices=["raw", "unit"], help=SCALE_HELP)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--input", nargs="*", help="image files, folders, .npy arrays or video files")
    io.add_argument("--truth", help="folder with one sub-folder per class: accuracy against it")
    io.add_argument("--camera", type=int, help="camera index (picamera2 when present, else OpenCV)")
    io.add_argument("--max-frames", type=int, default=300)
    io.add_argument("--top-k", "--topk", dest="top_k", type=int, default=3)
    io.add_argument("--save-images", help="folder for the inputs with their prediction drawn (Pillow)")
    io.add_argument("--eval-pack", help="bundle mode: held-out .npz from `edgeshrink eval-pack`")
    io.add_argument("--json", help="write the results JSON here")
    run = p.add_argument_group("runtime")
    run.add_argument("--threads", type=int, help="interpreter threads (default: the profile's, else 4)")
    run.add_argument("--no-xnnpack", action="store_true", help="built-in CPU kernels instead of the XNNPACK delegate")
    run.add_argument("--bench", action="store_true", help="model-only latency benchmark")
    run.add_argument("--warmup", type=int)
    run.add_argument("--runs", type=int)
    run.add_argument("--seconds", type=float)
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    return args


def preprocessing(args) -> dict:
    """The input recipe for --model: mean/std, or a --scale; contradictions are errors."""
    if (args.mean is None) != (args.std is None):
        raise SystemExit("error: pass --mean and --std together (three values each), or --scale raw|unit")
    if args.mean and args.scale:
        raise SystemExit("error: --scale and --mean/--std contradict; pick one")
    if args.std and min(args.std) <= 0:
        raise SystemExit("error: --std values must be positive, e.g. 0.229 0.224 0.225")
    if args.mean:
        return {"mode": "mean_std", "mean": list(args.mean), "std": list(args.std)}
    return {"mode": args.scale} if args.scale else {}


def open_model_file(args):
    """(model, manifest-like record, artifact-like record, label names, note) for --model FILE."""
    path = Path(args.model)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}; pass an existing .tflite file") from None
    if data[4:8] != b"TFL3":
        raise SystemExit(f"error: {path} is not a TFLite flatbuffer (no TFL3 identifier); pass a .tflite file")
    prep = preprocessing(args)
    model = Model(data, args.threads or 4, not args.no_xnnpack, prep or {"mode": "raw"})
    if not prep:
        if model.inp["dtype"] == np.float32:
            raise SystemExit("error: this model takes float32 input: pass --mean R G B --std R G B (e.g. ImageNet "
                             "0.485 0.456 0.406 / 0.229 0.224 0.225) or --scale raw|unit")
        print(f"note: {np.dtype(model.inp['dtype']).name} input and no --mean/--std/--scale: feeding raw pixels "
              "(--scale raw)")
    if model.channels != 3:
        raise SystemExit(f"error: the model takes {model.channels}-channel input; this script classifies RGB images")
    classes = int(np.prod(model.out["shape"][1:]))
    names, note = align_labels(read_label_file(args.labels) if args.labels else None, classes)
    print(f"labels: {note}")
    manifest = {"model": path.stem, "target": None, "task": "classification"}
    artifact = {"file": path.name, "sha256": model.sha256, "format": "tflite",
                "precision": np.dtype(model.inp["dtype"]).name}
    return model, manifest, artifact, names, note


def open_bundle_model(args):
    """(model, manifest, artifact, label names, note) for a checked bundle; the bytes hashed are the bytes run."""
    bundle, manifest, artifact = C.open_bundle(args.bundle, args.artifact, "tflite")
    data = C.read_listed(bundle, artifact)
    spec = manifest.get("input") or {}
    if not all(k in spec for k in ("mean", "std")):
        raise SystemExit("error: manifest.json has no input mean/std; rebuild the bundle")
    deploy = manifest.get("deploy") or {}
    model = Model(data, args.threads or deploy.get("threads", 4), not args.no_xnnpack,
                  {"mode": "mean_std", "mean": spec["mean"], "std": spec["std"]})
    names, note = [str(i) for i in range(int(np.prod(model.out["shape"][1:])))], "labels from the manifest"
    if manifest.get("task", "classification") == "classification":
        names, note = align_labels(manifest.get("labels"), len(names))
    return model, manifest, artifact, names, note


def main(argv=None) -> int:
    args = parse_args(argv)
    opened = open_model_file(args) if args.model else open_bundle_model(args)
    model, manifest, artifact, names, note = opened
    if args.eval_pack and args.model:
        raise SystemExit("error: --eval-pack needs a bundle (its manifest says the preprocessing); use --truth with --model")
    artifact = dict(artifact, loaded_sha256=model.sha256)
    extra = {"input": model.input_record(), "labels_note": note}
    bench = benchmark(model, args, (manifest.get("deploy") or {}).get("benchmark", {})) if args.bench else None
    if bench and bench.get("note"):
        extra["timing_note"] = bench.pop("note")
    if args.eval_pack:
        extra["accuracy"] = eval_pack(model, args.eval_pack, manifest, artifact)
    truth_pairs = truth_inputs(args.truth, names) if args.truth else []
    if (truth_pairs or args.input or args.camera is not None) and manifest.get("task", "classification") != "classification":
        raise SystemExit("error: image input is for classifiers; for a segmentation bundle use --eval-pack")
    if truth_pairs or args.input or args.camera is not None:
        result = classify(model, args, names, truth_pairs)
        if "accuracy" in result and "accuracy" in extra:
            result["truth_accuracy"] = result.pop("accuracy")
        extra.update(result)
    print(f"runtime: {model.runtime['name']} {model.runtime['version']}, XNNPACK applied: "
          f"{ {True: 'yes', False: 'no', None: 'unknown'}[model.runtime['xnnpack_applied']] }, "
          f"{model.runtime['threads']} threads")
    record = C.results_record(manifest, artifact, model.runtime, bench, **extra)
    if args.json:
        C.write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
