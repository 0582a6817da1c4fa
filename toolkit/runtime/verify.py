"""Verify a produced file with the runtime that will run it: outputs on the held-out set,
task metrics, agreement with the dense model and numerical parity for float files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

PARITY_RTOL = 1e-4  # max error / max |reference output|


def run_outputs(path: Path, fmt: str, task, *, threads: int = 2, progress: bool = True, desc: str = "") -> np.ndarray:
    """Outputs of a model file over the task's held-out inputs (batch 1, the deployed shape)."""
    from tqdm import tqdm

    from toolkit.runtime import open_runner

    runner = open_runner(path, fmt, threads)
    outs = [runner(x) for x in tqdm(task.eval_inputs(), total=task.eval_count(), desc=f"verify {desc}",
                                    disable=not progress, leave=False)]
    return np.concatenate(outs)


def parity(outputs: np.ndarray, torch_outputs: np.ndarray, tolerance: float = PARITY_RTOL) -> dict:
    """Error of a float file against the torch model it came from, relative to the output scale."""
    from toolkit.runtime.parity import compare_outputs

    return compare_outputs(outputs, torch_outputs, rtol=tolerance)


def verify(path: Path, fmt: str, precision: str, task, *, reference: Optional[np.ndarray],
           source_torch_outputs: Optional[np.ndarray], threads: int = 2, progress: bool = True, desc: str = ""):
    """(outputs, metrics, parity) of one file. Shape, layout and (for float files) parity are
    checked before any task metric runs; a metric never raises on a converted file."""
    outputs = run_outputs(path, fmt, task, threads=threads, progress=progress, desc=desc)
    checks_parity = precision == "fp32" and source_torch_outputs is not None and fmt != "torch"
    outputs, layout = _torch_layout(outputs, reference=reference, source=source_torch_outputs if checks_parity else None)
    check = parity(outputs, source_torch_outputs) if checks_parity else {}
    if layout and check:
        check["layout"] = layout
    metrics = _metrics(task, outputs, reference, parity_failed=bool(check) and not check["ok"])
    if layout:
        metrics["output_layout"] = layout
    return outputs, metrics, check


def _torch_layout(outputs: np.ndarray, *, reference: Optional[np.ndarray], source: Optional[np.ndarray]):
    """Outputs in torch's axis order when that is provably what the file computed (see runtime.layout)."""
    from toolkit.runtime.layout import match_layout

    expected = source if source is not None else reference
    if expected is None or not isinstance(outputs, np.ndarray):
        return outputs, None
    agrees = (lambda candidate: parity(candidate, source)["ok"]) if source is not None else None
    return match_layout(outputs, expected_shape=tuple(np.shape(expected)), agrees=agrees)


def _metrics(task, outputs: np.ndarray, reference: Optional[np.ndarray], *, parity_failed: bool) -> dict:
    """The task's metrics; a file whose outputs the metric cannot read gets the reason instead (it
    then fails the deploy gate: no metric)."""
    if parity_failed and reference is not None and np.shape(outputs) != np.shape(reference):
        return {"metric_error": f"not measured: output shape {list(np.shape(outputs))} is not torch's "
                                f"{list(np.shape(reference))} (parity failed)"}
    try:
        return task.metrics(outputs, reference)
    except (ValueError, IndexError, TypeError, ArithmeticError) as exc:
        return {"metric_error": f"not measured: {type(exc).__name__}: {exc}"}
