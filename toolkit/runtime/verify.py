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
    """(outputs, metrics, parity) of one file. Parity is checked for float files only."""
    outputs = run_outputs(path, fmt, task, threads=threads, progress=progress, desc=desc)
    metrics = task.metrics(outputs, reference)
    check = parity(outputs, source_torch_outputs) if precision == "fp32" and source_torch_outputs is not None and fmt != "torch" else {}
    return outputs, metrics, check
