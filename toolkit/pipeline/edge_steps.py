"""What the keys of an edge row (toolkit.pipeline.edges) do, as tables: converters, checks,
after-steps and background jobs. Adding a format is a row there and its functions here.

- CONVERTERS[edge.converter](runner, family, edge=, made=, job=) -> Made: the files it made
  (edge key -> path) and their records (manifest section -> this family's record).
- CHECKS[edge.check](runner, path): refuses a structurally wrong file.
- AFTER[step](runner, family, edge=, made=) -> Outcome | None, for each step of edge.after in
  turn: runs once the kept file is verified; its files replace the edge's file (the other
  converter's, a fallback), its records go into the manifest.
- RECOVER[edge.recover](runner, family, edge=, made=, error=, check=) -> Outcome: after the file
  failed its check; may replace it with a checked file, or drop it.
- BACKGROUND[edge.job](runner, family, edges=) -> job | None: started at export in a worker.

The functions read the runner (plan, target, work folder, calibration data, artifacts so far);
they return what they made and never write the runner's state: the runner keeps it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Made:
    """What one converter call made: files by edge key, their records, and which converter made
    them when the edge names more than one (TFLite: onnx2tf or litert-torch)."""

    files: dict
    records: dict = field(default_factory=dict)
    converter: Optional[str] = None


@dataclass(frozen=True)
class Outcome:
    """What an after-step returns: records, and files replacing the edge's file (none: keep it).
    `checked`: the step checked its files itself (the edge's check does not apply to them);
    `verified`: it also verified the edge's file (runner.verify_file), which need not run again."""

    records: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    converter: Optional[str] = None
    checked: bool = False
    verified: Optional[tuple] = None  # the step verified its file too: (outputs, metrics, parity)


def exported_onnx(runner, family, *, edge, made: dict, job=None) -> Made:
    """The family's ONNX FP32 file, written at export (every other file comes from it)."""
    return Made({edge.key: family.onnx})


def qdq_int8(runner, family, *, edge, made: dict, job=None) -> Made:
    """INT8 ONNX (QDQ) from the FP32 ONNX file, calibrated on real training images."""
    from toolkit.quantize.onnx_to_qdq_int8 import onnx_to_qdq_int8

    q = runner.target.quantization
    with runner.clock("quantize onnx int8"):
        path = onnx_to_qdq_int8(made["onnx-fp32"], runner.work / f"{runner.name}_{family.stage}_int8.onnx",
                                runner.calib_nchw, per_channel=q.per_channel, method=q.method, scheme=q.onnx_scheme)
    return Made({edge.key: path}, records={"onnx_int8_same_on_every_cpu": cpu_independence(path, q.onnx_scheme)})


def tflite_files(runner, family, *, edge, made: dict, job=None) -> Made:
    """The family's TFLite files (FP32, and INT8 when the target asks) from the chosen converter,
    or the other one when it fails (toolkit.pipeline.tflite_converters)."""
    from toolkit.pipeline.edges import edges_for
    from toolkit.pipeline.tflite_converters import tflite_with_fallback

    wanted = {e.key for e in edges_for(runner.target, family.stage)}
    return tflite_with_fallback(runner, family, int8="tflite-int8" in wanted, job=job)


def full_integer(runner, path: Path) -> None:
    """An INT8 TFLite file must hold integer ops only (for XNNPACK, the float DIV/SQRT islands of
    the delegate-friendly normalisation and softmax forms excepted), with the profile's input/output
    type, and no Flex op; for an XNNPACK target it must load with XNNPACK."""
    from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS, require_full_integer

    xnnpack = runner.target.runtime.delegate == "xnnpack"
    require_full_integer(path, runner.target.quantization.io_dtype, float_ops=XNNPACK_FLOAT_ISLAND_OPS if xnnpack else ())
    _loads_in_target(runner, path)


def builtin_ops(runner, path: Path) -> None:
    """A TFLite file must hold no Flex (Select TensorFlow) op: no device runtime here loads one."""
    from toolkit.runtime.tflite_check import require_builtin_ops

    require_builtin_ops(path)
    _loads_in_target(runner, path)


def _loads_in_target(runner, path: Path) -> None:
    """For an XNNPACK target, the file must load with XNNPACK (it can fail to prepare ops it claimed)."""
    from toolkit.runtime.tflite_check import require_loads_with_xnnpack

    if runner.target.runtime.delegate == "xnnpack":
        require_loads_with_xnnpack(path)


def parity_retry(runner, family, *, edge, made: dict) -> Optional[Outcome]:
    """A TFLite FP32 file that failed parity is made again with the other converter (when allowed)."""
    from toolkit.pipeline.tflite_converters import retry_after_parity_failure

    failed = runner.artifact(f"{family.stage}-{edge.key}")
    if failed.parity.get("ok", True):
        return None
    return retry_after_parity_failure(runner, family, made, failed=failed)


def int8_fallback(runner, family, *, edge, made: dict) -> Optional[Outcome]:
    """An INT8 file too far below dense FP32: the protection ladder (toolkit.pipeline.optional_stages)."""
    from toolkit.pipeline.optional_stages import int8_fallback as ladder

    return ladder(runner, family, edge=edge, made=made)


def start_onnx2tf(runner, family, *, edges) -> object:
    """onnx2tf on the family's ONNX file in a worker process, when onnx2tf is the chosen converter
    (litert-torch converts when its files are needed); None otherwise."""
    if runner.target.conversion.tflite != "onnx2tf":
        return None
    from toolkit.pipeline.tflite_converters import start_onnx2tf as start

    return start(runner, family, int8=any(e.precision == "int8" for e in edges))


def cpu_independence(path: Path, scheme: str) -> dict:
    """Whether the INT8 ONNX file computes the same int32 sums with and without VNNI: no weight row
    can clamp onnxruntime's AVX2 u8s8 pair sums (checked on the file), and this host's ISA flags."""
    from toolkit.core.cpuinfo import cpu_isa_flags
    from toolkit.quantize.onnx_to_qdq_int8 import u8s8_saturation_rows

    rows = u8s8_saturation_rows(path)
    isa = cpu_isa_flags()
    return {"scheme": scheme, **rows, "same_on_every_cpu": rows["rows_can_saturate"] == 0,
            "host_vnni": isa.get("vnni"), "host_u8s8_may_saturate": isa.get("u8s8_may_saturate")}


def int8_other_converter(runner, family, *, edge, made: dict, error, check) -> Outcome:
    """An INT8 TFLite file that failed its check: the other converter's, or none with the reason
    (toolkit.pipeline.tflite_converters.int8_after_failed_check)."""
    from toolkit.pipeline.tflite_converters import int8_after_failed_check

    return int8_after_failed_check(runner, family, made, error=error, check=check)


def fewer_partitions(runner, family, *, edge, made: dict) -> Optional[Outcome]:
    """A verified INT8 TFLite file split into several XNNPACK partitions: the other converter's,
    when XNNPACK runs it in fewer and its metric passes the gate or is no worse
    (toolkit.pipeline.tflite_converters.int8_with_fewer_partitions)."""
    from toolkit.pipeline.optional_stages import gate_keeps
    from toolkit.pipeline.tflite_converters import int8_with_fewer_partitions

    current = runner.artifact(f"{family.stage}-{edge.key}")

    def acceptable(metrics: dict) -> bool:
        return gate_keeps(runner, metrics=metrics, current=current.metrics)

    return int8_with_fewer_partitions(runner, family, made, partitions=(current.delegate or {}).get("partitions", 0),
                                      check=lambda path: CHECKS[edge.check](runner, path),
                                      verify=lambda path: runner.verify_file(edge, family, path), acceptable=acceptable)


CONVERTERS = {"torch_to_onnx": exported_onnx, "onnx_to_qdq_int8": qdq_int8, "onnx_to_tflite": tflite_files}
CHECKS = {"full_integer": full_integer, "builtin_ops": builtin_ops}
AFTER = {"parity_retry": parity_retry, "fewer_partitions": fewer_partitions, "int8_fallback": int8_fallback}
RECOVER = {"int8_other_converter": int8_other_converter}
BACKGROUND = {"onnx2tf": start_onnx2tf}
