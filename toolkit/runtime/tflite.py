"""LiteRT runner (ai-edge-litert, else tflite-runtime, else TensorFlow's interpreter). Interpreter
loading and (de)quantisation come from the device helper module, so host and device agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_interpreter(path: str | Path, threads: int = 2, *, xnnpack: bool = True):
    """An allocated interpreter for a .tflite file (`xnnpack=False`: the file's own ops, no delegate)."""
    from toolkit.runtime.timing import device_common

    return device_common().make_interpreter(path, threads, xnnpack=xnnpack)[0]


class TFLiteRunner:
    """Feeds NCHW float input as the file expects (NHWC; quantised for int8/uint8 inputs) and
    returns dequantised float output in NCHW/NC layout."""

    def __init__(self, path: str | Path, threads: int = 2):
        from toolkit.runtime.timing import device_common

        self._common = device_common()
        self.interp, self.runtime = self._common.make_interpreter(path, threads)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        x = x_nchw.transpose(0, 2, 3, 1) if x_nchw.ndim == 4 else x_nchw
        return self._common.quantize_input(x, self.inp)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.inp["index"], prepared)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])

    def finish(self, y: np.ndarray) -> np.ndarray:
        y = self._common.dequantize_output(y, self.out)
        return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.finish(self.invoke(self.prepare(x_nchw)))
