"""Per-layer latency lookup table (LUT) measured on the runtime: LiteRT with XNNPACK, FP32.

Each conv / depthwise conv / fully-connected / global-mean layer of a torch model becomes a
`LayerSpec` (input H, W, channels, kernel, stride, padding, fused activation), read with forward
hooks. A spec's latency is measured as a one-layer TFLite file on ai-edge-litert at the target's
thread count. Building every file with TensorFlow's converter costs ~0.2 s, so one template per
layer *kind* (kernel, stride, padding, activation) is converted and its flatbuffer is re-shaped and
re-filled with random weights for each channel count (milliseconds each). The layers are emitted as
onnx2tf emits them: an explicit PAD + VALID conv when torch's padding is not TFLite's SAME, conv with
fused ReLU, HARD_SWISH as a separate op (hard-sigmoid comes out as MINIMUM + RELU, a vector op, and
an FC's activation is left out: both are noise). An entry is the lowest p50 of two interleaved passes
over all new specs (the host is shared; one burst of load spoils one pass, not the entry). The SE
multiplies, residual adds and delegate partition switches are not in the table: the caller's
calibration (toolkit.pipeline.budget) absorbs them.

Entries live in memory and on disk under `cache_dir()/latency-lut/`, one JSON file per entry keyed by
(spec, threads, LiteRT/TensorFlow versions, CPU) carrying the sha256 of its own content; an entry whose
checksum does not match is measured again. Measuring runs in a child process (`python -m
toolkit.bench.latency_lut`), so TensorFlow never loads into the caller."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError

LUT_FORMAT = "edgeshrink-latency-lut/1"
_ACTIVATIONS = {"ReLU": "relu", "ReLU6": "relu6", "Hardswish": "hardswish", "Hardsigmoid": "hardsigmoid"}
_TRANSPARENT = ("BatchNorm2d", "BatchNorm1d", "Identity", "Dropout")


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the runtime sees it (NHWC). kind: conv, dwconv, fc or mean. `pad` is None for
    TFLite SAME padding, else the symmetric explicit padding (PAD op + VALID conv)."""

    kind: str
    h: int
    w: int
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    pad: Optional[int] = None
    act: str = "none"

    @property
    def template_key(self) -> tuple:
        return (self.kind, self.k, self.stride, self.pad, self.act)

    @property
    def macs(self) -> int:
        if self.kind == "fc":
            return self.cin * self.cout
        if self.kind == "mean":
            return self.h * self.w * self.cin
        ho, wo = self.out_hw
        per_out = self.k * self.k * (1 if self.kind == "dwconv" else self.cin)
        return ho * wo * self.cout * per_out

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind in ("fc", "mean"):
            return 1, 1
        if self.pad is None:
            return -(-self.h // self.stride), -(-self.w // self.stride)
        return ((self.h + 2 * self.pad - self.k) // self.stride + 1, (self.w + 2 * self.pad - self.k) // self.stride + 1)


def _conv_spec(module, shape, act: str) -> LayerSpec:
    _, cin, h, w = shape
    k, s, p = module.kernel_size[0], module.stride[0], module.padding
    p = p[0] if isinstance(p, tuple) else (module.kernel_size[0] - 1) // 2 if p == "same" else 0
    if module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1] or module.dilation != (1, 1):
        raise EdgeShrinkError(f"latency table: conv {tuple(module.kernel_size)} stride {tuple(module.stride)} dilation "
                              f"{tuple(module.dilation)} is not supported (square, undilated only); prune by MACs instead")
    depthwise = module.groups == cin and module.groups > 1 and module.out_channels == cin
    if module.groups > 1 and not depthwise:
        raise EdgeShrinkError(f"latency table: grouped conv (groups={module.groups}) is not supported; prune by MACs instead")
    same = s == 1 and k == 2 * p + 1
    return LayerSpec("dwconv" if depthwise else "conv", h, w, cin, module.out_channels, k, s, None if same else p, act)


def layer_specs(model, input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """The model's conv / linear / global-pool layers in execution order, with the activation that
    directly follows each (BatchNorm folds away, so it is skipped when looking for it)."""
    import torch

    events: list[tuple] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: events.append((mod, tuple(inp[0].shape))))
             for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    specs = []
    for i, (mod, shape) in enumerate(events):
        name = type(mod).__name__
        j = i + 1
        while j < len(events) and type(events[j][0]).__name__ in _TRANSPARENT:
            j += 1
        act = _ACTIVATIONS.get(type(events[j][0]).__name__, "none") if j < len(events) else "none"
        if name == "Conv2d":
            specs.append(_conv_spec(mod, shape, act))
        elif name == "Linear":
            specs.append(LayerSpec("fc", 1, 1, mod.in_features, mod.out_features))  # its vector activation: noise
        elif name == "AdaptiveAvgPool2d" and mod.output_size in (1, (1, 1)):
            specs.append(LayerSpec("mean", shape[2], shape[3], shape[1], shape[1]))
    return specs


def _versions() -> dict:
    from importlib import metadata

    from toolkit.core.provenance import machine_description

    out = {"cpu": machine_description()["cpu"]}
    for name in ("ai-edge-litert", "tensorflow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class LatencyTable:
    """Milliseconds per `LayerSpec` on LiteRT/XNNPACK FP32 at `threads`, measured once and cached.
    `stats` counts entries, cache hits, measurements and the seconds spent measuring."""

    def __init__(self, threads: int, *, folder: Optional[Path] = None, progress: bool = True):
        from toolkit.core.paths import cache_dir

        self.threads, self.progress = int(threads), progress
        self.folder = Path(folder) if folder else cache_dir() / "latency-lut"
        self.context = {"format": LUT_FORMAT, "threads": self.threads, **_versions()}
        self.memory: dict[LayerSpec, float] = {}
        self.stats = {"entries": 0, "disk_hits": 0, "measured": 0, "rebuilt": 0, "build_seconds": 0.0}

    def _path(self, spec: LayerSpec) -> Path:
        return self.folder / f"{_digest({**self.context, **asdict(spec)})[:32]}.json"

    def _read(self, spec: LayerSpec) -> Optional[float]:
        path = self._path(spec)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            body = {k: v for k, v in entry.items() if k != "sha256"}
            if entry.get("sha256") == _digest(body) and body["spec"] == asdict(spec) and body["context"] == self.context:
                return float(body["ms"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self.stats["rebuilt"] += 1  # present but tampered or truncated: measure it again
        return None

    def _write(self, spec: LayerSpec, ms: float) -> None:
        body = {"spec": asdict(spec), "context": self.context, "ms": ms}
        path = self._path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({**body, "sha256": _digest(body)}, sort_keys=True))
        os.replace(tmp, path)

    def lookup(self, specs: list[LayerSpec]) -> list[float]:
        """Latency (ms) of each spec; missing entries are measured together in one child process."""
        missing = []
        for spec in dict.fromkeys(specs):
            if spec in self.memory:
                continue
            ms = self._read(spec)
            if ms is None:
                missing.append(spec)
            else:
                self.memory[spec] = ms
                self.stats["disk_hits"] += 1
        if missing:
            t0 = time.perf_counter()
            for spec, ms in zip(missing, measure_specs(missing, self.threads, progress=self.progress)):
                self.memory[spec] = ms
                self._write(spec, ms)
            self.stats["measured"] += len(missing)
            self.stats["build_seconds"] = round(self.stats["build_seconds"] + time.perf_counter() - t0, 2)
        self.stats["entries"] = len(self.memory)
        return [self.memory[s] for s in specs]

    def model_ms(self, specs: list[LayerSpec]) -> float:
        """Sum of the layer latencies (ms): the uncalibrated prediction for a whole model."""
        return float(sum(self.lookup(specs)))


def measure_specs(specs: list[LayerSpec], threads: int, *, progress: bool = True,
                  cpu_limit_s: float = 3600) -> list[float]:
    """Measure `specs` in a child process (TensorFlow builds the templates there; at most `cpu_limit_s`
    CPU seconds). Returns ms per spec."""
    from toolkit.core.work_limit import run_limited

    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeshrink-lut-") as tmp:
        src, dst = Path(tmp) / "specs.json", Path(tmp) / "ms.json"
        src.write_text(json.dumps([asdict(s) for s in specs]))
        cmd = [sys.executable, "-m", "toolkit.bench.latency_lut", str(src), str(dst), "--threads", str(threads)]
        if not progress:
            cmd.append("--quiet")
        proc = run_limited(cmd, cpu_seconds=cpu_limit_s, what="the latency table measurement",
                           fix="measure fewer layer kinds", stdout=subprocess.DEVNULL,
                           stderr=None if progress else subprocess.PIPE, text=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0 or not dst.is_file():
            tail = ((proc.stderr or "").strip().splitlines() or ["see the output above"])[-1]
            raise EdgeShrinkError(f"latency table measurement failed: {tail}; check that tensorflow and ai-edge-litert import")
        return [float(v) for v in json.loads(dst.read_text())]


# ---- child process: templates, re-shaping, timing -------------------------------------------------
def _template(key: tuple) -> bytes:
    """A small one-layer TFLite file of this kind, converted by TensorFlow (8 channels, 8x8)."""
    import numpy as np
    import tensorflow as tf

    kind, k, stride, pad, act = key
    h = w = 8 if kind != "fc" else 1
    c = 8
    rng = np.random.default_rng(0)
    weights = tf.constant(rng.standard_normal((c, c) if kind == "fc" else (k, k, c, 1 if kind == "dwconv" else c)),
                          tf.float32)
    bias = tf.constant(rng.standard_normal(c), tf.float32)
    shape = (1, c) if kind == "fc" else (1, h, w, c)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="x")])
    def layer(x):
        if kind == "mean":
            return {"y": tf.reduce_mean(x, axis=[1, 2], keepdims=True)}
        if pad is not None:
            x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        padding = "VALID" if pad is not None else "SAME"
        if kind == "fc":
            return {"y": tf.nn.bias_add(tf.matmul(x, weights), bias)}
        elif kind == "dwconv":
            y = tf.nn.depthwise_conv2d(x, weights, [1, stride, stride, 1], padding)
        else:
            y = tf.nn.conv2d(x, weights, stride, padding)
        y = tf.nn.bias_add(y, bias)
        y = {"relu": tf.nn.relu, "relu6": tf.nn.relu6, "hardswish": lambda v: v * tf.nn.relu6(v + 3.0) * (1.0 / 6.0),
             "hardsigmoid": lambda v: tf.clip_by_value(v, 0.0, 1.0), "none": lambda v: v}[act](y)
        return {"y": y}

    return tf.lite.TFLiteConverter.from_concrete_functions([layer.get_concrete_function()]).convert()


def _reshaped(model_t, spec: LayerSpec, rng) -> bytes:
    """The template's flatbuffer with every tensor re-shaped for `spec`, constants re-filled."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils as fb

    sg = model_t.subgraphs[0]
    shapes = {sg.inputs[0]: [1, spec.cin] if spec.kind == "fc" else [1, spec.h, spec.w, spec.cin]}
    ho, wo = spec.out_hw
    for op in sg.operators:
        name = fb.opcode_to_name(model_t, op.opcodeIndex)
        ins, out = list(op.inputs), op.outputs[0]
        x = shapes.get(ins[0])
        if name == "PAD":
            shapes[out] = [1, spec.h + 2 * spec.pad, spec.w + 2 * spec.pad, spec.cin]
        elif name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            c = spec.cout
            weight = {"CONV_2D": [c, spec.k, spec.k, spec.cin], "DEPTHWISE_CONV_2D": [1, spec.k, spec.k, c],
                      "FULLY_CONNECTED": [c, spec.cin]}[name]
            shapes[ins[1]] = weight
            if len(ins) > 2 and ins[2] >= 0:
                shapes[ins[2]] = [c]
            shapes[out] = [1, c] if name == "FULLY_CONNECTED" else [1, ho, wo, c]
        elif name == "MEAN":
            shapes[out] = [1, 1, 1, spec.cin]
        else:  # elementwise: the shape of its (largest) activation input
            shapes[out] = max((shapes[i] for i in ins if i in shapes), key=len, default=x)
    for index, shape in shapes.items():
        tensor = sg.tensors[index]
        tensor.shape, tensor.shapeSignature = np.asarray(shape, np.int32), None
        buffer = model_t.buffers[tensor.buffer]
        if buffer.data is not None and len(buffer.data):
            data = rng.standard_normal(int(np.prod(shape))).astype(np.float32) * 0.1
            buffer.data = np.frombuffer(data.tobytes(), np.uint8)
    return bytes(fb.convert_object_to_bytearray(model_t))


def _time_file(content: bytes, threads: int, min_runs: int = 30, min_seconds: float = 0.02) -> float:
    """p50 ms of one invoke of a TFLite file on LiteRT (XNNPACK is its default for FP32)."""
    import numpy as np

    from toolkit.runtime.timing import time_calls

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter  # type: ignore
    interp = Interpreter(model_content=content, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(0).standard_normal(inp["shape"]).astype(np.float32))
    return time_calls(interp.invoke, warmup=5, min_runs=min_runs, min_seconds=min_seconds)["latency_ms"]["p50"]


def _measure_all(specs: list[LayerSpec], threads: int, progress: bool, passes: int = 2) -> list[float]:
    """ms per spec: the lowest p50 of `passes` interleaved passes over all specs, so a burst of load
    from another process spoils one pass of an entry, not the entry."""
    import copy

    import absl.logging
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils as fb
    from tqdm import tqdm

    absl.logging.set_verbosity(absl.logging.ERROR)  # the converter's deprecation notice, once per template
    templates: dict[tuple, object] = {}
    out = [float("inf")] * len(specs)
    bar = tqdm(total=len(specs) * passes, desc=f"latency table ({threads} threads)", disable=not progress, leave=False)
    for _ in range(passes):
        rng = np.random.default_rng(0)
        for i, spec in enumerate(specs):
            if spec.template_key not in templates:
                templates[spec.template_key] = fb.convert_bytearray_to_object(bytearray(_template(spec.template_key)))
            content = _reshaped(copy.deepcopy(templates[spec.template_key]), spec, rng)
            out[i] = min(out[i], _time_file(content, threads))
            bar.update(1)
    bar.close()
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="measure latency-table entries (child process of LatencyTable)")
    p.add_argument("specs")
    p.add_argument("out")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    specs = [LayerSpec(**d) for d in json.loads(Path(args.specs).read_text())]
    Path(args.out).write_text(json.dumps(_measure_all(specs, args.threads, not args.quiet)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
