"""COCO JSON detection annotations: `annotations/instances_<split>.json` (or `<split>.json`,
`annotations/<split>.json`, `<split>/_annotations.coco.json`), images found by `file_name` under
`images/`, `images/<split>/`, `<split>/` or the dataset root.

Classes are the categories in id order. `iscrowd` boxes are kept as ignore regions (they count as
neither missed nor false detections in mAP, and are not trained on). Each image's width and
height must be those of the file: annotations made for another size would put every box in the
wrong place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.detection_records import (DetectionSplit, check_classes, image_size, make_sample, new_report,
                                            safe_relative)

COCO_MAX_BYTES = 1 << 30  # the full COCO train2017 file is ~450 MB


def coco_annotation_file(root: Path, split: str) -> Path | None:
    """The split's annotation file, by the usual names, or None."""
    for rel in (f"annotations/instances_{split}.json", f"annotations/{split}.json", f"{split}.json",
                f"{split}/_annotations.coco.json"):
        if (root / rel).is_file():
            return root / rel
    return None


def _read_json(path: Path) -> dict:
    from toolkit.core.files import read_bytes_capped

    raw = read_bytes_capped(path, "COCO annotation file", "pass a COCO JSON file", COCO_MAX_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EdgeShrinkError(f"COCO annotation file {path} is not valid JSON ({type(exc).__name__}); fix or "
                              "re-export it") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise EdgeShrinkError(f"COCO annotation file {path} needs lists 'images', 'annotations' and 'categories'; "
                              "fix or re-export it")
    return data


def _field(item, key: str, kind, path: Path, what: str):
    value = item.get(key) if isinstance(item, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EdgeShrinkError(f"COCO annotation file {path}: an entry of '{what}' has no valid '{key}' ({str(item)[:80]}); "
                              "fix the file")
    return value


def _categories(data: dict, path: Path) -> tuple[dict, list]:
    """({category id: label index}, names in id order)."""
    cats = sorted(((_field(c, "id", int, path, "categories"), _field(c, "name", str, path, "categories"))
                   for c in data["categories"]))
    if not cats:
        raise EdgeShrinkError(f"COCO annotation file {path} has no categories; add them")
    return {cid: i for i, (cid, _) in enumerate(cats)}, [name for _, name in cats]


def _image_folder(root: Path, split: str, annotation: Path, first: str) -> Path:
    for folder in (root / "images", root / "images" / split, root / split, root, annotation.parent):
        if (folder / first).is_file():
            return folder
    raise EdgeShrinkError(f"image {first} of {annotation} is not under {root}/images, {root}/images/{split}, "
                          f"{root}/{split} or {root}; put the images there or point --data at the dataset root")


def _boxes_by_image(data: dict, cat_index: dict, path: Path) -> dict:
    """{image id: ([boxes xyxy], [labels], [ignore])} from the annotations."""
    found: dict = {}
    for ann in data["annotations"]:
        image_id = _field(ann, "image_id", int, path, "annotations")
        cat = _field(ann, "category_id", int, path, "annotations")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise EdgeShrinkError(f"COCO annotation file {path}: annotation {ann.get('id')} has bbox {str(bbox)[:60]}, "
                                  "not [x, y, width, height]; fix the file")
        if cat not in cat_index:
            raise EdgeShrinkError(f"COCO annotation file {path}: annotation {ann.get('id')} has category_id {cat}, "
                                  "which is not in 'categories'; fix the file")
        x, y, w, h = (float(v) for v in bbox)
        boxes, labels, ignore = found.setdefault(image_id, ([], [], []))
        boxes.append([x, y, x + w, y + h])
        labels.append(cat_index[cat])
        ignore.append(bool(ann.get("iscrowd", 0)))
    return found


def load_coco_split(root: Path, split: str, card_labels: list) -> DetectionSplit:
    """The split's images and boxes; refuses missing files, malformed JSON, unknown categories,
    sizes that disagree with the image files, and classes other than the card's."""
    path = coco_annotation_file(root, split)
    if path is None:
        raise EdgeShrinkError(f"no COCO annotation file for split '{split}' under {root} (looked for "
                              f"annotations/instances_{split}.json, {split}.json, ...); check --data and the card's dataset")
    data = _read_json(path)
    cat_index, names = _categories(data, path)
    classes = check_classes(card_labels, names, str(path))
    by_image, report, samples = _boxes_by_image(data, cat_index, path), new_report(), []
    images = [(_field(i, "id", int, path, "images"), safe_relative(_field(i, "file_name", str, path, "images"), str(path)), i)
              for i in data["images"]]
    folder = _image_folder(root, split, path, images[0][1]) if images else root
    for image_id, name, entry in sorted(images, key=lambda t: t[1]):
        if Path(name).name.startswith("."):
            report["hidden_files_ignored"] += 1
            continue
        size = image_size(folder / name)
        stated = (entry.get("width"), entry.get("height"))
        if stated != (None, None) and tuple(stated) != tuple(size):
            raise EdgeShrinkError(f"{path}: image {name} is {size[0]}x{size[1]} pixels but its entry says "
                                  f"{stated[0]}x{stated[1]}; fix the annotation's width/height (or the image)")
        boxes, labels, ignore = by_image.get(image_id, ([], [], []))
        samples.append(make_sample(name, path=folder / name, size=size, boxes=np.array(boxes, np.float64).reshape(-1, 4),
                                   labels=labels, ignore=ignore, report=report))
    if not samples:
        raise EdgeShrinkError(f"COCO annotation file {path} lists no images; check the split")
    return DetectionSplit(samples, classes, str(root), "coco", report)
