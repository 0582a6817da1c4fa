"""ONNX -> TFLite with onnx2tf (offline): FP32 and full-integer INT8 from real calibration data."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.runtime.tflite_check import require_builtin_ops

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


@dataclass(frozen=True)
class TFLiteOutputs:
    float32: Path
    int8: Optional[Path]
    onnx2tf_options: tuple[str, ...] = ()  # options onnx2tf's own errors asked for and the retry used
    rewrites: tuple[str, ...] = ()  # "Op xN": ONNX ops rewritten in delegate-friendly forms (convert.onnx_rewrite)


def onnx2tf_flags() -> dict[str, tuple[str, bool]]:
    """{"-osd": ("output_signaturedefs", True), "--output_signaturedefs": (...), ...}: every option
    of the installed onnx2tf's CLI, read from its argparse source, with whether it is an on/off flag."""
    import inspect

    import onnx2tf.onnx2tf as cli

    src = inspect.getsource(cli.main)
    flags = {}
    for short, long, rest in re.findall(r"add_argument\(\s*'(-\w+)',\s*'--(\w+)',(.*?)\n\s*\)", src, re.S):
        entry = (long, "action='store_true'" in rest)
        flags[short], flags[f"--{long}"] = entry, entry
    return flags


# Options never worth a retry: they change what is written or only check/print, not the conversion.
_NOT_A_FIX = {"version", "non_verbose", "disable_model_save", "output_h5", "output_keras_v3", "output_tfv1_pb",
              "output_weights", "output_integer_quantized_tflite", "output_dynamic_range_quantized_tflite",
              "check_gpu_delegate_compatibility", "check_onnx_tf_outputs_elementwise_close",
              "check_onnx_tf_outputs_elementwise_close_full", "input_onnx_file_path", "output_folder_path"}


def onnx2tf_advice(log: str) -> list[tuple[str, str, bool]]:
    """Options onnx2tf's error/advice lines name (e.g. "Please convert again with the `-osd`
    option"), as (flag as written, convert() keyword, is_on_off_flag), in order of first mention.
    Output-format and check-only options are left out: they cannot fix a failed conversion."""
    flags, seen, out = onnx2tf_flags(), set(), []
    advice = "\n".join(l for l in _plain(log).splitlines() if re.search(r"error|please|try|option|use ", l, re.I))
    for token in re.findall(r"(?<![\w-])(--?[A-Za-z][\w]*)", advice):
        if token in flags and flags[token][0] not in seen and flags[token][0] not in _NOT_A_FIX:
            seen.add(flags[token][0])
            out.append((token, *flags[token]))
    return out


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


def _run_onnx2tf(source: Path, out: Path, *, int8: bool, io_dtype: str, **options) -> tuple[bool, str]:
    """One onnx2tf.convert call in `source`'s folder; (succeeded, everything it printed)."""
    import onnx2tf

    log = io.StringIO()
    with _cwd(source.parent), contextlib.redirect_stdout(log):
        try:
            onnx2tf.convert(input_onnx_file_path=str(source), output_folder_path=str(out),
                            output_integer_quantized_tflite=int8, quant_type="per-channel",
                            input_quant_dtype=io_dtype, output_quant_dtype=io_dtype, non_verbose=True, **options)
            return True, log.getvalue()
        except SystemExit:  # onnx2tf calls sys.exit on conversion errors
            return False, log.getvalue()
        except Exception as exc:  # noqa: BLE001 - onnx2tf raises many types; its advice is in the log
            return False, f"{log.getvalue()}\n{type(exc).__name__}: {exc}"


def _convert_with_advice(source: Path, out: Path, onnx_path: Path, *, int8: bool, io_dtype: str,
                         shown: Optional[Path] = None, **kwargs) -> tuple[str, ...]:
    """Run onnx2tf; when it fails and its output asks for an on/off option it was not given
    (e.g. `-osd` for layer names TensorFlow refuses), retry with it. Returns the options the
    successful run needed. Raises with onnx2tf's advice when no retry helps."""
    used: list[str] = []
    for _ in range(4):
        shutil.copyfile(onnx_path, source)  # onnx2tf rewrites its input; each attempt starts clean
        shutil.rmtree(out, ignore_errors=True)
        ok, log = _run_onnx2tf(source, out, int8=int8, io_dtype=io_dtype, **kwargs)
        if ok:
            return tuple(used)
        advice = [a for a in onnx2tf_advice(log) if a[1] not in kwargs]
        retry = next((a for a in advice if a[2]), None)
        if retry is None:
            break
        kwargs[retry[1]] = True
        used.append(retry[0])
    asked = ", ".join(a[0] for a in advice) if advice else "no option"
    last = next((l.strip() for l in reversed(log.splitlines()) if "ERROR" in l or "Error" in l), "no error line")
    tried = f" (already retried with {' '.join(used)})" if used else ""
    shown = shown or onnx_path
    raise EdgeShrinkError(f"onnx2tf could not convert {shown.name}{tried}: {_plain(last)[:300]}; onnx2tf asks for "
                          f"{asked}; run onnx2tf -i {shown.name} to see the full log")


def _plain(text: str) -> str:
    """onnx2tf colours its messages; drop the ANSI escapes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def onnx_to_tflite(onnx_path: str | Path, out_dir: str | Path, calibration_nhwc: Optional[np.ndarray] = None,
                   mean: tuple = (0.0,), std: tuple = (1.0,), *, int8: bool = True,
                   io_dtype: str = "int8", input_name: str = "input",
                   rewrite_ops: Optional[tuple] = None) -> TFLiteOutputs:
    """Convert to `<stem>_float32.tflite` and, with `int8`, `<stem>_int8.tflite` (full-integer,
    per-channel, int8 or uint8 input/output). When onnx2tf fails and names an on/off option of its
    own (e.g. `-osd`), the conversion is retried with it and `onnx2tf_options` records it. `calibration_nhwc` holds real model inputs as NHWC
    float32 before mean/std (images in [0, 1]); onnx2tf normalises them with mean/std. Refuses INT8 without calibration data.
    onnx2tf converts a copy of the graph with `rewrite_ops` (default: the forms every runtime takes,
    `onnx_rewrite.FULL_INTEGER_REWRITES`; `rewrites_for(delegate)` for a target) in delegate-friendly
    forms; a produced file holding Flex ops is refused (one line), never returned."""
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
        graph, rewrites = _rewritten(onnx_path, work, rewrite_ops)
        used = _convert_with_advice(source, work / "tf", graph, int8=int8, io_dtype=io_dtype, shown=onnx_path, **kwargs)
        produced = work / "tf"
        for name in [f"{stem}_float32.tflite"] + ([f"{stem}_full_integer_quant.tflite"] if int8 else []):
            require_builtin_ops(produced / name)
        fp32 = out_dir / f"{stem}_float32.tflite"
        shutil.copyfile(produced / f"{stem}_float32.tflite", fp32)
        q = None
        if int8:
            q = out_dir / f"{stem}_int8.tflite"
            shutil.copyfile(produced / f"{stem}_full_integer_quant.tflite", q)
    from toolkit.convert.tflite_signature import ensure_signatures

    ensure_signatures(onnx_path, (fp32, q))  # onnx2tf may write none; the INT8 fallback's quantizer needs one
    return TFLiteOutputs(fp32, q, used, rewrites)


def _rewritten(onnx_path: Path, work: Path, rewrite_ops: Optional[tuple]) -> tuple[Path, tuple[str, ...]]:
    """(the graph onnx2tf converts, ["Op xN", ...]): `onnx_path` with `rewrite_ops` rewritten, in `work`."""
    from toolkit.convert.onnx_rewrite import FULL_INTEGER_REWRITES, rewrite_onnx_file

    folder = work / "rewritten"
    folder.mkdir()
    done = rewrite_onnx_file(onnx_path, folder / onnx_path.name,
                             ops=FULL_INTEGER_REWRITES if rewrite_ops is None else tuple(rewrite_ops))
    if not done:
        return onnx_path, ()
    return folder / onnx_path.name, tuple(f"{op} x{n}" for op, n in sorted(done.items()))
