"""COCO-style detection metrics with pycocotools: mAP@0.5 (`map50`, the primary metric),
mAP@0.5:0.95 (`map`) and mAP@0.75 (`map75`), over boxes in each image's own pixels.

Ground truth comes from the loaded samples (ignore boxes are COCO `iscrowd` regions: a detection
on them is neither a hit nor a false positive); detections from the shared decoder
(deploy/common/edgeshrink_detect.py). Perfect detections score exactly 1.0."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from toolkit.core.errors import EdgeShrinkError


def _xywh(box) -> list:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_ground_truth(samples: list, classes: list) -> dict:
    """A COCO dataset dict of the samples (image ids 1..N, category ids 1..C)."""
    images, annotations = [], []
    for i, s in enumerate(samples, 1):
        images.append({"id": i, "width": int(s.width), "height": int(s.height), "file_name": s.name})
        for box, label, ignore in zip(s.boxes, s.labels, s.ignore):
            xywh = _xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label) + 1, "bbox": xywh,
                                "area": xywh[2] * xywh[3], "iscrowd": int(ignore)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)]}


def coco_detections(detections: list) -> list:
    """COCO result records from per-image {"boxes", "scores", "labels"} (image ids 1..N)."""
    return [{"image_id": i, "category_id": int(label) + 1, "bbox": _xywh(box), "score": float(score)}
            for i, det in enumerate(detections, 1)
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"])]


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise EdgeShrinkError("detection metrics need pycocotools; install it (pip install pycocotools)") from None
    return COCO, COCOeval


def coco_map(samples: list, classes: list, detections: list) -> dict:
    """{"map50", "map", "map75"} in [0, 1] of `detections` (one dict per sample, boxes in the sample's
    pixels). No ground-truth box at all gives 0.0 for every figure (nothing can be found)."""
    if len(detections) != len(samples):
        raise ValueError(f"{len(detections)} detection lists for {len(samples)} images")
    gt = coco_ground_truth(samples, classes)
    results = coco_detections(detections)
    if not results or not any(not a["iscrowd"] for a in gt["annotations"]):
        return {"map50": 0.0, "map": 0.0, "map75": 0.0}
    COCO, COCOeval = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [max(0.0, float(v)) for v in evaluation.stats[:3]]  # -1: no ground truth in a category
    return {"map50": stats[1], "map": stats[0], "map75": stats[2]}


def detections_as_truth(detections: list, samples: list, min_score: float) -> list:
    """Samples whose boxes are the given detections over `min_score` (to score one file against another)."""
    from dataclasses import replace

    out = []
    for s, det in zip(samples, detections):
        keep = det["scores"] >= min_score
        out.append(replace(s, boxes=np.asarray(det["boxes"])[keep], labels=np.asarray(det["labels"])[keep],
                           ignore=np.zeros(int(keep.sum()), bool)))
    return out
