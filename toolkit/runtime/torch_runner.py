"""torch runner over a portable EdgeShrink checkpoint, or a torch.export program (.pt2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TorchRunner:
    def __init__(self, path: str | Path, threads: int = 2):
        import torch

        from toolkit.models.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        self.torch = torch
        if str(path).endswith(".pt2"):  # a torch.export program: runs without rebuilding the architecture
            self.model = torch.export.load(str(path)).module()
        else:
            self.model, _ = load_checkpoint(path)

    def prepare(self, x_nchw: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x_nchw, dtype=np.float32))

    def invoke(self, prepared):
        with self.torch.inference_mode():
            return self.model(prepared)

    def finish(self, y) -> np.ndarray:
        return y.numpy().astype(np.float32)

    def __call__(self, x_nchw: np.ndarray) -> np.ndarray:
        return self.finish(self.invoke(self.prepare(x_nchw)))
