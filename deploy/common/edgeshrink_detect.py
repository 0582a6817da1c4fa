"""Box decoding and NMS for detection bundles: the one implementation shared by the host verifier
(the toolkit loads this file by path, as it does edgeshrink_common.py) and the device scripts.
Needs only numpy.

A detection model file holds backbone + neck + heads and returns ONE raw tensor (N, A, K): for each
of A priors (grid cells or anchors) K values, the 4 box values first, then the score values. Nothing
after the heads is in the graph: priors, box decoding, score activation and NMS happen here, with
the parameters of the manifest's `detection` block (the card's `detection:` block, checked by
`check_decoding`).

Prior order: levels in the order given; in each level the rows (y) then the columns (x) of a
ceil(H / stride) x ceil(W / stride) grid; in each cell its anchors (sizes outer, aspect ratios inner).

- decoder "grid" (anchor-free, FCOS / YOLOX style): one prior per cell, centred at ((x + .5) s, (y + .5) s).
  box_encoding "ltrb": distances left, top, right, bottom = max(v, 0) * s (linear: kind to INT8);
  "ltrb_exp": distances = exp(v) * s (FCOS); "xywh_exp": centre = prior + v[:2] * s, size = exp(v[2:]) * s (YOLOX).
- decoder "anchors" (SSD / RetinaNet style): at each cell centre one anchor per size x aspect ratio
  (width = size * sqrt(ratio), height = size / sqrt(ratio)). box_encoding "ssd": centre = anchor centre
  + v[:2] * variances[0] * anchor size, size = anchor size * exp(v[2:] * variances[1]).
- score_activation "sigmoid": K = 4 [+ 1 objectness] + C; score = sigmoid(class) [* sigmoid(objectness)].
  "softmax": K = 4 + 1 + C, a softmax over background (first) and the C classes; background is dropped.

Boxes come out as [x1, y1, x2, y2] in pixels of the original image: the model input is the image
stretched to H x W, so x scales by image_width / W and y by image_height / H."""

import math

import numpy as np

DECODERS = ("grid", "anchors")
ENCODINGS = {"grid": ("ltrb", "ltrb_exp", "xywh_exp"), "anchors": ("ssd",)}
ACTIVATIONS = ("sigmoid", "softmax")
DEFAULTS = {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100, "pre_nms_top_k": 1000,
            "class_agnostic": False, "objectness": False, "variances": [0.1, 0.2], "draw_threshold": 0.4}
EXP_CLIP = math.log(1000.0 / 16)  # size factors above ~60 are a diverged output, not a box
_KEYS = {"decoder", "num_classes", "strides", "anchors", "box_encoding", "score_activation", *DEFAULTS}


def _positive_numbers(values, what: str) -> list:
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"detection.{what} must be a non-empty list of positive numbers, got {values!r}")
    return list(values)


def _check_anchor_levels(levels) -> list:
    if not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError("detection.anchors must be a list of levels {stride, sizes, aspect_ratios} for decoder 'anchors'")
    out = []
    for i, level in enumerate(levels):
        if not isinstance(level, dict) or set(level) - {"stride", "sizes", "aspect_ratios"} or "stride" not in level \
                or "sizes" not in level:
            raise ValueError(f"detection.anchors[{i}] must be a mapping of stride, sizes and aspect_ratios, got {level!r}")
        stride = _positive_numbers([level["stride"]], f"anchors[{i}].stride")[0]
        out.append({"stride": stride, "sizes": _positive_numbers(level["sizes"], f"anchors[{i}].sizes"),
                    "aspect_ratios": _positive_numbers(level.get("aspect_ratios", [1.0]), f"anchors[{i}].aspect_ratios")})
    return out


def _check_thresholds(spec: dict) -> None:
    for key in ("score_threshold", "iou_threshold", "draw_threshold"):
        v = spec[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise ValueError(f"detection.{key} must be a number between 0 and 1, got {v!r}")
    for key in ("max_detections", "pre_nms_top_k"):
        v = spec[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"detection.{key} must be a whole number >= 1, got {v!r}")
    variances = spec["variances"]
    if len(_positive_numbers(variances, "variances")) != 2:
        raise ValueError(f"detection.variances must be two positive numbers (centre, size), got {variances!r}")


def check_decoding(spec) -> dict:
    """The decoding parameters with defaults filled in; a ValueError (one line naming the key) for
    an unknown key, decoder, box encoding, activation, or a bad number."""
    if not isinstance(spec, dict):
        raise ValueError(f"detection must be a mapping of decoding parameters, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ValueError(f"detection has unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    out = {**DEFAULTS, **spec}
    decoder = out.get("decoder")
    if decoder not in DECODERS:
        raise ValueError(f"detection.decoder must be one of {list(DECODERS)}, got {decoder!r}")
    encoding = out.setdefault("box_encoding", ENCODINGS[decoder][0])
    if encoding not in ENCODINGS[decoder]:
        raise ValueError(f"detection.box_encoding for decoder {decoder!r} must be one of {list(ENCODINGS[decoder])}, "
                         f"got {encoding!r}")
    activation = out.setdefault("score_activation", "sigmoid")
    if activation not in ACTIVATIONS:
        raise ValueError(f"detection.score_activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if activation == "softmax" and out["objectness"]:
        raise ValueError("detection.objectness needs score_activation sigmoid (softmax has its background class)")
    classes = out.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"detection.num_classes must be a whole number >= 1, got {classes!r}")
    if decoder == "grid":
        out["strides"] = _positive_numbers(out.get("strides"), "strides")
        out.pop("anchors", None)
    else:
        out["anchors"] = _check_anchor_levels(out.get("anchors"))
        out.pop("strides", None)
    _check_thresholds(out)
    out["objectness"], out["class_agnostic"] = bool(out["objectness"]), bool(out["class_agnostic"])
    return out


def values_per_prior(spec: dict) -> int:
    """K: the raw values per prior the model must output (4 box values, then the scores)."""
    if spec["score_activation"] == "softmax":
        return 4 + 1 + spec["num_classes"]
    return 4 + int(spec["objectness"]) + spec["num_classes"]


def levels(spec: dict) -> list:
    """[(stride, [(anchor_w, anchor_h), ...] or None)] per level, in prior order."""
    if spec["decoder"] == "grid":
        return [(s, None) for s in spec["strides"]]
    return [(lv["stride"], [(size * math.sqrt(r), size / math.sqrt(r)) for size in lv["sizes"] for r in lv["aspect_ratios"]])
            for lv in spec["anchors"]]


def make_priors(spec: dict, height: int, width: int) -> np.ndarray:
    """(A, 4) float32 priors [cx, cy, w, h] in model-input pixels (grid priors: w = h = stride)."""
    out = []
    for stride, anchors in levels(spec):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], 1)
        sizes = np.array(anchors if anchors else [(stride, stride)], np.float64)
        cells = np.repeat(centres, len(sizes), axis=0)
        out.append(np.concatenate([cells, np.tile(sizes, (len(centres), 1))], 1))
    return np.concatenate(out).astype(np.float32)


def check_raw(raw, spec: dict, height: int, width: int) -> None:
    """A ValueError naming the mismatch when `raw` (A, K) or (N, A, K) does not fit the declared decoding."""
    shape = tuple(np.shape(raw))
    want_a, want_k = len(make_priors(spec, height, width)), values_per_prior(spec)
    if len(shape) not in (2, 3) or shape[-2:] != (want_a, want_k):
        raise ValueError(f"the model outputs shape {list(shape)} but its detection decoding expects (batch, {want_a}, "
                         f"{want_k}): {want_a} priors for a {height}x{width} input and 4 box values + "
                         f"{want_k - 4} score values each; fix the card's detection block or the model's heads")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def decode_scores(raw: np.ndarray, spec: dict) -> np.ndarray:
    """(A, C) class scores in [0, 1] from raw (A, K)."""
    values = raw[:, 4:].astype(np.float64)
    if spec["score_activation"] == "softmax":
        e = np.exp(values - values.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True))[:, 1:]
    if spec["objectness"]:
        return _sigmoid(values[:, :1]) * _sigmoid(values[:, 1:])
    return _sigmoid(values)


def decode_boxes(raw: np.ndarray, priors: np.ndarray, spec: dict) -> np.ndarray:
    """(A, 4) boxes [x1, y1, x2, y2] in model-input pixels from raw (A, K) and priors (A, 4)."""
    v, p = raw[:, :4].astype(np.float64), priors.astype(np.float64)
    encoding = spec["box_encoding"]
    if encoding in ("ltrb", "ltrb_exp"):
        d = (np.maximum(v, 0.0) if encoding == "ltrb" else np.exp(np.minimum(v, EXP_CLIP))) * p[:, 2:3]
        return np.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], 1)
    if encoding == "xywh_exp":
        centre, size = p[:, :2] + v[:, :2] * p[:, 2:], np.exp(np.minimum(v[:, 2:], EXP_CLIP)) * p[:, 2:]
    else:  # ssd
        var_c, var_s = spec["variances"]
        centre = p[:, :2] + v[:, :2] * var_c * p[:, 2:]
        size = p[:, 2:] * np.exp(np.minimum(v[:, 2:] * var_s, EXP_CLIP))
    return np.concatenate([centre - size / 2, centre + size / 2], 1)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [x1, y1, x2, y2] with each of `boxes` (M, 4); empty boxes have IoU 0."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """(N, N) IoU of every pair of boxes [x1, y1, x2, y2] (float32; empty boxes have IoU 0)."""
    b = np.asarray(boxes, np.float32)
    w = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, best score first (ties keep the earlier box). A box
    is suppressed by a kept box it overlaps with IoU > iou_threshold. One IoU matrix, then one pass."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) == 0:
        return np.zeros(0, np.int64)
    overlaps = pairwise_iou(np.asarray(boxes)[order]) > iou_threshold
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware NMS (boxes of different labels never suppress each other): kept indices, best first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    offset = (labels.astype(np.float64) * (float(np.abs(boxes).max()) * 2 + 1))[:, None]
    return nms(boxes + offset, scores, iou_threshold)


def _candidates(boxes: np.ndarray, scores: np.ndarray, spec: dict, threshold: float):
    """(boxes, scores, labels) of every (prior, class) over `threshold`, the best pre_nms_top_k."""
    prior, label = np.nonzero(scores > threshold)
    values = scores[prior, label]
    if len(values) > spec["pre_nms_top_k"]:
        top = np.argsort(-values, kind="stable")[:spec["pre_nms_top_k"]]
        prior, label, values = prior[top], label[top], values[top]
    return boxes[prior], values, label


def postprocess(raw: np.ndarray, spec: dict, *, input_hw, image_hw=None, score_threshold=None, priors=None) -> dict:
    """Detections of one image from its raw output (A, K): {"boxes": (n, 4) [x1, y1, x2, y2] in pixels
    of the image (of size image_hw, default the model input), "scores": (n,), "labels": (n,)},
    best first, at most max_detections, after score threshold, top-k and NMS."""
    height, width = input_hw
    priors = make_priors(spec, height, width) if priors is None else priors
    raw = np.asarray(raw, dtype=np.float32).reshape(len(priors), -1)
    threshold = spec["score_threshold"] if score_threshold is None else score_threshold
    boxes, scores, labels = _candidates(decode_boxes(raw, priors, spec), decode_scores(raw, spec), spec, threshold)
    image_h, image_w = image_hw or (height, width)
    boxes = boxes * np.array([image_w / width, image_h / height] * 2)
    boxes = np.clip(boxes, 0, [image_w, image_h, image_w, image_h])
    keep = (nms(boxes, scores, spec["iou_threshold"]) if spec["class_agnostic"]
            else batched_nms(boxes, scores, labels, spec["iou_threshold"]))[:spec["max_detections"]]
    return {"boxes": boxes[keep].astype(np.float32), "scores": scores[keep].astype(np.float32),
            "labels": labels[keep].astype(np.int64)}


def postprocess_batch(raw: np.ndarray, spec: dict, *, input_hw, image_sizes=None, score_threshold=None) -> list:
    """`postprocess` of each image of raw (N, A, K); image_sizes: N (height, width), default the input."""
    priors = make_priors(spec, *input_hw)
    sizes = image_sizes if image_sizes is not None else [tuple(input_hw)] * len(raw)
    return [postprocess(r, spec, input_hw=input_hw, image_hw=hw, score_threshold=score_threshold, priors=priors)
            for r, hw in zip(raw, sizes)]


def as_records(detections: dict, labels=None, min_score: float = 0.0) -> list:
    """JSON-ready detections: [{"label", "class_id", "score", "box": [x1, y1, x2, y2]}] with score >= min_score."""
    out = []
    for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"]):
        if score < min_score:
            continue
        name = labels[int(label)] if labels and int(label) < len(labels) else str(int(label))
        out.append({"label": name, "class_id": int(label), "score": round(float(score), 4),
                    "box": [round(float(v), 1) for v in box]})
    return out


# ---- COCO-style mAP in numpy (the device reproduces the host's pycocotools figures) ----------------
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _match_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU as pycocotools computes it: against a crowd box, intersection over the detection's area."""
    out = np.zeros((len(dets), len(gts)))
    for j, (g, is_crowd) in enumerate(zip(gts, crowd)):
        w = np.clip(np.minimum(dets[:, 2], g[2]) - np.maximum(dets[:, 0], g[0]), 0, None)
        h = np.clip(np.minimum(dets[:, 3], g[3]) - np.maximum(dets[:, 1], g[1]), 0, None)
        inter = w * h
        area_d = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
        union = area_d if is_crowd else area_d + (g[2] - g[0]) * (g[3] - g[1]) - inter
        out[:, j] = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return out


def _match_image(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray):
    """(matched (T, D), ignored (T, D)) of one image and class: greedy in score order, best IoU first,
    a real box before a crowd box (pycocotools' evaluateImg)."""
    order = np.argsort(crowd, kind="mergesort")
    gts, crowd = gts[order], crowd[order]
    ious = _match_iou(dets, gts, crowd)
    matched, ignored = np.zeros((len(IOU_THRESHOLDS), len(dets)), bool), np.zeros((len(IOU_THRESHOLDS), len(dets)), bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gts), bool)
        for d in range(len(dets)):
            best, m = min(threshold, 1 - 1e-10), -1
            for g in range(len(gts)):
                if taken[g] and not crowd[g]:
                    continue
                if m > -1 and not crowd[m] and crowd[g]:
                    break
                if ious[d, g] >= best:
                    best, m = ious[d, g], g
            if m > -1:
                matched[t, d], ignored[t, d], taken[m] = True, crowd[m], True
    return matched, ignored


def _precision_curve(scores, matched, ignored, positives: int) -> np.ndarray:
    """(T,) interpolated AP (101 recall points) of one class over all images."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    tps = np.cumsum(matched & ~ignored, axis=1).astype(float)
    fps = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    out = np.zeros(len(IOU_THRESHOLDS))
    if tps.shape[1] == 0:
        return out  # nothing detected: precision 0 at every recall
    for t in range(len(IOU_THRESHOLDS)):
        recall, precision = tps[t] / positives, tps[t] / np.maximum(tps[t] + fps[t], np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        out[t] = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0).mean()
    return out


def coco_map(truth: list, detections: list, num_classes: int, max_detections: int = 100) -> dict:
    """{"map50", "map", "map75"} as pycocotools' COCOeval ("bbox", all areas, maxDets=max_detections).
    truth: per image {"boxes" (n, 4) xyxy, "labels" (n,), "ignore" (n,) crowd/difficult}; detections:
    per image {"boxes", "scores", "labels"}, in the same pixels. Classes without a true box are left out."""
    per_class = []
    for c in range(num_classes):
        scores, matched, ignored, positives = [], [], [], 0
        for gt, det in zip(truth, detections):
            g_keep, d_keep = np.asarray(gt["labels"]) == c, np.asarray(det["labels"]) == c
            gts, crowd = np.asarray(gt["boxes"], float).reshape(-1, 4)[g_keep], np.asarray(gt["ignore"], bool)[g_keep]
            d_scores = np.asarray(det["scores"], float)[d_keep]
            order = np.argsort(-d_scores, kind="mergesort")[:max_detections]
            dets = np.asarray(det["boxes"], float).reshape(-1, 4)[d_keep][order]
            positives += int((~crowd).sum())
            m, i = _match_image(dets, gts, crowd)
            scores.append(d_scores[order])
            matched.append(m)
            ignored.append(i)
        if positives:
            per_class.append(_precision_curve(np.concatenate(scores), np.concatenate(matched, 1),
                                              np.concatenate(ignored, 1), positives))
    if not per_class:
        return {"map50": 0.0, "map": 0.0, "map75": 0.0}
    ap = np.mean(per_class, axis=0)
    return {"map50": float(ap[0]), "map": float(ap.mean()), "map75": float(ap[5])}
