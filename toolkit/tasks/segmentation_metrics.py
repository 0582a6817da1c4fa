"""3-D Dice per class and per volume."""

from __future__ import annotations

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: list[int]) -> dict[int, float]:
    """Dice for each foreground class; both empty counts as a perfect 1.0."""
    out = {}
    for c in classes:
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out[c] = 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)
    return out


def mean_dice(per_volume: list[dict[int, float]], class_names: dict[int, str]) -> dict:
    """Average per-class Dice over volumes, and the mean of the classes (`dice`)."""
    result = {}
    for c, name in class_names.items():
        result[f"dice_{name}"] = float(np.mean([v[c] for v in per_volume]))
    result["dice"] = float(np.mean([result[f"dice_{n}"] for n in class_names.values()]))
    return result
