"""The shared numpy decoder (deploy/common/edgeshrink_detect.py): priors, box encodings, scores,
NMS and the mapping back to image pixels, on hand-made cases; the torch twin used in training
decodes the same boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.core.errors import EdgeShrinkError


@pytest.fixture(scope="module")
def detect():
    from toolkit.runtime.detect_common import device_detect

    return device_detect()


def grid(detect, **extra):
    return detect.check_decoding({"decoder": "grid", "strides": [8, 16], "num_classes": 2, **extra})


def test_grid_priors_are_cell_centres_in_row_major_order(detect):
    priors = detect.make_priors(grid(detect), 32, 48)
    assert priors.shape == (4 * 6 + 2 * 3, 4)
    assert priors[0].tolist() == [4, 4, 8, 8] and priors[1].tolist() == [12, 4, 8, 8]  # x moves first
    assert priors[6].tolist() == [4, 12, 8, 8]                                        # then the next row
    assert priors[24].tolist() == [8, 8, 16, 16]                                      # then the next level
    odd = detect.make_priors(grid(detect), 33, 47)  # ceil: a partial cell at the edge is a cell
    assert len(odd) == 5 * 6 + 3 * 3


def test_anchor_priors_sizes_outer_ratios_inner(detect):
    spec = detect.check_decoding({"decoder": "anchors", "num_classes": 1, "box_encoding": "ssd",
                                  "anchors": [{"stride": 16, "sizes": [16, 32], "aspect_ratios": [1, 4]}]})
    priors = detect.make_priors(spec, 16, 16)
    assert priors.tolist() == [[8, 8, 16, 16], [8, 8, 32, 8], [8, 8, 32, 32], [8, 8, 64, 16]]


def test_box_encodings_decode_known_boxes(detect):
    priors = np.array([[20.0, 30.0, 8.0, 8.0]], np.float32)
    raw = np.array([[1.0, 2.0, 3.0, -1.0]], np.float32)
    ltrb = detect.decode_boxes(raw, priors, grid(detect, box_encoding="ltrb"))
    assert ltrb.tolist() == [[12, 14, 44, 30]]  # negative distance clamps to 0
    exp = detect.decode_boxes(np.zeros((1, 4)), priors, grid(detect, box_encoding="ltrb_exp"))
    assert exp.tolist() == [[12, 22, 28, 38]]
    yolox = detect.decode_boxes(np.array([[0.5, 0.0, 0.0, math.log(2)]]), priors, grid(detect, box_encoding="xywh_exp"))
    np.testing.assert_allclose(yolox, [[20, 22, 28, 38]], atol=1e-9)  # centre x + 0.5 stride, height x2
    ssd = detect.check_decoding({"decoder": "anchors", "num_classes": 1, "anchors": [{"stride": 8, "sizes": [8]}]})
    out = detect.decode_boxes(np.array([[1.0, 0.0, math.log(2) / 0.2, 0.0]]), np.array([[20, 30, 10, 10]]), ssd)
    np.testing.assert_allclose(out, [[11, 25, 31, 35]], atol=1e-9)  # centre x 20 + 0.1 * 10, width 10 -> 20


def test_scores_sigmoid_objectness_and_softmax_background(detect):
    raw = np.array([[0, 0, 0, 0, 0.0, 100.0]])
    np.testing.assert_allclose(detect.decode_scores(raw, grid(detect)), [[0.5, 1.0]])
    obj = detect.check_decoding({"decoder": "grid", "strides": [8], "num_classes": 1, "objectness": True})
    np.testing.assert_allclose(detect.decode_scores(np.array([[0, 0, 0, 0, 0.0, 100.0]]), obj), [[0.5]])
    soft = detect.check_decoding({"decoder": "grid", "strides": [8], "num_classes": 2, "score_activation": "softmax"})
    scores = detect.decode_scores(np.array([[0, 0, 0, 0, 0.0, 0.0, math.log(2)]]), soft)
    np.testing.assert_allclose(scores, [[0.25, 0.5]])  # background (first) dropped
    assert detect.values_per_prior(soft) == 7 and detect.values_per_prior(obj) == 6


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_classes(detect):
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert detect.nms(boxes, scores, 0.5).tolist() == [3, 2]  # 0 and 1 overlap 3 (IoU 1.0 and 0.82)
    assert detect.nms(boxes, scores, 0.9).tolist() == [3, 1, 2]  # IoU 0.82 <= 0.9 keeps box 1
    labels = np.array([0, 1, 0, 0])
    assert detect.batched_nms(boxes, scores, labels, 0.5).tolist() == [3, 1, 2]  # another class never suppresses
    assert detect.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert detect.box_iou(np.array([0, 0, 0, 10.0]), np.array([[0, 0, 0, 10.0]])).tolist() == [0.0]  # empty box


def test_postprocess_thresholds_maps_to_image_pixels_and_caps(detect):
    spec = grid(detect, score_threshold=0.3, max_detections=2)
    priors = detect.make_priors(spec, 16, 16)  # 4 cells at stride 8 + 1 at stride 16
    raw = np.full((len(priors), 6), -10.0, np.float32)
    raw[0, :4], raw[0, 4] = 1.0, 5.0   # cell (4, 4): box 0..12 x 0..12 (clipped at 0), class 0
    raw[3, :4], raw[3, 5] = 0.5, 0.0   # cell (12, 12): box 8..16, class 1 at score 0.5
    raw[1, :4], raw[1, 4] = 1.0, -1.0  # score 0.27: below the threshold
    out = detect.postprocess(raw, spec, input_hw=(16, 16), image_hw=(32, 64))
    assert out["labels"].tolist() == [0, 1]
    np.testing.assert_allclose(out["boxes"], [[0, 0, 48, 24], [32, 16, 64, 32]])  # x * 4, y * 2, clipped to the image
    assert out["scores"][0] > out["scores"][1]
    records = detect.as_records(out, ["cat", "dog"], min_score=0.6)
    assert records == [{"label": "cat", "class_id": 0, "score": round(float(out["scores"][0]), 4),
                        "box": [0.0, 0.0, 48.0, 24.0]}]


def test_check_raw_and_check_decoding_name_the_problem(detect):
    spec = grid(detect)
    detect.check_raw(np.zeros((2, 5, 6)), spec, 16, 16)
    with pytest.raises(ValueError, match=r"expects \(batch, 5, 6\)"):
        detect.check_raw(np.zeros((1, 5, 7)), spec, 16, 16)
    for bad, words in (({"decoder": "yolo"}, "decoder"), ({"decoder": "grid", "num_classes": 1}, "strides"),
                       ({"decoder": "grid", "strides": [8], "num_classes": 1, "box_encoding": "ssd"}, "box_encoding"),
                       ({"decoder": "grid", "strides": [8], "num_classes": 1, "iou_threshold": 2}, "iou_threshold"),
                       ({"decoder": "grid", "strides": [8], "num_classes": 1, "stride": 8}, "unknown key")):
        with pytest.raises(ValueError, match=words):
            detect.check_decoding(bad)
    from toolkit.runtime.detect_common import checked_decoding

    with pytest.raises(EdgeShrinkError, match="fix the card's detection block"):
        checked_decoding({"decoder": "grid"}, "card x")


def test_torch_decoder_used_in_training_matches_the_numpy_one(detect):
    import torch

    from toolkit.tasks.detection_loss import decode_boxes_torch

    rng = np.random.default_rng(0)
    for encoding in ("ltrb", "ltrb_exp", "xywh_exp"):
        spec = grid(detect, box_encoding=encoding)
        priors = detect.make_priors(spec, 32, 32)
        raw = rng.normal(0, 1.5, (len(priors), 6)).astype(np.float32)
        ours = decode_boxes_torch(torch.from_numpy(raw)[None], torch.from_numpy(priors), encoding)[0].numpy()
        np.testing.assert_allclose(ours, detect.decode_boxes(raw, priors, spec), rtol=1e-5, atol=1e-4)
