"""Portable checkpoint -> LiteRT (.tflite) with litert-torch, run in its own venv as a child process.

litert-torch 0.10 needs ai-edge-litert 2.3 and a numpy/jax stack that conflicts with the main venv
(numpy 1.26.4, tensorflow 2.19 for onnx2tf), so it lives in .venv-litert
(`make setup-litert`) and runs `python -m toolkit.convert.litert_child` there. The parent only
writes the inputs (checkpoint, calibration .npy) and reads back the files; verifying them is the
caller's job, with the runtime that will run them."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import child_pythonpath, side_venv_python
from toolkit.core.work_limit import run_limited

SETUP = "make setup-litert"


@dataclass(frozen=True)
class LiteRTOutputs:
    float32: Path
    int8: Optional[Path]
    record: dict = field(default_factory=dict)  # litert.json: package versions, seconds


def litert_python() -> Path:
    """The converter venv's Python ($EDGESHRINK_LITERT_VENV, else <repo>/.venv-litert); refuses
    (with the install command) when the venv is missing or unfinished."""
    return side_venv_python(env="EDGESHRINK_LITERT_VENV", default=".venv-litert", setup=SETUP,
                            what="litert-torch converter")


def _child_error(stderr: str, code: int) -> str:
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    mine = next((l[len("error: "):] for l in reversed(lines) if l.startswith("error: ")), None)
    return mine or (lines[-1][:300] if lines else f"exit status {code}")


def checkpoint_to_litert(checkpoint: str | Path, input_shape: tuple[int, ...], out_dir: str | Path,
                         calibration_nhwc: Optional[np.ndarray] = None, *, mean: tuple = (0.0,), std: tuple = (1.0,),
                         stem: str = "model", threads: int = 1, cpu_limit_s: float = 3600,
                         delegate_rewrites: bool = False) -> LiteRTOutputs:
    """Write `<stem>_float32.tflite` and, with `calibration_nhwc` (real NHWC images in [0, 1], before
    mean/std), the full-integer `<stem>_int8.tflite` under `out_dir`, converted by litert-torch in
    .venv-litert. `input_shape` is the torch (N, C, H, W); the files take NHWC input.
    `delegate_rewrites` (XNNPACK targets) converts the model with hard-swish/hard-sigmoid written as
    a depthwise conv, ReLU6 and MUL (toolkit.convert.graph_rewrite, shift="conv"): XNNPACK takes
    neither INT8 HARD_SWISH nor, in litert-torch's INT8 files, an ADD of a constant; InstanceNorm and
    PReLU in the forms of toolkit.convert.graph_rewrite, with DIV and SQRT kept float in the INT8 file
    (measured on MONAI's 2-D UNet, random weights, 64 px: INT8 40 XNNPACK partitions -> 1); softmax,
    scaled-dot-product attention and layer norm in the forms of toolkit.convert.delegate_functions
    (MobileViT-XXS: INT8 not full-integer, 67 partitions -> full-integer, 4), GELU too.
    The child gets `cpu_limit_s` CPU seconds (toolkit.core.work_limit: work, not wall-clock time).
    Refuses when the converter venv is missing, and names the child's one-line error when conversion fails."""
    python = litert_python()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), "-m", "toolkit.convert.litert_child", "--checkpoint", str(Path(checkpoint).resolve()),
           "--out", str(out_dir), "--input-shape", ",".join(str(int(d)) for d in input_shape),
           "--mean", ",".join(str(float(v)) for v in mean), "--std", ",".join(str(float(v)) for v in std),
           "--stem", stem, "--threads", str(threads)]
    if delegate_rewrites:  # the rewritten InstanceNorm's DIV and SQRT stay float: XNNPACK runs them in its partition
        from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS

        cmd += ["--float-ops", ",".join(XNNPACK_FLOAT_ISLAND_OPS)]
    env = {**os.environ, "PYTHONPATH": str(child_pythonpath()), "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="litert-") as work:
        if calibration_nhwc is not None:
            if len(calibration_nhwc) == 0:
                raise EdgeShrinkError("INT8 conversion needs calibration data and the calibration set is empty; pass real images")
            np.save(Path(work) / "calib.npy", np.ascontiguousarray(calibration_nhwc, dtype=np.float32))
            cmd += ["--calibration", str(Path(work) / "calib.npy")]
        program = _exported_program(checkpoint, input_shape, Path(work), delegate_rewrites=delegate_rewrites)
        if program is not None:  # the child then needs neither the model's library nor its code
            cmd += ["--program", str(program)]
        done = run_limited(cmd, cpu_seconds=cpu_limit_s, what=f"litert-torch conversion of {Path(checkpoint).name}",
                           fix="raise cpu_limit_s or convert a smaller model", env=env, cwd=work, capture_output=True,
                           text=True)
    (out_dir / "litert-child.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise EdgeShrinkError(f"litert-torch could not convert {Path(checkpoint).name}: {_child_error(done.stderr, done.returncode)}; "
                              f"full log in {out_dir / 'litert-child.log'}")
    record = json.loads((out_dir / "litert.json").read_text())
    q8 = out_dir / record["int8"] if record.get("int8") else None
    return LiteRTOutputs(out_dir / record["float32"], q8, record)


def _exported_program(checkpoint: str | Path, input_shape: tuple[int, ...], work: Path, *,
                      delegate_rewrites: bool = False) -> Optional[Path]:
    """The checkpoint's model as a torch.export program (`.pt2`), or None when it does not export
    here (the child then rebuilds it from the checkpoint and says what failed). The litert venv
    holds torch and the converter only: a model from timm, MONAI or a file beside the card reaches
    it as a program, never as code to import."""
    import contextlib

    import torch

    from toolkit.convert.constant_fold import fold_constants
    from toolkit.convert.delegate_functions import delegate_functions
    from toolkit.convert.graph_rewrite import rewrite_for_delegates
    from toolkit.convert.max_pool_pads import max_pools_on_edge_pads
    from toolkit.convert.resize_matrices import resizes_as_matrices
    from toolkit.convert.rms_norm_form import rms_norm_forms
    from toolkit.convert.transposed_conv import crop_transposed_convs
    from toolkit.models.checkpoint import load_checkpoint

    try:
        model, _ = crop_transposed_convs(load_checkpoint(checkpoint)[0])
        functions = contextlib.nullcontext()
        if delegate_rewrites:
            model, _ = rewrite_for_delegates(model, shift="conv")
            model, _ = rms_norm_forms(model)
            functions = delegate_functions()
        example = torch.zeros(*input_shape)
        with torch.no_grad(), resizes_as_matrices(model.eval(), example, folds_as_sums=True), functions:
            program = torch.export.export(model.eval(), (example,))
        program, _ = fold_constants(program, example)  # weight-only computations (relative position biases)
        if delegate_rewrites:
            program, _ = max_pools_on_edge_pads(program, example)  # TF-SAME max pools: PADV2 of -inf
        path = work / "model.pt2"
        torch.export.save(program, str(path))
        return path
    except Exception:  # noqa: BLE001 - the child's own attempt reports the reason in one line
        return None
