"""Segmentation metrics per case and per class: Dice and HD95 (95th-percentile Hausdorff distance).

HD95 follows MONAI's `compute_hausdorff_distance(percentile=95)`: the boundary voxels of each mask
(a voxel of the mask with a face neighbour outside it; the array border counts as outside), the
distance from every boundary voxel of one mask to the nearest boundary voxel of the other (in mm,
from the voxel spacing), the 95th percentile of each direction, and the larger of the two. Both
masks empty: 0.0; exactly one empty: undefined (None), left out of the means and counted.
Numpy only (scipy's exact distance transform is used when it is installed: the same values, faster
on large volumes). Axes of length 1 are dropped, so a 2-D image is scored in 2-D."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

PAIRS_PER_CHUNK = 1 << 22  # distances computed at a time by the numpy path (bounds memory)


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


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels of `mask` with a face neighbour outside it (or on the array border)."""
    padded = np.pad(mask.astype(bool), 1, constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return padded[inner] & ~interior[inner]


def _nearest_numpy(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest target (both already scaled to mm), in chunks."""
    out = np.empty(len(points), np.float64)
    step = max(1, PAIRS_PER_CHUNK // max(1, len(targets)))
    for s in range(0, len(points), step):
        diff = points[s:s + step, None, :] - targets[None, :, :]
        out[s:s + step] = np.sqrt((diff * diff).sum(-1).min(1))
    return out


def _nearest(from_edge: np.ndarray, to_edge: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    try:
        from scipy.ndimage import distance_transform_edt
    except ImportError:
        return _nearest_numpy(np.argwhere(from_edge) * spacing, np.argwhere(to_edge) * spacing)
    return distance_transform_edt(~to_edge, sampling=spacing)[from_edge]


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = ()) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(pred boundary -> truth boundary, truth -> pred) distances of two boolean masks; two empty
    arrays when both masks are empty, None when exactly one is."""
    spacing = np.asarray(spacing or (1.0,) * pred.ndim, np.float64)
    keep = [a for a in range(pred.ndim) if pred.shape[a] > 1]
    pred, truth = np.squeeze(pred.astype(bool)), np.squeeze(truth.astype(bool))
    spacing = spacing[keep]
    if not pred.any() and not truth.any():
        return np.zeros(0), np.zeros(0)
    if not pred.any() or not truth.any():
        return None
    box = _bounding_box(pred | truth)  # every boundary voxel lies in the union's box: distances unchanged
    pred_edge, truth_edge = boundary(pred)[box], boundary(truth)[box]
    return _nearest(pred_edge, truth_edge, spacing), _nearest(truth_edge, pred_edge, spacing)


def _bounding_box(mask: np.ndarray) -> tuple:
    idx = np.argwhere(mask)
    return tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0)))


def hd95_of(distances: Optional[tuple[np.ndarray, np.ndarray]]) -> Optional[float]:
    """HD95 from `surface_distances` output (None stays None; both empty is 0.0)."""
    if distances is None:
        return None
    a, b = distances
    if not len(a) and not len(b):
        return 0.0
    return float(max(np.percentile(a, 95), np.percentile(b, 95)))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = ()) -> Optional[float]:
    """95th-percentile Hausdorff distance between two boolean masks, in the units of `spacing`."""
    return hd95_of(surface_distances(pred, truth, spacing))


def case_scores(units: list[tuple[np.ndarray, np.ndarray, Sequence[float]]], class_names: dict[int, str]) -> dict:
    """Dice and HD95 per class of one case from its (pred, truth, spacing) units: one volume, or the
    2-D images of one patient (Dice over all their pixels; HD95 over all their boundary distances,
    an image where only one side has the class adds none)."""
    out = {}
    for c, name in class_names.items():
        inter = total = 0
        ab, ba, one_sided = [], [], False
        for pred, truth, spacing in units:
            p, t = pred == c, truth == c
            inter, total = inter + int(np.logical_and(p, t).sum()), total + int(p.sum() + t.sum())
            d = surface_distances(p, t, spacing)
            one_sided |= d is None
            if d is not None:
                ab.append(d[0]), ba.append(d[1])
        out[f"dice_{name}"] = 1.0 if total == 0 else float(2.0 * inter / total)
        pooled = (np.concatenate(ab), np.concatenate(ba)) if ab else (np.zeros(0), np.zeros(0))
        out[f"hd95_{name}"] = None if one_sided and not len(pooled[0]) else hd95_of(pooled)
    out["dice"] = float(np.mean([out[f"dice_{n}"] for n in class_names.values()]))
    return out


def summarise(per_case: list[dict], class_names: dict[int, str]) -> dict:
    """Means over cases: `dice_<class>`, `dice` (mean of the classes, as mean_dice), `hd95_<class>`
    over the cases where it is defined (None: nowhere) and `hd95` (mean of the class means)."""
    names = list(class_names.values())
    result = {f"dice_{n}": float(np.mean([r[f"dice_{n}"] for r in per_case])) for n in names}
    result["dice"] = float(np.mean([result[f"dice_{n}"] for n in names]))
    for n in names:
        defined = [r[f"hd95_{n}"] for r in per_case if r[f"hd95_{n}"] is not None]
        result[f"hd95_{n}"] = float(np.mean(defined)) if defined else None
    means = [result[f"hd95_{n}"] for n in names if result[f"hd95_{n}"] is not None]
    result["hd95"] = float(np.mean(means)) if means else None
    return result
