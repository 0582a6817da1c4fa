"""Runners: one interface over torch, onnxruntime and LiteRT. `runner(x)` takes a float32
NCHW batch of size 1 (normalised) and returns float32 outputs in the torch layout."""

from __future__ import annotations

from pathlib import Path


def open_runner(path: str | Path, fmt: str, threads: int = 2):
    """Runner for a produced file: fmt is 'torch' (.pt checkpoint), 'onnx' or 'tflite'."""
    if fmt == "tflite":
        from toolkit.runtime.tflite import TFLiteRunner

        return TFLiteRunner(path, threads)
    if fmt == "onnx":
        from toolkit.runtime.onnx import ONNXRunner

        return ONNXRunner(path, threads)
    if fmt == "torch":
        from toolkit.runtime.torch_runner import TorchRunner

        return TorchRunner(path, threads)
    raise ValueError(f"unknown format {fmt!r}")
