"""How many real (not padded) inputs each window of a 2-D average pool covers: the divisor of a pool
with count_include_pad=False, so that the pool can be computed as a depthwise convolution with
weights 1 / (kh * kw) times a constant map (kh * kw) / count, which XNNPACK takes in INT8 (its INT8
AVERAGE_POOL_2D is refused, and ai-edge-quantizer cannot quantize litert-torch's padded pool).
Shared by the ONNX rewrite (onnx2tf) and the export-time forms (litert-torch)."""

from __future__ import annotations

import numpy as np


def _real_per_window(size: int, *, kernel: int, stride: int, before: int, after: int) -> np.ndarray:
    out = (size + before + after - kernel) // stride + 1
    starts = np.arange(out) * stride - before
    return np.minimum(starts + kernel, size) - np.maximum(starts, 0)


def divisor_correction(size: tuple[int, int], *, kernel: tuple[int, int], stride: tuple[int, int],
                       pads_before: tuple[int, int], pads_after: tuple[int, int]) -> np.ndarray:
    """(out_h, out_w) float32 map of (kh * kw) / (real inputs in the window), for windows that never
    lie wholly in the padding (as torch and ONNX require of their pads)."""
    rows = _real_per_window(size[0], kernel=kernel[0], stride=stride[0], before=pads_before[0], after=pads_after[0])
    cols = _real_per_window(size[1], kernel=kernel[1], stride=stride[1], before=pads_before[1], after=pads_after[1])
    return (kernel[0] * kernel[1] / np.outer(rows, cols)).astype(np.float32)
