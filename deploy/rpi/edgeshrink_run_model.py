"""The model side of edgeshrink_run.py: one .tflite model (safe loading, one-line reasons when LiteRT
refuses it, input tensor preparation in NHWC or NCHW, batch resizing, what a classifier's outputs
are), its labels, and opening it from a bundle or as a bare `--model` file.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy and
edgeshrink_common."""

import re
import stat
from pathlib import Path

import edgeshrink_common as C
import numpy as np

BACKGROUND_NAMES = {"background", "__background__", "???", "bg", "unknown", "none"}


MAX_MODEL_BYTES = 2 ** 31 - 1  # the flatbuffer limit: a larger "model" is not one (and /dev/zero never ends)


def read_model_file(path) -> bytes:
    """The bytes of a .tflite file: a regular file under the flatbuffer size limit, read once."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}; pass an existing .tflite file") from None
    if not stat.S_ISREG(info.st_mode):
        raise SystemExit(f"error: {path} is not a regular file; pass a .tflite file")
    if info.st_size > MAX_MODEL_BYTES:
        raise SystemExit(f"error: {path} is {info.st_size / 2 ** 30:.1f} GiB, above the 2 GiB TFLite limit; "
                         "pass a .tflite file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror}; pass an existing .tflite file") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise SystemExit(f"error: {path} is not a TFLite flatbuffer (no TFL3 identifier); pass a .tflite file")
    return data


def load_error(name: str, exc: Exception) -> str:
    """One line saying why LiteRT refused a model (custom op, TF op, corrupt file, ...)."""
    text = " ".join([str(exc)] + list(getattr(exc, "native_stderr", []) or [])).replace("\n", " ")
    custom = sorted({op.rstrip(".") for op in re.findall(r"unresolved custom op: ([\w.-]+)", text)})
    if custom:
        return (f"error: {name} uses custom op {', '.join(custom)}, which this TFLite runtime does not have; "
                "convert the model with built-in ops only (no allow_custom_ops)")
    if "Flex delegate" in text or "Select TensorFlow op" in text or "Regular TensorFlow ops" in text:
        return (f"error: {name} needs TensorFlow (Select TF / Flex) ops, which this TFLite runtime does not have; "
                "convert the model with built-in ops only")
    if "not a valid Flatbuffer" in text or "Could not open" in text:
        return f"error: {name} is not a valid TFLite model (truncated or corrupt); copy it again"
    return f"error: {name}: the TFLite runtime cannot load it ({type(exc).__name__}: {' '.join(text.split())[:160]})"


class Model:
    """One .tflite model: bytes hashed as loaded, input prepared as the model's tensor wants (NHWC, or
    NCHW for a channels-first model: images are transposed)."""

    def __init__(self, data: bytes, threads: int, xnnpack: bool, prep: dict, name: str = "the model"):
        self.sha256 = C.sha256_bytes(data)
        try:
            self.interp, self.runtime = C.make_interpreter(data, threads, xnnpack, attach_native_errors=True)
        except (ValueError, RuntimeError) as exc:
            raise SystemExit(load_error(name, exc)) from None
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        shape = [int(s) for s in self.inp["shape"]]
        if len(shape) != 4:
            raise SystemExit(f"error: {name}'s input is {shape}; this script takes images (1xHxWxC or 1xCxHxW)")
        # channels first when the second axis looks like channels and the last does not ([1,3,224,224])
        self.nchw = shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4) and shape[2] > 4
        if self.nchw:
            self.channels, self.height, self.width = shape[1], shape[2], shape[3]
        else:
            self.height, self.width, self.channels = shape[1], shape[2], shape[3]
        self.batch = 1
        self.prep = prep

    def layout(self, x_nhwc: np.ndarray) -> np.ndarray:
        """NHWC data -> the model's layout (transposed for a channels-first model), contiguous."""
        return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2) if self.nchw else x_nhwc)

    def tensor(self, rgb_nhwc: np.ndarray) -> np.ndarray:
        """uint8 NHWC pixels -> the input tensor (dtype and quantization from the model)."""
        dtype, mode = self.inp["dtype"], self.prep["mode"]
        if mode == "raw" and dtype == np.uint8:
            x = np.asarray(rgb_nhwc, dtype=np.uint8)
        elif mode == "raw" and dtype == np.int8:
            x = (rgb_nhwc.astype(np.int16) - 128).astype(np.int8)
        elif mode == "raw":
            x = rgb_nhwc.astype(dtype)
        elif mode == "unit":
            x = C.quantize_input(rgb_nhwc.astype(np.float32) / 255.0, self.inp)
        else:
            x = C.quantize_input(C.normalise(rgb_nhwc, self.prep), self.inp)
        return self.layout(x)

    def tensor_from_values(self, x_nhwc: np.ndarray) -> np.ndarray:
        """Already-normalised float model input (NHWC) -> the input tensor (quantized if the model is)."""
        return self.layout(C.quantize_input(np.asarray(x_nhwc, np.float32), self.inp))

    def set_batch(self, n: int) -> bool:
        """Resize the input to batch `n` (False, and batch 1 kept, when the model cannot)."""
        if n == self.batch:
            return True
        shape = [int(s) for s in self.inp["shape"]]
        try:
            self.interp.resize_tensor_input(self.inp["index"], [n] + shape[1:])
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError):
            if n != 1:
                self.set_batch(1)
            return False
        self.batch = n
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        return True

    def invoke_raw(self, tensor: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], tensor)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        return C.dequantize_output(self.invoke_raw(tensor), self.out)

    def input_record(self) -> dict:
        scale, zero = self.inp["quantization"]
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "layout": "NCHW" if self.nchw else "NHWC", "dtype": np.dtype(self.inp["dtype"]).name,
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
    data = read_model_file(path)
    prep = preprocessing(args)
    model = Model(data, args.threads or 4, not args.no_xnnpack, prep or {"mode": "raw"}, path.name)
    if not prep:
        if model.inp["dtype"] == np.float32:
            raise SystemExit("error: this model takes float32 input: pass --mean R G B --std R G B (e.g. ImageNet "
                             "0.485 0.456 0.406 / 0.229 0.224 0.225) or --scale raw|unit")
        print(f"note: {np.dtype(model.inp['dtype']).name} input and no --mean/--std/--scale: feeding raw pixels "
              "(--scale raw)")
    if model.nchw:
        print(f"note: the model is channels-first ({[int(v) for v in model.inp['shape']]}): images are transposed "
              "to NCHW")
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
                  {"mode": "mean_std", "mean": spec["mean"], "std": spec["std"]}, artifact["file"])
    if manifest.get("task", "classification") != "classification":
        return model, manifest, artifact, [str(n) for n in manifest.get("labels") or []], "labels from the manifest"
    names, note = align_labels(manifest.get("labels"), int(np.prod(model.out["shape"][1:])))
    return model, manifest, artifact, names, note
