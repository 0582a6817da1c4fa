"""The two TFLite converters, and the fallback from one to the other.

- onnx2tf: torch -> ONNX -> TFLite, in the main venv (background child process, see
  toolkit.convert.background). The default: in `python -m toolkit.studies.cross_check` (README) its INT8
  files agree better with torch on most models, and it needs no second venv.
- litert-torch: torch -> LiteRT directly (no layout guessing), INT8 by ai-edge-quantizer, in its
  own venv (`make setup-litert`; toolkit.convert.checkpoint_to_litert).

A profile chooses with `conversion: {tflite: onnx2tf | litert-torch, fallback: true}` (a card or a
run may override it: `tflite_converter`). When the chosen converter fails, or its FP32 file fails
parity, the runner converts with the other one and the manifest says so (`tflite_converters`).
Each function returns the files it made with their records (`Made`, `Outcome`); the runner keeps them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError
from toolkit.pipeline.edge_steps import Made, Outcome

CONVERTERS = ("onnx2tf", "litert-torch")


def other_converter(name: str) -> str:
    return CONVERTERS[1 - CONVERTERS.index(name)]


def start_onnx2tf(runner, family, *, int8: bool):
    """Start onnx2tf on the family's ONNX file in a background child process; returns the job (the
    runner owns it: it kills it on any error)."""
    from toolkit.convert.background import BackgroundConversion
    from toolkit.convert.onnx_rewrite import rewrites_for

    spec, q = runner.plan.input, runner.target.quantization
    return BackgroundConversion(family.onnx, runner.work / f".tflite-{family.stage}", calib01=runner.calib01,
                                mean=tuple(spec.mean), std=tuple(spec.std), int8=int8, io_dtype=q.io_dtype,
                                cache=runner.plan.cache, rewrite_ops=rewrites_for(runner.target.runtime.delegate))


def onnx2tf_files(runner, family, *, int8: bool, job=None) -> Made:
    """{"tflite-fp32": path[, "tflite-int8": path]} from onnx2tf (the job started at export, or a new
    one killed here if anything fails), with the onnx2tf options used."""
    own = job is None
    job = start_onnx2tf(runner, family, int8=int8) if own else job
    try:
        with runner.clock("wait for tflite"):
            out, seconds = job.result()
    finally:
        if own:
            job.kill()
    runner.clock.add(f"convert tflite ({family.stage}, onnx2tf)", seconds)
    files = _place(runner, family, fp32=out.float32, int8=out.int8)
    out.float32.parent.rmdir()
    return Made(files, records={"onnx2tf_options": list(out.onnx2tf_options), "onnx_rewrites": list(out.rewrites)},
                converter="onnx2tf")


def _place(runner, family, *, fp32: Path, int8) -> dict:
    """Move a converter's files to the bundle names, whichever converter made them."""
    files = {"tflite-fp32": fp32.rename(runner.work / f"{runner.name}_{family.stage}_fp32.tflite")}
    if int8:
        files["tflite-int8"] = int8.rename(runner.work / f"{runner.name}_{family.stage}_int8.tflite")
    return files


def litert_convert(runner, checkpoint: Path, out_dir: Path, *, stem: str, int8: bool):
    """checkpoint_to_litert as a run converts: the run's calibration images, normalisation, threads
    and the delegate rewrites of XNNPACK targets. INT8 is refused for profiles whose model
    inputs/outputs are not int8 (what litert-torch writes here)."""
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert

    if int8 and runner.target.quantization.io_dtype != "int8":
        raise EdgeShrinkError(f"litert-torch here writes int8 model inputs/outputs, the profile asks for "
                              f"{runner.target.quantization.io_dtype}; use onnx2tf for this target")
    spec = runner.plan.input
    return checkpoint_to_litert(checkpoint, runner.shape, out_dir, runner.calib01 if int8 else None,
                                mean=tuple(spec.mean), std=tuple(spec.std), stem=stem, threads=runner.threads,
                                delegate_rewrites=runner.target.runtime.delegate == "xnnpack")


def litert_files(runner, family, *, int8: bool, job=None) -> Made:
    """The same files from litert-torch, converted from the family's portable checkpoint."""
    out_dir = runner.work / f".litert-{family.stage}"
    started = time.perf_counter()
    with runner.clock("convert tflite (litert-torch)"):
        out = litert_convert(runner, runner.work / f"{runner.name}_{family.stage}.pt", out_dir,
                             stem=f"{runner.name}_{family.stage}", int8=int8)
    files = _place(runner, family, fp32=out.float32, int8=out.int8)
    record = {**{k: v for k, v in out.record.items() if k not in ("float32", "int8")},
              "seconds": round(time.perf_counter() - started, 2)}
    shutil.rmtree(out_dir, ignore_errors=True)
    return Made(files, records={"litert_torch": record}, converter="litert-torch")


def convert_tflite(runner, family, *, converter: str, int8: bool, job=None) -> Made:
    """The family's TFLite files from `converter` (a job started at export is onnx2tf's), the INT8
    file's too-fine ADD inputs requantized for an XNNPACK target."""
    if converter == "onnx2tf":
        made = onnx2tf_files(runner, family, int8=int8, job=job)
    else:
        if job is not None:
            job.kill()
        made = litert_files(runner, family, int8=int8)
    return _adds_requantized(runner, family, made)


def _adds_requantized(runner, family, made: Made) -> Made:
    """XNNPACK refuses an INT8 ADD/SUB whose input is quantized over 1024x finer than its output, and
    a MUL whose input scales' product is 65536x finer; such inputs are requantized when that makes
    fewer partitions (toolkit.convert.int8_add_scales)."""
    from toolkit.convert.int8_add_scales import requantize_add_inputs

    q8 = made.files.get("tflite-int8")
    if q8 is None or runner.target.runtime.delegate != "xnnpack":
        return made
    change = requantize_add_inputs(q8)
    if change is None:  # None drops a record an earlier file of the family left
        return Made(made.files, records={**made.records, "int8_requantized": None}, converter=made.converter)
    _say(runner, family, f"{made.converter}'s INT8 file: {change['requantized']} ADD/MUL input(s) requantized for XNNPACK, "
         f"{change['partitions_before']} -> {change['partitions_after']} partitions")
    return Made(made.files, records={**made.records, "int8_requantized": {**change, "converter": made.converter}},
                converter=made.converter)


def tflite_with_fallback(runner, family, *, int8: bool, job=None) -> Made:
    """The family's TFLite files from the chosen converter, or from the other one when it fails
    (and the profile allows a fallback), with the record of which converter made them and why."""
    conversion = runner.target.conversion
    primary = conversion.tflite
    try:
        made = convert_tflite(runner, family, converter=primary, int8=int8, job=job)
        return _with_choice(runner, family, made, choice(primary=primary, used=primary))
    except EdgeShrinkError as exc:
        if not conversion.fallback:
            raise
        reason = f"{primary} failed: {exc}"
    fallback = other_converter(primary)
    try:
        made = convert_tflite(runner, family, converter=fallback, int8=int8)
    except EdgeShrinkError as exc:
        raise EdgeShrinkError(f"both TFLite converters failed for the {family.stage} model: {reason}; "
                              f"{fallback} failed: {exc}") from None
    return _with_choice(runner, family, made, choice(primary=primary, used=fallback, reason=reason))


def choice(*, primary: str, used: str, reason: str = "") -> dict:
    """The manifest's `tflite_converters` record of one family."""
    return {"primary": primary, "used": used, **({"fallback_reason": reason[:400]} if reason else {})}


def _with_choice(runner, family, made: Made, record: dict) -> Made:
    if record.get("fallback_reason") and runner.plan.progress:
        print(f"[edgeshrink] {family.stage}: {record['fallback_reason'][:200]}; converting with {record['used']} instead",
              flush=True)
    return Made(made.files, records={**made.records, "tflite_converters": record}, converter=made.converter)


def retry_after_parity_failure(runner, family, made: dict, *, failed) -> Outcome:
    """After the chosen converter's FP32 file failed parity: convert with the other converter
    (once). Returns the new files (replacing the family's TFLite files) or, when not allowed or
    when it fails too, no files and the reason (the parity gate then reports the first file)."""
    used = family.made_by.get("tflite-fp32", runner.target.conversion.tflite)
    before = runner.records.of_family("tflite_converters", family.stage) or {}
    if not runner.target.conversion.fallback or before.get("fallback_reason"):
        return Outcome()
    reason = (f"{used}'s FP32 file failed parity (relative error {failed.parity['max_rel_error']:.2e} of the "
              "output scale vs torch)")
    fallback = other_converter(used)
    aside = {key: made[key].rename(made[key].with_name(f".{used}-{made[key].name}")) for key in ("tflite-fp32", "tflite-int8")
             if key in made}
    try:
        new = convert_tflite(runner, family, converter=fallback, int8="tflite-int8" in aside)
    except EdgeShrinkError as exc:  # keep the failing files: the parity gate reports them as before
        for key, path in aside.items():
            path.rename(made[key])
        failed_too = f"{reason}; {fallback} failed too: {exc}"[:400]
        return Outcome(records={"tflite_converters": {**before, "fallback_failed": failed_too}})
    for path in aside.values():
        path.unlink(missing_ok=True)
    new = _with_choice(runner, family, new, choice(primary=used, used=fallback, reason=reason))
    return Outcome(records=new.records, files=new.files, converter=new.converter)


def int8_after_failed_check(runner, family, made: dict, *, error: EdgeShrinkError, check) -> Outcome:
    """The chosen converter's INT8 file failed its check (float ops left, a Flex op): the other
    converter's INT8 file, checked with `check(path)` (once, when the profile allows a fallback; its
    FP32 twin is dropped: the family keeps the FP32 file it has). When that fails too, or is not
    allowed, the family has no INT8 file and the record says why (`int8_dropped`): the run goes on
    with its float files instead of ending without a bundle."""
    key = "tflite-int8"
    used = family.made_by.get(key, runner.target.conversion.tflite)
    before = runner.records.of_family("tflite_converters", family.stage) or {}
    reason = f"{used}'s INT8 file failed its check: {error}"
    made.pop(key).unlink(missing_ok=True)
    if runner.target.conversion.fallback:
        fallback, path = other_converter(used), None
        try:
            path, requantized = _other_int8(runner, family, made, converter=fallback)
            check(path)
        except EdgeShrinkError as exc:
            reason = f"{reason}; {fallback}'s INT8 file: {exc}"
            if path is not None:
                path.unlink(missing_ok=True)
        else:
            _say(runner, family, f"{reason[:200]}; the INT8 file is {fallback}'s")
            record = {**before, "int8": choice(primary=used, used=fallback, reason=reason)}
            return Outcome(records={"tflite_converters": record, **requantized}, files={key: path}, converter=fallback,
                           checked=True)
    _say(runner, family, f"no INT8 file: {reason[:300]}")
    return Outcome(records={"tflite_converters": {**before, "int8_dropped": reason[:600]}})


def int8_with_fewer_partitions(runner, family, made: dict, *, partitions: int, check, verify, acceptable) -> Outcome:
    """A verified INT8 file that XNNPACK runs in `partitions` > 1 partitions (each split is a
    hand-off between the delegate and the interpreter): the other converter's INT8 file is made,
    checked (`check(path)`) and counted; when XNNPACK runs it in fewer partitions it is verified
    (`verify(path)` -> outputs, metrics, parity) and kept if `acceptable(metrics)` (the gate). Else
    the first file stays, with the reason recorded. Only for XNNPACK targets whose profile allows
    a fallback: each converter's forms suit other models (e.g. timm's LCNet, RepViT: litert-torch;
    GhostNetV2, MobileViTv2: onnx2tf)."""
    key = "tflite-int8"
    if runner.target.runtime.delegate != "xnnpack" or not runner.target.conversion.fallback or partitions <= 1:
        return Outcome()
    used = family.made_by.get(key, runner.target.conversion.tflite)
    before = runner.records.of_family("tflite_converters", family.stage) or {}
    if before.get("int8"):  # this INT8 file already is the other converter's
        return Outcome()
    other = other_converter(used)
    _say(runner, family, f"{used}'s INT8 file runs in {partitions} XNNPACK partitions; trying {other}'s")
    current = made[key]
    aside = current.rename(current.with_name(f".{used}-{current.name}"))
    compared = f"{used}'s INT8 file runs in {partitions} XNNPACK partitions"
    path, verified, requantized = None, None, {}
    try:
        path, requantized = _other_int8(runner, family, made, converter=other)
        check(path)
        count = runner.delegate_report(path).get("partitions", 0)
        compared += f", {other}'s in {count}"
        if 0 < count < partitions:
            verified = verify(path)
            if not acceptable(verified[1]):
                compared += f", but its metric does not pass the gate ({_metric_text(runner, verified[1])})"
                verified = None
    except EdgeShrinkError as exc:
        compared += f"; {other}'s: {exc}"
    if verified is None:
        if path is not None:
            path.unlink(missing_ok=True)
        aside.rename(current)
        return Outcome(records={"tflite_converters": {**before, "int8_partitions": {"kept": used, "compared": compared[:400]}}})
    aside.unlink()
    _say(runner, family, f"{compared}: the INT8 file is {other}'s")
    record = {**before, "int8": choice(primary=used, used=other, reason=compared)}
    return Outcome(records={"tflite_converters": record, **requantized}, files={key: path}, converter=other,
                   checked=True, verified=verified)


def _metric_text(runner, metrics: dict) -> str:
    metric = runner.task.primary_metric
    value = metrics.get(metric)
    return f"{metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {metric}"


def _other_int8(runner, family, made: dict, *, converter: str) -> tuple[Path, dict]:
    """`converter`'s INT8 file for the family and its `int8_requantized` record (None: the section is
    dropped); its FP32 twin is dropped and the family's FP32 file kept."""
    fp32 = made["tflite-fp32"]
    aside = fp32.rename(fp32.with_name(f".kept-{fp32.name}"))
    try:
        new = convert_tflite(runner, family, converter=converter, int8=True)
        new.files.pop("tflite-fp32").unlink(missing_ok=True)
        return new.files["tflite-int8"], {"int8_requantized": new.records.get("int8_requantized")}
    finally:
        aside.rename(fp32)


def _say(runner, family, text: str) -> None:
    if runner.plan.progress:
        print(f"[edgeshrink] {family.stage}: {text}", flush=True)
