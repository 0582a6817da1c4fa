"""ONNX -> TFLite with onnx2tf (offline): FP32 and full-integer INT8 from real calibration data."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.errors import EdgeShrinkError

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


@dataclass(frozen=True)
class TFLiteOutputs:
    float32: Path
    int8: Optional[Path]


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _write_offline_sample(folder: Path, calib_nhwc01: np.ndarray) -> None:
    """onnx2tf reads this file name from its working directory for 3-channel image models and
    downloads it when absent; we give it 20 of our own calibration images at 128x128 instead."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(calib_nhwc01[:20])).permute(0, 3, 1, 2)
    if x.shape[0] < 20:
        x = x.repeat((20 + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:20]
    x = F.interpolate(x.float(), size=(128, 128), mode="bilinear", align_corners=False)
    np.save(folder / ONNX2TF_SAMPLE, x.permute(0, 2, 3, 1).numpy().astype(np.float32))


def onnx_to_tflite(onnx_path: str | Path, out_dir: str | Path, calibration_nhwc: Optional[np.ndarray] = None,
                   mean: tuple = (0.0,), std: tuple = (1.0,), int8: bool = True,
                   io_dtype: str = "int8", input_name: str = "input") -> TFLiteOutputs:
    """Convert to `<stem>_float32.tflite` and, with `int8`, `<stem>_int8.tflite` (full-integer,
    per-channel, int8 or uint8 input/output). `calibration_nhwc` holds real model inputs as NHWC
    float32 before mean/std (images in [0, 1]); onnx2tf normalises them with mean/std. Refuses INT8 without calibration data."""
    import onnx2tf

    onnx_path, out_dir = Path(onnx_path).resolve(), Path(out_dir).resolve()
    if int8 and (calibration_nhwc is None or len(calibration_nhwc) == 0):
        raise EdgeShrinkError("INT8 conversion needs calibration data and the calibration set is empty; pass real images (calibration.size >= 1)")
    if io_dtype not in ("int8", "uint8"):
        raise EdgeShrinkError(f"io_dtype must be int8 or uint8, got {io_dtype!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = onnx_path.stem
    with tempfile.TemporaryDirectory(prefix="onnx2tf-") as work:
        work = Path(work)
        source = work / onnx_path.name  # onnx2tf rewrites its input in place; give it a copy
        shutil.copyfile(onnx_path, source)
        kwargs = {}
        if calibration_nhwc is not None and len(calibration_nhwc):
            calib = np.ascontiguousarray(calibration_nhwc, dtype=np.float32)
            np.save(work / "calib.npy", calib)
            if calib.ndim == 4 and calib.shape[-1] == 3:
                _write_offline_sample(work, calib)
            m = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
            s = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
            kwargs["custom_input_op_name_np_data_path"] = [[input_name, str(work / "calib.npy"), m, s]]
        else:
            # FP32 only: onnx2tf still wants its sample images for its own op-by-op check. Seeded
            # uniform noise in [0, 1] serves that check and keeps the conversion offline.
            noise = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
            np.save(work / ONNX2TF_SAMPLE, noise)
        with _cwd(work), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            try:
                onnx2tf.convert(
                    input_onnx_file_path=str(source), output_folder_path=str(work / "tf"),
                    output_integer_quantized_tflite=int8, quant_type="per-channel",
                    input_quant_dtype=io_dtype, output_quant_dtype=io_dtype,
                    non_verbose=True, **kwargs,
                )
            except SystemExit as exc:  # onnx2tf calls sys.exit on conversion errors
                raise EdgeShrinkError(f"onnx2tf could not convert {onnx_path.name} (exit {exc.code}); run onnx2tf -i {onnx_path} to see why") from None
        produced = work / "tf"
        fp32 = out_dir / f"{stem}_float32.tflite"
        shutil.copyfile(produced / f"{stem}_float32.tflite", fp32)
        q = None
        if int8:
            q = out_dir / f"{stem}_int8.tflite"
            shutil.copyfile(produced / f"{stem}_full_integer_quant.tflite", q)
    return TFLiteOutputs(fp32, q)
