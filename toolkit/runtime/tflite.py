"""LiteRT runner (ai-edge-litert, else tflite-runtime, else TensorFlow's interpreter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_interpreter(path: str | Path, threads: int = 2):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            from tensorflow.lite import Interpreter  # type: ignore
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    return interp


class TFLiteRunner:
    """Feeds NCHW float input as the file expects (NHWC; quantised for int8/uint8 inputs) and
    returns dequantised float output in NCHW/NC layout."""

    def __init__(self, path: str | Path, threads: int = 2):
        self.interp = make_interpreter(path, threads)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        x = x_nchw.transpose(0, 2, 3, 1) if x_nchw.ndim == 4 else x_nchw
        if self.inp["dtype"] in (np.int8, np.uint8):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return np.ascontiguousarray(x, dtype=self.inp["dtype"])

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], prepared)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])

    def finish(self, y: np.ndarray) -> np.ndarray:
        if self.out["dtype"] in (np.int8, np.uint8):
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        y = y.astype(np.float32)
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.finish(self.invoke(self.prepare(x_nchw)))
