"""Detection data for a card: the format (the card's `dataset.format`, else detected from the
folder), the train and held-out splits with one class list, decoded pixels, and generated data.

    train, val = detection_splits(card, root=None, synthetic=False)
    pixels = decode_resized(val, height, width)          # what the model sees: N x H x W x 3 uint8
    images, boxes, labels = decode_for_training(train, max_side)  # smaller copies for augmentation"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.detection_records import FORMATS, DetectionSplit, make_sample, new_report


def detect_format(root: Path, split: str) -> str:
    """"coco", "yolo" or "voc", from the files under `root`; a folder that is none of them is an error."""
    from toolkit.data.detection_coco import coco_annotation_file

    if not root.is_dir():
        raise EdgeShrinkError(f"data folder {root} does not exist; pass --data PATH, set EDGESHRINK_DATA_DIR, or use "
                              "--synthetic-data")
    if coco_annotation_file(root, split) is not None:
        return "coco"
    if (root / "Annotations").is_dir() or (root / split / "Annotations").is_dir():
        return "voc"
    if any((root / p).exists() for p in ("data.yaml", "dataset.yaml", "labels", f"{split}/labels")):
        return "yolo"
    raise EdgeShrinkError(f"{root} holds no detection annotations I know (COCO annotations/instances_{split}.json, YOLO "
                          "labels/ + data.yaml, VOC Annotations/); set the card's dataset.format or fix --data")


def load_split(root: Path, split: str, fmt: str, classes: list) -> DetectionSplit:
    """One split in format `fmt`, numbered by `classes` (empty: the dataset's own names)."""
    if fmt == "coco":
        from toolkit.data.detection_coco import load_coco_split

        return load_coco_split(root, split, classes)
    if fmt == "yolo":
        from toolkit.data.detection_yolo import load_yolo_split

        return load_yolo_split(root, split, classes)
    from toolkit.data.detection_voc import load_voc_split, voc_class_names

    return load_voc_split(root, split, classes or voc_class_names(root, split))


def detection_splits(card, *, root: Optional[str], synthetic: bool) -> tuple[DetectionSplit, DetectionSplit]:
    """(train, held-out) splits of the card's dataset (or generated ones); both use the train split's
    class list, which must be the card's labels when the card has them."""
    from toolkit.data.datasets import dataset_root

    if synthetic:
        classes = list(card.labels) or ["object"]
        return synthetic_split(classes, 48, seed=1), synthetic_split(classes, 16, seed=2)
    folder, spec = dataset_root(card, root), card.data_spec()
    fmt = getattr(spec, "format", None) or detect_format(folder, spec.train)
    if fmt not in FORMATS:
        raise EdgeShrinkError(f"dataset.format {fmt!r} is not a detection format; use one of {', '.join(FORMATS)}")
    train = load_split(folder, spec.train, fmt, list(card.labels))
    val = load_split(folder, spec.val, fmt, train.classes)
    return train, val


def _resize_array(pixels: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    from PIL import Image

    from toolkit.data.preprocess import resize_image

    return resize_image(Image.fromarray(pixels), height, width, interpolation=interpolation)


def _decode(split: DetectionSplit, sizes: list, interpolation: str, desc: str, progress: bool) -> list:
    """Each sample decoded to RGB uint8 at its (height, width) in `sizes` (threads, watched)."""
    from toolkit.data.imagefolder import decode_all

    if split.synthetic:
        return [_resize_array(s.pixels, h, w, interpolation) for s, (h, w) in zip(split.samples, sizes)]
    decoded = decode_all([(str(s.path), h, w, interpolation, 3) for s, (h, w) in zip(split.samples, sizes)], desc, progress)
    bad = [(s.path, d) for s, d in zip(split.samples, decoded) if isinstance(d, str)]
    if bad:
        raise EdgeShrinkError(f"{len(bad)} image(s) cannot be decoded, first {bad[0][0]} ({bad[0][1]}); remove or replace them")
    return decoded


def decode_resized(split: DetectionSplit, height: int, width: int, *, interpolation: str = "bilinear",
                   progress: bool = False) -> np.ndarray:
    """N x H x W x 3 uint8: every image stretched to the model input (as the device does)."""
    return np.stack(_decode(split, [(height, width)] * len(split), interpolation, "decode held-out", progress))


def decode_for_training(split: DetectionSplit, max_side: int, *, interpolation: str = "bilinear",
                        progress: bool = False) -> tuple[list, list, list]:
    """([H x W x 3 uint8], [boxes (n, 4) in those pixels], [labels (n,)]): each image shrunk (aspect
    kept) so its longer side is at most `max_side`, for augmentation; ignore-boxes are left out."""
    sizes = []
    for s in split.samples:
        scale = min(1.0, max_side / max(s.width, s.height))
        sizes.append((max(1, round(s.height * scale)), max(1, round(s.width * scale))))
    images = _decode(split, sizes, interpolation, "decode train", progress)
    boxes = [s.boxes[~s.ignore] * np.array([w / s.width, h / s.height] * 2, np.float32)
             for s, (h, w) in zip(split.samples, sizes)]
    return images, boxes, [s.labels[~s.ignore] for s in split.samples]


def synthetic_split(classes: list, count: int, seed: int, size: tuple = (96, 128)) -> DetectionSplit:
    """Generated, learnable detection data: noisy backgrounds with 1-3 solid rectangles whose colour
    is their class. Tests and data-less machines only; every output built on it says `synthetic`."""
    rng = np.random.default_rng(seed)
    height, width = size
    colours = np.array([[(c * 97 + 40) % 256, (c * 53 + 200) % 256, (c * 151 + 90) % 256] for c in range(len(classes))])
    report, samples = new_report(), []
    for i in range(count):
        img = rng.normal(110, 25, (height, width, 3))
        boxes, labels = [], []
        for _ in range(rng.integers(1, 4)):
            w, h = rng.uniform(0.2, 0.5) * width, rng.uniform(0.25, 0.6) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            label = int(rng.integers(len(classes)))
            img[int(y):int(y + h), int(x):int(x + w)] = colours[label] + rng.normal(0, 10, 3)
            boxes.append([int(x), int(y), int(x + w), int(y + h)])
            labels.append(label)
        pixels = np.clip(img, 0, 255).astype(np.uint8)
        samples.append(make_sample(f"synthetic_{seed}_{i:03d}", path=None, size=(width, height), boxes=boxes, labels=labels,
                                   ignore=np.zeros(len(labels), bool), report=report, pixels=pixels))
    return DetectionSplit(samples, list(classes), "synthetic", "synthetic", report, synthetic=True)
