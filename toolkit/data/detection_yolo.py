"""YOLO txt detection annotations (the Ultralytics / Darknet layout).

Images in `images/<split>/` with labels in `labels/<split>/` (same relative name, `.txt`), or
`<split>/images/` + `<split>/labels/`, or the folders a `data.yaml` names for the split (`train:`,
`val:`; relative to the dataset root; the labels folder is the images folder with its last
`images` part replaced by `labels`). One line per box: `class cx cy w h`, normalised to [0, 1]. An
image without a label file has no boxes. Class names: `data.yaml`'s `names` (list or {index: name}),
else `classes.txt` / `obj.names`, else the card's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.detection_records import (DetectionSplit, check_classes, image_size, list_images, make_sample,
                                            new_report, safe_relative)


def _data_yaml(root: Path) -> dict:
    from toolkit.core.schema import load_yaml

    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            return load_yaml(root / name, "YOLO data.yaml")
    return {}


def _names_from_yaml(meta: dict, where: Path) -> list | None:
    names = meta.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise EdgeShrinkError(f"{where}: names must be numbered 0..{len(names) - 1}, got keys {sorted(names)[:6]}; fix it")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise EdgeShrinkError(f"{where}: names must be a list of class names (or {{index: name}}); fix it")
    return names


def class_names(root: Path, card_labels: list) -> list:
    """The class names in index order (data.yaml, classes.txt / obj.names, else the card's labels)."""
    from toolkit.core.files import read_bytes_capped

    names = _names_from_yaml(_data_yaml(root), root / "data.yaml")
    for file in ("classes.txt", "obj.names"):
        if names is None and (root / file).is_file():
            text = read_bytes_capped(root / file, "class names file", "write one class name per line").decode("utf-8", "replace")
            names = [line.strip() for line in text.splitlines() if line.strip()]
    if names is None:
        if not card_labels:
            raise EdgeShrinkError(f"YOLO dataset {root} has no class names (data.yaml names:, classes.txt or obj.names) "
                                  "and the card has no labels; add one of them")
        return list(card_labels)
    return check_classes(card_labels, names, f"YOLO dataset {root}")


def split_folders(root: Path, split: str) -> tuple[Path, Path]:
    """(images folder, labels folder) of the split."""
    named = _data_yaml(root).get(split)
    if isinstance(named, str):
        images = root / safe_relative(named, str(root / "data.yaml"))
        parts = list(images.relative_to(root).parts)
        if "images" in parts:
            parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        return images, root.joinpath(*parts)
    for images, labels in ((root / "images" / split, root / "labels" / split), (root / split / "images", root / split / "labels")):
        if images.is_dir():
            return images, labels
    raise EdgeShrinkError(f"YOLO dataset {root} has no images for split '{split}' (looked for images/{split}/ and "
                          f"{split}/images/, or '{split}:' in data.yaml); check --data and the card's dataset")


def read_label_file(path: Path, classes: int, size: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(boxes xyxy in pixels, labels) of one label file; a malformed line is a one-line error."""
    from toolkit.core.files import read_bytes_capped

    text = read_bytes_capped(path, "YOLO label file", "write one 'class cx cy w h' line per box").decode("utf-8", "replace")
    boxes, labels = [], []
    width, height = size
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:])
        except ValueError:
            raise EdgeShrinkError(f"{path}:{number}: expected 'class cx cy w h' (5 numbers), got {line.strip()[:60]!r}; "
                                  "fix the label file") from None
        if not 0 <= cls < classes:
            raise EdgeShrinkError(f"{path}:{number}: class {cls} is not one of the {classes} class names; fix the label "
                                  "file or the names")
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        labels.append(cls)
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(labels, np.int64)


def load_yolo_split(root: Path, split: str, card_labels: list) -> DetectionSplit:
    """The split's images and boxes (every image of the folder, hidden files ignored)."""
    classes = class_names(root, card_labels)
    images, labels_dir = split_folders(root, split)
    report, samples = new_report(), []
    for file in list_images(images, report):
        size = image_size(file)
        label_file = labels_dir / file.relative_to(images).with_suffix(".txt")
        if label_file.exists() or label_file.is_symlink():
            boxes, labels = read_label_file(label_file, len(classes), size)
        else:
            boxes, labels = np.zeros((0, 4)), np.zeros(0, np.int64)
        samples.append(make_sample(str(file.relative_to(root)), path=file, size=size, boxes=boxes, labels=labels,
                                   ignore=np.zeros(len(labels), bool), report=report))
    if not samples:
        raise EdgeShrinkError(f"no images in {images}; check --data and the card's dataset")
    return DetectionSplit(samples, classes, str(root), "yolo", report)
