"""ai-edge-quantizer as a child process, run by the quantizer venv's Python (`make setup-quant`):

    .venv-quant/bin/python -m toolkit.quantize.aeq_child --spec spec.json

Two jobs, named by the spec's "command":
- "quantize": static INT8 (int8 weights per channel, int8 activations) of a float .tflite file,
  calibrated on real inputs, with chosen layers protected: {"protect": {tensor: "int16" | "float"}}
  gives those ops 16-bit activations (int8 weights) or keeps them in float. The file's input and
  output get the profile's integer type when the quantizer left them float.
- "sensitivity": per layer, the signal-to-noise ratio of the quantized file's output tensor against
  the float file's, over sample inputs, and how much SNR each op loses against its inputs.

Layers are named by their output tensor (the names ai-edge-quantizer's recipes match). Only numpy,
ai_edge_quantizer, ai_edge_litert and the torch-free toolkit.convert.torch_to_litert helpers are imported. Errors: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

class ChildError(Exception):
    pass


def _interpreter(path: Path, *, preserve: bool = False, threads: int = 1):
    """An interpreter; with `preserve`, without delegates (a delegate keeps its intermediate tensors
    to itself) and keeping every intermediate tensor readable."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if preserve else OpResolverType.AUTO
    interp = Interpreter(model_path=str(path), num_threads=threads, experimental_preserve_all_tensors=preserve,
                         experimental_op_resolver_type=resolver)
    interp.allocate_tensors()
    return interp


def _signature(path: Path) -> tuple[str, str]:
    sig = _interpreter(path).get_signature_list()
    key = next(iter(sig))
    return key, sig[key]["inputs"][0]


# ---- quantize ------------------------------------------------------------------------------
def _inline_buffers(path: Path) -> None:
    from toolkit.convert.torch_to_litert import _inline_buffers as inline

    inline(path)


def quantize(spec: dict) -> dict:
    """Write spec["out"]: the float file quantized with the spec's protections; returns the record."""
    import numpy as np
    from ai_edge_quantizer import algorithm_manager, quantizer, recipe

    source, out = Path(spec["float"]), Path(spec["out"])
    q = quantizer.Quantizer(str(source), recipe.static_wi8_ai8())
    for tensor, how in sorted(spec.get("protect", {}).items()):
        regex = "^" + re.escape(tensor) + ";"  # an op's scope: its output tensor names, each followed by ";"
        if how == "int16":
            q.add_static_config(regex=regex, operation_name="*", activation_num_bits=16, weight_num_bits=8)
        elif how == "float":
            q.update_quantization_recipe(regex=regex, operation_name="*",
                                         algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        else:
            raise ChildError(f"unknown protection {how!r} for {tensor} (int16 or float)")
    x = np.load(spec["calibration"]).astype(np.float32)
    key, name = _signature(source)
    start = time.perf_counter()
    calibrated = q.calibrate({key: [{name: x[i:i + 1]} for i in range(len(x))]}, num_threads=int(spec.get("threads", 1)))
    staged = out.with_name(out.name + ".float-io")
    q.quantize(calibrated, enable_progress_report=False).export_model(str(staged), overwrite=True)
    _inline_buffers(staged)  # the same ai-edge-quantizer output fix as the litert-torch path
    _integer_interface(staged, out, spec.get("io_dtype", "int8"))
    return {"seconds": round(time.perf_counter() - start, 2), "calibration_images": int(len(x)),
            "protect": spec.get("protect", {}), "versions": _versions()}


def _integer_interface(source: Path, dest: Path, io_dtype: str) -> None:
    """`dest`: `source` with `io_dtype` input/output (moved as it is when it already has them)."""
    from toolkit.convert.torch_to_litert import _integer_interface as to_integer_io

    details = _interpreter(source)
    types = {d["dtype"].__name__ for d in details.get_input_details() + details.get_output_details()}
    if types == {io_dtype}:
        source.replace(dest)
        return
    to_integer_io(source, dest, io_dtype)
    source.unlink()


# ---- sensitivity ---------------------------------------------------------------------------
def _as_input(interp, x):
    import numpy as np

    d = interp.get_input_details()[0]
    if d["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero = d["quantization"]
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])


def _dequantized(interp, index: int):
    import numpy as np

    detail = interp._get_tensor_details(index, 0)  # noqa: SLF001 (the public list is slow per call)
    value = interp.get_tensor(index)
    if value.dtype == np.float32:
        return value
    params = detail["quantization_parameters"]
    scales, zeros = params["scales"], params["zero_points"]
    if len(scales) != 1:
        return None  # per-channel activations do not occur in static files; skip rather than guess
    return (value.astype(np.float64) - zeros[0]) * scales[0]


def _op_graph(interp) -> tuple[list[dict], dict]:
    """Ops (type, input and output tensor indices) and {tensor index: name}."""
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    return interp._get_ops_details(), names  # noqa: SLF001


def sensitivity(spec: dict) -> dict:
    """Per op of the quantized file: SNR (dB) of its output against the float file's same-named
    tensor, the lowest SNR of its activation inputs, and the loss between them."""
    import numpy as np

    fp = _interpreter(Path(spec["float"]), preserve=True)
    qt = _interpreter(Path(spec["quant"]), preserve=True)
    f_ops, f_names = _op_graph(fp)
    q_ops, q_names = _op_graph(qt)
    float_index = {name: i for i, name in f_names.items()}
    produced = {o: op["index"] for op in f_ops for o in op["outputs"]}
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    x = np.load(spec["samples"]).astype(np.float32)
    for i in range(len(x)):
        sample = x[i:i + 1]
        fp.set_tensor(fp.get_input_details()[0]["index"], sample)
        fp.invoke()
        qt.set_tensor(qt.get_input_details()[0]["index"], _as_input(qt, sample))
        qt.invoke()
        for index, name in q_names.items():
            if name not in float_index:
                continue
            try:
                ref = fp.get_tensor(float_index[name])
                got = _dequantized(qt, index)
            except ValueError:  # constants folded away or tensors without data
                continue
            if got is None or ref.dtype != np.float32 or ref.shape != got.shape:
                continue
            signal[name] = signal.get(name, 0.0) + float(np.sum(np.square(ref, dtype=np.float64)))
            noise[name] = noise.get(name, 0.0) + float(np.sum(np.square(ref - got)))
    snr = {n: _db(signal[n], noise[n]) for n in signal}
    model_outputs = {f_names[d["index"]] for d in fp.get_output_details()}
    rows = []
    for op in f_ops:
        outputs = [f_names[o] for o in op["outputs"] if f_names.get(o) in snr]
        if not outputs:
            continue
        inputs = [f_names[i] for i in op["inputs"] if i in produced or i in {d["index"] for d in fp.get_input_details()}]
        in_snr = [snr[n] for n in inputs if n in snr]
        worst_in = min(in_snr) if in_snr else None
        out_snr = snr[outputs[0]]
        rows.append({"name": outputs[0], "op": op["op_name"], "snr_db": round(out_snr, 2),
                     "input_snr_db": None if worst_in is None else round(worst_in, 2),
                     "loss_db": round(max(0.0, (worst_in if worst_in is not None else 100.0) - out_snr), 2),
                     "inputs": [n for n in inputs if n in snr], "model_output": outputs[0] in model_outputs})
    return {"samples": int(len(x)), "layers": rows, "versions": _versions()}


def _db(signal: float, noise: float) -> float:
    import math

    if noise <= 0.0:
        return 100.0
    return max(-100.0, min(100.0, 10.0 * math.log10(max(signal, 1e-30) / noise)))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("ai-edge-quantizer", "ai-edge-litert", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


COMMANDS = {"quantize": quantize, "sensitivity": sensitivity}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolkit.quantize.aeq_child", description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, required=True, help="JSON: command and its paths")
    p.add_argument("--record", type=Path, required=True, help="where to write the JSON result")
    args = p.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    from toolkit.core.errors import EdgeShrinkError

    try:
        job = COMMANDS.get(spec.get("command"))
        if job is None:
            raise ChildError(f"unknown command {spec.get('command')!r} ({', '.join(COMMANDS)})")
        record = job(spec)
    except (ChildError, EdgeShrinkError, ValueError, RuntimeError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    args.record.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
