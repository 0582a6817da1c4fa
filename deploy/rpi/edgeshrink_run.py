#!/usr/bin/env python3
"""Run a TFLite model on a Raspberry Pi (or any Linux box): an EdgeShrink bundle's classifier,
segmentation or detection model, or any .tflite classifier on its own.

Needs numpy and ai-edge-litert (or tflite-runtime with numpy<2). Pillow or OpenCV decode images
(OpenCV also video and webcams; picamera2 the Pi camera; nibabel NIfTI volumes); every decoder's
pixels go through the same resize (Pillow's BILINEAR, antialiased when shrinking), so results do
not depend on which library is installed. Refusals are one line on stderr: exit 2 for a refused
command line or input, 1 for a broken bundle or runtime.

Bundle mode (the default; preprocessing, labels and model come from manifest.json, every file's
sha256 is checked first):
  python3 edgeshrink_run.py --bench --json results/device.json      # model-only latency
  python3 edgeshrink_run.py --input photo.jpg --top-k 3             # classify images / a folder
  python3 edgeshrink_run.py --eval-pack heldout.npz --json r.json   # accuracy / Dice on held-out data
Segmentation bundles write label masks (PNG with the label values + a colour overlay; NIfTI masks
with the input's affine and header for volumes) under --out:
  python3 edgeshrink_run.py --input slice.png case.nii.gz scans/ --out masks/
Detection bundles print one JSON line of boxes per input (label, score, [x1, y1, x2, y2] in the
image's own pixels) and draw them with --out; end-to-end time includes decoding the boxes and NMS:
  python3 edgeshrink_run.py --input street.jpg photos/ clip.mp4 --out boxes/ --json detections.json

Any .tflite file (input size, layout, dtype and quantization are read from the model):
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


def _load_common(name: str = "edgeshrink_common"):
    """A deploy/common module (edgeshrink_common, edgeshrink_detect) from beside this script (or ../common
    in the source tree); inside a bundle only when its bytes match the sha256 manifest.json lists, and
    those same bytes are what runs."""
    import hashlib
    import json
    import types

    for path in (os.path.join(HERE, f"{name}.py"), os.path.join(HERE, "..", "common", f"{name}.py")):
        if os.path.isfile(path):
            break
    else:
        raise SystemExit(f"error: {name}.py is not beside this script; copy it from deploy/common/")
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
            raise SystemExit(f"error: {name}.py: sha256 mismatch or not listed in manifest.json; "
                             "copy the bundle again")
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(code, path, "exec"), module.__dict__)
    return module


C = _load_common()
_load_common("edgeshrink_detect")  # box decoding + NMS + mAP, shared with the host verifier

# The runner's own modules, in load order (each may import the ones before it); every one is
# listed, with its sha256, in a bundle's manifest.json.
RUNNER_MODULES = ("edgeshrink_run_model", "edgeshrink_run_images", "edgeshrink_run_inputs", "edgeshrink_run_eval",
                  "edgeshrink_run_segment", "edgeshrink_run_detect", "edgeshrink_run_bench")


def _load_runner_modules(names) -> None:
    """Each `name`.py from beside this script, run in order as module `name` and registered in
    sys.modules before it runs, so the modules import one another by name while this folder stays
    off sys.path. Inside a bundle a file runs only when its bytes match the sha256 manifest.json
    lists (those same bytes are what run); a missing or mismatched file is a one-line error."""
    import json
    import types

    manifest, listed = os.path.join(HERE, "manifest.json"), None
    if os.path.exists(manifest):
        try:
            with open(manifest, "rb") as f:
                listed = {e["file"]: e["sha256"] for e in json.loads(f.read())["device_files"]}
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            raise SystemExit(f"error: {manifest} is malformed or lists no device_files; copy the bundle again") from None
    for name in names:
        path = os.path.join(HERE, f"{name}.py")
        try:
            with open(path, "rb") as f:
                code = f.read()
        except OSError:
            raise SystemExit(f"error: {name}.py is not beside this script; copy the whole bundle "
                             "(or deploy/rpi/ with deploy/common/edgeshrink_common.py) again") from None
        if listed is not None and listed.get(f"{name}.py") != C.sha256_bytes(code):
            raise SystemExit(f"error: {name}.py: sha256 mismatch or not listed in manifest.json; copy the bundle again")
        module = types.ModuleType(name)
        module.__file__ = path
        sys.modules[name] = module
        exec(compile(code, path, "exec"), module.__dict__)


_load_runner_modules(RUNNER_MODULES)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from edgeshrink_run_bench import benchmark  # noqa: E402
from edgeshrink_run_detect import detect  # noqa: E402
from edgeshrink_run_detect import eval_pack as detection_eval_pack  # noqa: E402
from edgeshrink_run_detect import open_pack as open_detection_pack  # noqa: E402
from edgeshrink_run_eval import classify, eval_pack, open_pack  # noqa: E402
from edgeshrink_run_images import MAX_MEGAPIXELS  # noqa: E402
from edgeshrink_run_inputs import truth_inputs  # noqa: E402
from edgeshrink_run_model import open_bundle_model, open_model_file  # noqa: E402
from edgeshrink_run_segment import eval_pack as segmentation_eval_pack  # noqa: E402
from edgeshrink_run_segment import segment  # noqa: E402

SCALE_HELP = ("raw: pixel values 0..255 go in as they are (uint8 tensor: the bytes; int8: pixel-128; float: "
              "0.0..255.0), the convention of quantized TFLite classifiers; unit: pixel/255")


class Parser(argparse.ArgumentParser):
    """argparse with one-line refusals (no usage block): `error: ...`, exit 2."""

    def error(self, message):
        raise SystemExit(f"error: {message} (see --help)")


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    io.add_argument("--input", nargs="*", help="image files, folders, .npy arrays, videos; NIfTI volumes (segmentation)")
    io.add_argument("--truth", help="folder with one sub-folder per class: accuracy against it")
    io.add_argument("--camera", type=int, help="camera index (picamera2 when present, else OpenCV)")
    io.add_argument("--max-frames", type=int, default=300)
    io.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS,
                    help=f"refuse larger images before decoding them (default {MAX_MEGAPIXELS:g}; JPEGs are decoded reduced)")
    io.add_argument("--top-k", "--topk", dest="top_k", type=int, help="classifiers: how many classes to show (default 3)")
    io.add_argument("--save-images", help="classifiers: folder for the inputs with their prediction drawn (Pillow)")
    io.add_argument("--out", help="segmentation: folder for the masks and overlays (default: masks/); detection: "
                    "folder for the inputs with their boxes drawn")
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
    for name, low, high in (("top_k", 1, 100000), ("threads", 1, 256), ("max_frames", 1, 10 ** 9),
                            ("warmup", 0, 10 ** 6), ("runs", 1, 10 ** 7), ("seconds", 0.0, 86400.0),
                            ("max_megapixels", 0.01, 1000.0)):
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            p.error(f"--{name.replace('_', '-')} must be between {low} and {high}, not {value}")
    for name in ("json", "out", "save_images"):
        check_output(p, name, getattr(args, name))
    return args


def check_output(p, name: str, value) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if not value:
        return
    path, flag = Path(value), f"--{name.replace('_', '-')}"
    if name == "json":
        if path.is_dir():
            p.error(f"{flag} {value} is a folder; pass a file name, e.g. {path / 'results.json'}")
        if path.exists() and not path.is_file():
            p.error(f"{flag} {value} is not a regular file")
        folder = path.parent
    else:
        if path.exists() and not path.is_dir():
            p.error(f"{flag} {value} exists and is not a folder")
        folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        p.error(f"{flag} {value}: {folder} is not a writable folder")


def main(argv=None) -> int:
    args = parse_args(argv)
    opened = open_model_file(args) if args.model else open_bundle_model(args)
    model, manifest, artifact, names, note = opened
    task = manifest.get("task", "classification")
    if args.eval_pack and args.model:
        raise SystemExit("error: --eval-pack needs a bundle (its manifest says the preprocessing); use --truth with --model")
    if task != "classification":
        if args.truth:
            raise SystemExit(f"error: --truth folders are for classifiers; score a {task} bundle with --eval-pack")
        for flag, value in (("--top-k", args.top_k), ("--save-images", args.save_images)):
            if value is not None:
                print(f"note: {flag} is for classifiers; ignored (masks, overlays or drawn boxes go to --out)")
    args.top_k = args.top_k or 3
    pack = (open_detection_pack if task == "detection" else open_pack)(args.eval_pack) if args.eval_pack else None
    truth_pairs = truth_inputs(args.truth, names) if args.truth else []
    artifact = dict(artifact, loaded_sha256=model.sha256)
    extra = {"task": task, "input": model.input_record(), "labels_note": note}
    bench = benchmark(model, args, (manifest.get("deploy") or {}).get("benchmark", {})) if args.bench else None
    if bench and bench.get("note"):
        extra["timing_note"] = bench.pop("note")
    if pack is not None:
        extra["accuracy"] = (eval_pack(model, pack, artifact) if task == "classification"
                             else detection_eval_pack(model, pack, manifest, artifact) if task == "detection"
                             else segmentation_eval_pack(model, pack, manifest, artifact))
    if truth_pairs or args.input or args.camera is not None:
        run_task = {"classification": lambda: classify(model, args, names, truth_pairs), "detection": lambda: detect(model, args, manifest)}
        result = run_task.get(task, lambda: segment(model, args, manifest))()
        if "accuracy" in result and "accuracy" in extra:
            result["truth_accuracy"] = result.pop("accuracy")
        extra.update(result)
    elif args.input is not None:
        raise SystemExit("error: --input names nothing; pass image files, folders, .npy arrays or videos")
    print(f"runtime: {model.runtime['name']} {model.runtime['version']}, XNNPACK applied: "
          f"{ {True: 'yes', False: 'no', None: 'unknown'}[model.runtime['xnnpack_applied']] }, "
          f"{model.runtime['threads']} threads")
    record = C.results_record(manifest, artifact, model.runtime, bench, **extra)
    if args.json:
        try:
            C.write_json(args.json, record)
        except OSError as exc:
            raise SystemExit(f"error: cannot write {args.json} ({exc.strerror or type(exc).__name__}); "
                             "choose a writable --json path") from None
        print(f"wrote {args.json}")
    return 0


def cli(argv=None) -> int:
    """main() with every refusal as one line on stderr: 2 for the command line or an input, 1 for a
    broken bundle or runtime, 130 when interrupted; no traceback unless EDGESHRINK_DEBUG is set."""
    try:
        return main(argv)
    except C.BundleError as exc:
        print(exc.code, file=sys.stderr)
        return 1
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; use smaller inputs (or fewer at once)", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("EDGESHRINK_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:200]} "
              "(rerun with EDGESHRINK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(cli())
