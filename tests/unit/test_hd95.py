"""HD95 on hand-made volumes whose distances are known (milliseconds, numpy only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.tasks.segmentation_metrics import boundary, case_scores, hd95, summarise, surface_distances


def _empty(shape=(12, 12, 12)):
    return np.zeros(shape, bool)


def test_identical_masks_are_zero_and_empty_cases_are_defined():
    a = _empty()
    a[3:8, 2:9, 4:6] = True
    assert hd95(a, a) == 0.0
    assert hd95(_empty(), _empty()) == 0.0  # nothing to find, nothing found
    assert hd95(a, _empty()) is None and hd95(_empty(), a) is None  # undefined: left out of means


def test_single_voxels_distance_uses_the_spacing():
    p, t = _empty(), _empty()
    p[0, 0, 0] = True
    t[0, 3, 4] = True
    assert hd95(p, t) == pytest.approx(5.0)
    assert hd95(p, t, (2.0, 0.5, 1.0)) == pytest.approx(math.hypot(1.5, 4.0))


def test_parallel_sheets_are_their_gap_apart_in_mm():
    p, t = _empty(), _empty()
    p[2] = True
    t[7] = True
    assert hd95(p, t) == pytest.approx(5.0)
    assert hd95(p, t, (1.5, 0.7, 0.7)) == pytest.approx(7.5)  # only the X spacing counts
    ab, ba = surface_distances(p, t, (1.5, 0.7, 0.7))
    assert np.allclose(ab, 7.5) and np.allclose(ba, 7.5) and len(ab) == 144


def test_one_stray_voxel_moves_the_maximum_but_not_the_95th_percentile():
    t = _empty((1, 40, 40))
    t[0, 5, 5:35] = True  # a 30-pixel line
    p = t.copy()
    p[0, 30, 20] = True  # one stray pixel 25 away
    ab, ba = surface_distances(p, t)
    assert ab.max() == pytest.approx(25.0) and hd95(p, t) == 0.0


def test_only_the_boundary_counts_and_a_2d_image_is_scored_in_2d():
    square = _empty((1, 11, 11))
    square[0, 1:10, 1:10] = True
    assert boundary(np.squeeze(square)).sum() == 32  # 9x9 minus its 7x7 inside
    ab, _ = surface_distances(square, square)
    assert len(ab) == 32  # not 81: the singleton axis is dropped, not treated as a border
    smaller = _empty((1, 11, 11))
    smaller[0, 3:8, 3:8] = True  # 2 pixels inside on every side
    ab, ba = surface_distances(smaller, square)
    assert np.allclose(ab, 2.0)  # each inner boundary pixel is 2 from the outer ring
    # outer ring -> inner: 20 pixels at 2, 8 at sqrt(5), the 4 corners at sqrt(8); the corners are the
    # top 4 of 32 sorted distances, and the 95th percentile sits between the 30th and 31st
    assert sorted(np.round(ba ** 2).astype(int).tolist()) == [4] * 20 + [5] * 8 + [8] * 4
    assert hd95(smaller, square) == pytest.approx(math.sqrt(8))


def test_numpy_path_matches_scipy_distance_transform():
    pytest.importorskip("scipy")
    from toolkit.tasks import segmentation_metrics as m

    rng = np.random.default_rng(0)
    for _ in range(3):
        p, t = rng.random((10, 14, 9)) > 0.7, rng.random((10, 14, 9)) > 0.6
        edges = boundary(p), boundary(t)
        spacing = np.array([1.2, 0.5, 2.0])
        exact = m._nearest(edges[0], edges[1], spacing)
        brute = m._nearest_numpy(np.argwhere(edges[0]) * spacing, np.argwhere(edges[1]) * spacing)
        assert np.allclose(exact, brute)


def test_case_scores_pool_the_images_of_one_patient():
    names = {1: "lesion"}
    line = np.zeros((1, 20, 20), np.uint8)
    line[0, 4, 2:18] = 1
    only_truth = (np.zeros_like(line), line, (1.0, 1.0, 1.0))
    same = (line, line, (1.0, 1.0, 1.0))
    r = case_scores([same, only_truth], names)
    assert r["dice_lesion"] == pytest.approx(2 * 16 / (16 + 32)) and r["hd95_lesion"] == 0.0
    assert case_scores([only_truth], names)["hd95_lesion"] is None
    s = summarise([{"dice_lesion": 1.0, "hd95_lesion": 2.0}, {"dice_lesion": 0.0, "hd95_lesion": None}], names)
    assert s == {"dice_lesion": 0.5, "dice": 0.5, "hd95_lesion": 2.0, "hd95": 2.0}
