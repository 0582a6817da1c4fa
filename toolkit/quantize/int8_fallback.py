"""INT8 accuracy fallback: when a full-integer TFLite file misses the deploy gate, re-quantize its
float twin with ai-edge-quantizer, protecting the most sensitive layers step by step:

1. better calibration: four times the profile's calibration images (min-max ranges);
2. 16-bit activations (int8 weights) for the k layers that lose the most signal-to-noise ratio
   (k = 1, 2, 4, ...), each layer with the layers that feed it (an op's inputs are quantized by
   their producers); skipped after the first file when the target's runtime cannot run int16
   activations (LiteRT < 2.3 has no int8<->int16 QUANTIZE, e.g. ai-edge-litert 2.1.0, which
   onnx2tf 1.29 pins in the main venv);
3. the same layers kept in float (where the profile allows float layers).

Sensitivity: each layer's output tensor in the INT8 file against the same tensor in the float file
(SNR in dB over calibration images); a layer's loss is its inputs' SNR minus its output's. After
every step the file is verified in the target's runtime (primary metric against the dense FP32
file) and its delegate partitions counted again: 16-bit or float layers can leave XNNPACK. The
first step that passes the gate replaces the INT8 file; the manifest (`int8_fallback`) and the
report say what was protected. ai-edge-quantizer runs in its own small venv (`make setup-quant`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import child_pythonpath, side_venv_python
from toolkit.core.work_limit import run_limited

SETUP = "make setup-quant"
RUNTIME_REFUSED = "the target runtime cannot run it"  # the start of a Trial's reason when the runtime cannot load a file
SKIP_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE", "RESHAPE", "PAD", "SQUEEZE"}  # move values, add no error


def quant_python() -> Path:
    """The quantizer venv's Python ($EDGESHRINK_QUANT_VENV, else <repo>/.venv-quant); refuses with
    the install command when it is missing."""
    return side_venv_python(env="EDGESHRINK_QUANT_VENV", default=".venv-quant", setup=SETUP, what="ai-edge-quantizer")


def _child(spec: dict, *, cpu_limit_s: float = 3600) -> dict:
    """Run toolkit.quantize.aeq_child with `spec` (at most `cpu_limit_s` CPU seconds); its JSON record,
    or a one-line error."""
    python = quant_python()
    with tempfile.TemporaryDirectory(prefix="aeq-") as work:
        spec_path, record = Path(work) / "spec.json", Path(work) / "record.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(child_pythonpath()), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = run_limited([str(python), "-m", "toolkit.quantize.aeq_child", "--spec", str(spec_path), "--record",
                            str(record)], cpu_seconds=cpu_limit_s, what=f"ai-edge-quantizer ({spec['command']})",
                           fix="quantize a smaller model or set conversion.fallback: false", env=env, cwd=work,
                           capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            why = next((ln[len("error: "):] for ln in reversed(lines) if ln.startswith("error: ")),
                       lines[-1][:300] if lines else f"exit status {done.returncode}")
            raise EdgeShrinkError(f"ai-edge-quantizer could not {spec['command']}: {why[:200]}; it needs a float TFLite "
                                  f"file such as the run's *_fp32.tflite (given: {Path(spec['float']).name})")
        return json.loads(record.read_text())


def requantize(float_file: Path, out: Path, *, calibration: np.ndarray, protect: dict[str, str],
               io_dtype: str) -> dict:
    """`out`: `float_file` (normalised NHWC input) quantized to INT8 on `calibration` (normalised
    NHWC images), with `protect` = {layer output tensor: "int16" | "float"}."""
    if len(calibration) == 0:
        raise EdgeShrinkError("INT8 re-quantization needs calibration images and the set is empty")
    with tempfile.TemporaryDirectory(prefix="aeq-cal-") as tmp:
        calib = Path(tmp) / "calibration.npy"
        np.save(calib, np.ascontiguousarray(calibration, dtype=np.float32))
        return _child({"command": "quantize", "float": str(Path(float_file).resolve()), "out": str(Path(out).resolve()),
                       "calibration": str(calib), "protect": protect, "io_dtype": io_dtype})


def layer_sensitivity(float_file: Path, quant_file: Path, *, samples: np.ndarray) -> list[dict]:
    """Every layer of `quant_file`: {name, op, snr_db, input_snr_db, loss_db, inputs} (graph order)."""
    with tempfile.TemporaryDirectory(prefix="aeq-snr-") as tmp:
        path = Path(tmp) / "samples.npy"
        np.save(path, np.ascontiguousarray(samples, dtype=np.float32))
        record = _child({"command": "sensitivity", "float": str(Path(float_file).resolve()),
                         "quant": str(Path(quant_file).resolve()), "samples": str(path)})
    return record["layers"]


def rank_layers(layers: list[dict]) -> list[dict]:
    """Compute layers that lose SNR, most sensitive (largest loss, then lowest SNR) first. Layers
    that write the model's output are left out: protecting them would change the file's output
    type away from the profile's integer I/O."""
    ranked = [r for r in layers if r["op"] not in SKIP_OPS and r["loss_db"] > 0.0 and not r.get("model_output")]
    return sorted(ranked, key=lambda r: (-r["loss_db"], r["snr_db"]))


def protection_set(ranked: list[dict], k: int, layers: list[dict]) -> list[str]:
    """The k most sensitive layers and, for each, what makes its inputs: the ops that only move
    values (PAD, RESHAPE, ...) back to the first compute op. An op's input tensor is quantized
    where it is produced, so protecting the op alone would leave its inputs in 8 bits."""
    by_name = {r["name"]: r for r in layers}
    chosen: list[str] = []

    def add(name: str) -> None:
        if name in by_name and name not in chosen:
            chosen.append(name)
            if by_name[name]["op"] in SKIP_OPS:
                for upstream in by_name[name].get("inputs", []):
                    add(upstream)

    for r in ranked[:k]:
        add(r["name"])
        for name in r.get("inputs", []):
            add(name)
    return chosen


@dataclass(frozen=True)
class Trial:
    """What the runner says about one candidate file: gate result, metric, partitions."""

    passes: bool
    metric: Optional[float]
    partitions: Optional[int]
    why_not: tuple[str, ...] = ()
    undelegated_ops: Optional[dict] = None


def _counts(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit` (included); empty when there is nothing to protect."""
    if limit < 1:
        return []
    counts, k = [], 1
    while k < limit:
        counts.append(k)
        k *= 2
    return counts + [limit]


def protect_until_gate(*, float_file: Path, work: Path, calibration: np.ndarray, better_calibration: np.ndarray,
                       io_dtype: str, evaluate: Callable[[Path], Trial], allow_float: bool, max_layers: int,
                       progress: bool = True) -> dict:
    """The ladder (module docstring). Returns {steps, sensitivity, chosen, file}: `file` is the
    first file that passes (None when none does); every step's file is removed except that one."""
    steps: list[dict] = []
    work.mkdir(parents=True, exist_ok=True)

    def attempt(name: str, protect: dict, calib: np.ndarray) -> Optional[Path]:
        path = work / f"step{len(steps) + 1}.tflite"
        t0 = time.perf_counter()
        try:
            requantize(float_file, path, calibration=calib, protect=protect, io_dtype=io_dtype)
            trial = evaluate(path)
        except EdgeShrinkError as exc:
            trial = Trial(False, None, None, (str(exc),))
        steps.append({"step": name, "protect": protect, "calibration_images": int(len(calib)), "metric": trial.metric,
                      "partitions": trial.partitions, "undelegated_ops": trial.undelegated_ops, "passes": trial.passes,
                      "why_not": list(trial.why_not), "seconds": round(time.perf_counter() - t0, 2)})
        if progress:
            print(f"[edgeshrink] int8 fallback: {name}: {'passes' if trial.passes else '; '.join(trial.why_not)}", flush=True)
        if trial.passes:
            return path
        path.unlink(missing_ok=True)
        return None

    def runtime_refused() -> bool:
        return any(RUNTIME_REFUSED in why for why in steps[-1]["why_not"])

    found = attempt("better calibration", {}, better_calibration)
    if found:
        return {"steps": steps, "sensitivity": [], "chosen": steps[-1]["step"], "file": found}
    base = work / "sensitivity.tflite"
    requantize(float_file, base, calibration=better_calibration, protect={}, io_dtype=io_dtype)
    layers = layer_sensitivity(float_file, base, samples=calibration[:32])
    base.unlink()
    ranked = rank_layers(layers)
    modes = ["int16", "float"] if allow_float else ["int16"]
    for mode in modes:
        for k in _counts(min(max_layers, len(ranked))):
            protect = {name: mode for name in protection_set(ranked, k, layers)}
            found = attempt(f"{mode} for the {k} most sensitive layer(s)", protect, better_calibration)
            if found:
                return {"steps": steps, "sensitivity": ranked[:10], "chosen": steps[-1]["step"], "file": found}
            if runtime_refused():  # e.g. int16 activations on a LiteRT without int8<->int16 QUANTIZE: more layers will not help
                break
    return {"steps": steps, "sensitivity": ranked[:10], "chosen": None, "file": None}
