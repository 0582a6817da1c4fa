"""Detection annotations, whatever the file format: one `DetectionSample` per image (boxes in the
image's own pixels) and a `DetectionSplit` with the class list and a report of what was changed.

Boxes are [x1, y1, x2, y2] floats in 0-based pixel edges of the original image (COCO's
[x, y, w, h] is x1 = x, x2 = x + w; VOC's 1-based inclusive corners are x1 = xmin - 1, x2 = xmax;
YOLO's normalised centres are scaled by the image size). A box reaching outside the image is
clipped to it; a box with no area (before or after clipping) or with non-finite numbers is
dropped; both are counted in the split's report, never silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError

FORMATS = ("coco", "yolo", "voc")
REPORT_KEYS = ("images", "images_without_boxes", "boxes", "boxes_clipped", "boxes_dropped_no_area",
               "boxes_dropped_outside", "boxes_dropped_invalid", "boxes_ignored", "hidden_files_ignored")


@dataclass
class DetectionSample:
    """One image: its file (None for generated images, whose `pixels` are given), its size and boxes."""

    name: str
    path: Optional[Path]
    width: int
    height: int
    boxes: np.ndarray   # (n, 4) float32 [x1, y1, x2, y2], inside the image, area > 0
    labels: np.ndarray  # (n,) int64 index into the split's classes
    ignore: np.ndarray  # (n,) bool: crowd / difficult boxes, neither missed nor false positives in mAP
    pixels: Optional[np.ndarray] = None  # H x W x 3 uint8 (generated data only)


@dataclass
class DetectionSplit:
    """The images of one split, the class names (label order) and what loading changed or skipped."""

    samples: list
    classes: list
    source: str
    format: str
    report: dict = field(default_factory=lambda: dict.fromkeys(REPORT_KEYS, 0))
    synthetic: bool = False

    def __len__(self) -> int:
        return len(self.samples)


def new_report() -> dict:
    return dict.fromkeys(REPORT_KEYS, 0)


def clean_boxes(boxes, width: int, height: int, report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(boxes clipped to the image, mask of those to keep) for boxes (n, 4) [x1, y1, x2, y2]. Counts
    clipped, no-area, outside and non-finite boxes in `report`."""
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(1)
    boxes[~finite] = 0.0
    area_before = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    clipped = np.clip(boxes, 0.0, [width, height, width, height])
    area_after = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (np.abs(clipped - boxes) > 1e-6).any(1)
    report["boxes_dropped_invalid"] += int((~finite).sum())
    report["boxes_dropped_no_area"] += int((finite & ~area_before).sum())
    report["boxes_dropped_outside"] += int((finite & area_before & ~area_after).sum())
    report["boxes_clipped"] += int((finite & area_after & changed).sum())
    return clipped, finite & area_after


def make_sample(name: str, *, path: Optional[Path], size: tuple, boxes, labels, ignore, report: dict,
                pixels: Optional[np.ndarray] = None) -> DetectionSample:
    """A sample with its boxes clipped / dropped (counted in `report`)."""
    width, height = size
    clipped, keep = clean_boxes(boxes, width, height, report)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)[keep]
    ignore = np.asarray(ignore, dtype=bool).reshape(-1)[keep]
    report["images"] += 1
    report["boxes"] += int((~ignore).sum())
    report["boxes_ignored"] += int(ignore.sum())
    report["images_without_boxes"] += int(not (~ignore).any())
    return DetectionSample(name, path, int(width), int(height), clipped[keep].astype(np.float32), labels, ignore, pixels)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image file's header; an unreadable image is a one-line error."""
    from PIL import Image

    from toolkit.core.files import IMAGE_MAX_BYTES, file_problem

    problem = file_problem(path, IMAGE_MAX_BYTES)
    if problem:
        raise EdgeShrinkError(f"image {path} {problem}; remove it from the annotations or replace it with an image file")
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # PIL raises many types for foreign or truncated files
        raise EdgeShrinkError(f"image {path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); remove it from "
                              "the annotations or replace it") from None


def list_images(folder: Path, report: dict) -> list[Path]:
    """Image files of `folder` (sorted; hidden files ignored and counted; other suffixes skipped)."""
    from toolkit.data.imagefolder import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise EdgeShrinkError(f"image folder {folder} does not exist; check the dataset layout (see docs) or --data")
    files = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            report["hidden_files_ignored"] += 1
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            files.append(f)
    return files


def safe_relative(name: str, where: str) -> str:
    """An image name from an annotation file, refused when it is absolute or climbs out with '..'."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise EdgeShrinkError(f"{where}: image name {name!r} must be a relative path inside the dataset; fix the "
                              "annotation file")
    return name


def check_classes(card_labels: list, found: list, where: str) -> list:
    """The class list: the card's labels, which must equal the dataset's class names in order
    (a dataset without names takes the card's). Returns the list to number labels by."""
    if not card_labels:
        return list(found)
    if list(found) == list(card_labels):
        return list(card_labels)
    missing, extra = sorted(set(card_labels) - set(found)), sorted(set(found) - set(card_labels))
    why = "the same names in another order" if not missing and not extra else f"missing {missing[:4]}, unexpected {extra[:4]}"
    raise EdgeShrinkError(f"{where} names classes {list(found)[:6]} but the model card's labels are "
                          f"{list(card_labels)[:6]} ({why}); point --data at the dataset the model was made for, "
                          "or make the card's labels the dataset's class names in order")
