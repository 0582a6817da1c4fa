"""The two TFLite converters, and the fallback from one to the other.

- onnx2tf: torch -> ONNX -> TFLite, in the main venv (background child process, see
  toolkit.convert.background). The default: in `python -m toolkit.studies.cross_check` (README) its INT8
  files agree better with torch on most models, and it needs no second venv.
- litert-torch: torch -> LiteRT directly (no layout guessing), INT8 by ai-edge-quantizer, in its
  own venv (`make setup-litert`; toolkit.convert.checkpoint_to_litert).

A profile chooses with `conversion: {tflite: onnx2tf | litert-torch, fallback: true}` (a card or a
run may override it: `tflite_converter`). When the chosen converter fails, or its FP32 file fails
parity, the runner converts with the other one and the manifest says so (`tflite_converters`)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

CONVERTERS = ("onnx2tf", "litert-torch")


def other_converter(name: str) -> str:
    return CONVERTERS[1 - CONVERTERS.index(name)]


def start_onnx2tf(runner, family, *, int8: bool):
    """Start onnx2tf on the family's ONNX file in a background child process; returns the job."""
    from toolkit.convert.background import BackgroundConversion

    spec, q = runner.plan.input, runner.target.quantization
    job = BackgroundConversion(family.onnx, runner.work / f".tflite-{family.stage}", calib01=runner.calib01,
                               mean=tuple(spec.mean), std=tuple(spec.std), int8=int8, io_dtype=q.io_dtype,
                               cache=runner.plan.cache)
    runner.jobs.append(job)
    return job


def onnx2tf_files(runner, family, *, int8: bool) -> dict:
    """{"tflite-fp32": path[, "tflite-int8": path]} from onnx2tf (the job started at export, or a new one)."""
    job = family.jobs.pop("onnx2tf", None) or start_onnx2tf(runner, family, int8=int8)
    with runner.clock("wait for tflite"):
        out, seconds = job.result()
    runner.clock.add(f"convert tflite ({family.stage}, onnx2tf)", seconds)
    runner.extra.setdefault("onnx2tf_options", {})[family.stage] = list(getattr(out, "onnx2tf_options", ()) or ())
    files = _place(runner, family, fp32=out.float32, int8=out.int8)
    out.float32.parent.rmdir()
    return files


def _place(runner, family, *, fp32: Path, int8) -> dict:
    """Move a converter's files to the bundle names, whichever converter made them."""
    files = {"tflite-fp32": fp32.rename(runner.work / f"{runner.name}_{family.stage}_fp32.tflite")}
    if int8:
        files["tflite-int8"] = int8.rename(runner.work / f"{runner.name}_{family.stage}_int8.tflite")
    return files


def litert_files(runner, family, *, int8: bool) -> dict:
    """The same files from litert-torch, converted from the family's portable checkpoint."""
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert

    if int8 and runner.target.quantization.io_dtype != "int8":
        raise EdgeShrinkError(f"litert-torch here writes int8 model inputs/outputs, the profile asks for "
                              f"{runner.target.quantization.io_dtype}; use onnx2tf for this target")
    spec, out_dir = runner.plan.input, runner.work / f".litert-{family.stage}"
    started = time.perf_counter()
    with runner.clock("convert tflite (litert-torch)"):
        out = checkpoint_to_litert(runner.work / f"{runner.name}_{family.stage}.pt", runner.shape, out_dir,
                                   runner.calib01 if int8 else None, mean=tuple(spec.mean), std=tuple(spec.std),
                                   stem=f"{runner.name}_{family.stage}", threads=runner.threads)
    files = _place(runner, family, fp32=out.float32, int8=out.int8)
    runner.extra.setdefault("litert_torch", {})[family.stage] = {
        **{k: v for k, v in out.record.items() if k not in ("float32", "int8")},
        "seconds": round(time.perf_counter() - started, 2)}
    shutil.rmtree(out_dir, ignore_errors=True)
    return files


def convert_tflite(runner, family, *, converter: str, int8: bool) -> dict:
    if converter == "onnx2tf":
        return onnx2tf_files(runner, family, int8=int8)
    return litert_files(runner, family, int8=int8)


def tflite_with_fallback(runner, family, *, int8: bool) -> dict:
    """The family's TFLite files from the chosen converter, or from the other one when it fails
    (and the profile allows a fallback). Records which converter made them and why."""
    conversion = runner.target.conversion
    primary = conversion.tflite
    try:
        files = convert_tflite(runner, family, converter=primary, int8=int8)
        record_choice(runner, family, primary=primary, used=primary)
        return files
    except EdgeShrinkError as exc:
        if not conversion.fallback:
            raise
        reason = f"{primary} failed: {exc}"
    fallback = other_converter(primary)
    try:
        files = convert_tflite(runner, family, converter=fallback, int8=int8)
    except EdgeShrinkError as exc:
        raise EdgeShrinkError(f"both TFLite converters failed for the {family.stage} model: {reason}; "
                              f"{fallback} failed: {exc}") from None
    record_choice(runner, family, primary=primary, used=fallback, reason=reason)
    return files


def record_choice(runner, family, *, primary: str, used: str, reason: str = "") -> None:
    family.tflite_converter = used
    runner.extra.setdefault("tflite_converters", {})[family.stage] = {
        "primary": primary, "used": used, **({"fallback_reason": reason[:400]} if reason else {})}
    if reason and runner.plan.progress:
        print(f"[edgeshrink] {family.stage}: {reason[:200]}; converting with {used} instead", flush=True)


def retry_after_parity_failure(runner, family, made: dict, *, failed) -> bool:
    """After the chosen converter's FP32 file failed parity: convert with the other converter
    (once), replacing the family's TFLite files in `made`. Returns False when not allowed."""
    used = getattr(family, "tflite_converter", runner.target.conversion.tflite)
    if not runner.target.conversion.fallback or runner.extra.get("tflite_converters", {}).get(family.stage, {}).get("fallback_reason"):
        return False
    reason = (f"{used}'s FP32 file failed parity (relative error {failed.parity['max_rel_error']:.2e} of the "
              "output scale vs torch)")
    fallback = other_converter(used)
    aside = {key: made[key].rename(made[key].with_name(f".{used}-{made[key].name}")) for key in ("tflite-fp32", "tflite-int8")
             if key in made}
    try:
        files = convert_tflite(runner, family, converter=fallback, int8="tflite-int8" in _wanted(runner, family))
    except EdgeShrinkError as exc:  # keep the failing files: the parity gate reports them as before
        for key, path in aside.items():
            made[key] = path.rename(made[key])
        runner.extra.setdefault("tflite_converters", {}).setdefault(family.stage, {})["fallback_failed"] = \
            f"{reason}; {fallback} failed too: {exc}"[:400]
        return False
    for path in aside.values():
        path.unlink(missing_ok=True)
    made.update(files)
    record_choice(runner, family, primary=used, used=fallback, reason=reason)
    return True


def _wanted(runner, family) -> set:
    from toolkit.pipeline.edges import edges_for

    return {e.key for e in edges_for(runner.target, family.stage)}
