"""Output layout of a converted file against its torch model.

A converter that guesses layouts (onnx2tf) may hand back an output in another axis order than
torch's, e.g. NCHW where the runner expects NHWC. A file's output is put back into torch's order
only when that is provably what happened: exactly one axis order gives torch's shape, or, when
several do (C == H == W), exactly one of them matches the torch outputs within parity. Otherwise
the file keeps its outputs and fails parity with the reason."""

from __future__ import annotations

import itertools
from typing import Callable, Optional

import numpy as np


def axis_orders(shape: tuple, expected: tuple) -> list[tuple]:
    """Every axis permutation (batch axis kept first) turning `shape` into `expected`, identity first."""
    if len(shape) != len(expected) or sorted(shape[1:]) != sorted(expected[1:]) or shape[:1] != expected[:1]:
        return []
    rest = range(1, len(shape))
    orders = [(0, *p) for p in itertools.permutations(rest)]
    return [p for p in orders if tuple(shape[i] for i in p) == tuple(expected)]


def match_layout(outputs: np.ndarray, *, expected_shape: tuple,
                 agrees: Optional[Callable[[np.ndarray], bool]] = None) -> tuple[np.ndarray, Optional[dict]]:
    """(outputs in torch's axis order, what was done or None). `agrees(candidate)` tells whether a
    candidate order computes what torch computes (parity); it decides between several orders."""
    shape, expected = tuple(outputs.shape), tuple(expected_shape)
    if shape == expected and (agrees is None or agrees(outputs)):
        return outputs, None
    orders = [p for p in axis_orders(shape, expected) if p != tuple(range(len(shape)))]
    if agrees is not None:
        orders = [p for p in orders if agrees(outputs.transpose(p))]
    if len(orders) != 1:
        return outputs, ({"fixed": False, "shape": list(shape), "expected": list(expected),
                          "reason": _reason(shape, expected, len(orders))} if shape != expected else None)
    order = orders[0]
    return np.ascontiguousarray(outputs.transpose(order)), {
        "fixed": True, "shape": list(shape), "expected": list(expected), "axes": list(order),
        "reason": f"the file's output came in another axis order ({list(shape)}); transposed by {list(order)} "
                  "to torch's order" + (", the only order that matches torch's outputs" if agrees else "")}


def _reason(shape: tuple, expected: tuple, candidates: int) -> str:
    if candidates == 0:
        return f"output shape {list(shape)} is not torch's {list(expected)} in any axis order that matches torch"
    return f"output shape {list(shape)} could be torch's {list(expected)} in {candidates} axis orders; none proven"
