"""onnxruntime runner (CPU execution provider, fixed thread count)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ONNXRunner:
    def __init__(self, path: str | Path, threads: int = 2, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def prepare(self, x_nchw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x_nchw, dtype=np.float32)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: prepared})[0]

    def finish(self, y: np.ndarray) -> np.ndarray:
        return y.astype(np.float32)

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.finish(self.invoke(self.prepare(x_nchw)))
