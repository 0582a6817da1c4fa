"""Shared pieces of the detection tests: a tiny anchor-free YOLO-style model (source code, as a
user's own file would hold it), and one small dataset written as COCO JSON, YOLO txt and VOC XML."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

TINY_YOLO = textwrap.dedent('''
    import torch
    import torch.nn as nn


    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


    class TinyYolo(nn.Module):
        """Anchor-free grid heads at strides 8 and 16; output (N, priors, 4 + C), nothing decoded."""

        def __init__(self, num_classes=2, width=16):
            super().__init__()
            self.stem = nn.Sequential(block(3, width, 2), block(width, width, 2), block(width, 2 * width, 2))
            self.down = block(2 * width, 2 * width, 2)
            self.heads = nn.ModuleList(nn.Conv2d(2 * width, 4 + num_classes, 1) for _ in range(2))
            for head in self.heads:
                nn.init.constant_(head.bias[:4], 1.0)
                nn.init.constant_(head.bias[4:], -4.6)

        def forward(self, x):
            p8 = self.stem(x)
            p16 = self.down(p8)
            return torch.cat([h(p).flatten(2) for h, p in zip(self.heads, (p8, p16))], 2).transpose(1, 2)


    def build(num_classes=2, width=16):
        return TinyYolo(num_classes, width)
''')

CLASSES = ["cat", "dog"]
DECODING = {"decoder": "grid", "strides": [8, 16], "box_encoding": "ltrb"}


def tiny_yolo_factory():
    """The `build(num_classes, width)` of the TinyYolo source above."""
    namespace: dict = {}
    exec(compile(TINY_YOLO, "tiny_yolo.py", "exec"), namespace)  # noqa: S102 - the test's own source
    return namespace["build"]


def tiny_yolo(num_classes: int = 2, width: int = 16, seed: int = 0):
    """An instance of the TinyYolo above (random weights, seeded)."""
    import torch

    torch.manual_seed(seed)
    return tiny_yolo_factory()(num_classes, width).eval()


def dataset_items(count: int, seed: int) -> list[dict]:
    """Images of mixed sizes and modes with integer boxes [x1, y1, x2, y2] (0-based pixel edges)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        width, height = int(rng.integers(60, 140)), int(rng.integers(50, 120))
        pixels = rng.normal(110, 20, (height, width, 3))
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            label = int(rng.integers(len(CLASSES)))
            pixels[y:y + h, x:x + w] = (230, 40, 40) if label == 0 else (40, 40, 230)
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        mode = ("RGB", "L", "RGBA")[i % 3]
        items.append({"name": f"img_{i:03d}.{'jpg' if mode == 'RGB' else 'png'}", "mode": mode, "size": (width, height),
                      "pixels": np.clip(pixels, 0, 255).astype(np.uint8), "boxes": boxes, "labels": labels})
    return items


def _save_image(item: dict, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(item["pixels"]).convert(item["mode"]).save(folder / item["name"], quality=95)


def write_coco(root: Path, splits: dict) -> Path:
    for split, items in splits.items():
        images, annotations = [], []
        for i, item in enumerate(items, 1):
            _save_image(item, root / "images")
            images.append({"id": i, "file_name": item["name"], "width": item["size"][0], "height": item["size"][1]})
            for box, label in zip(item["boxes"], item["labels"]):
                x1, y1, x2, y2 = box
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        categories = [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def write_yolo(root: Path, splits: dict) -> Path:
    for split, items in splits.items():
        for item in items:
            _save_image(item, root / "images" / split)
            width, height = item["size"]
            lines = [f"{label} {(x1 + x2) / 2 / width:.8f} {(y1 + y2) / 2 / height:.8f} {(x2 - x1) / width:.8f} "
                     f"{(y2 - y1) / height:.8f}" for (x1, y1, x2, y2), label in zip(item["boxes"], item["labels"])]
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{Path(item['name']).stem}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASSES)))
    return root


def write_voc(root: Path, splits: dict) -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        for item in items:
            _save_image(item, root / "JPEGImages")
            objects = "".join(
                f"<object><name>{CLASSES[label]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for (x1, y1, x2, y2), label in zip(item["boxes"], item["labels"]))
            size = f"<size><width>{item['size'][0]}</width><height>{item['size'][1]}</height><depth>3</depth></size>"
            (root / "Annotations" / f"{Path(item['name']).stem}.xml").write_text(
                f"<annotation><filename>{item['name']}</filename>{size}{objects}</annotation>")
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{Path(i['name']).stem}\n" for i in items))
    return root


WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}


def write_all_formats(tmp_path: Path, *, train: int = 12, val: int = 6) -> dict:
    """{format: dataset root} of the same images and boxes in each format."""
    splits = {"train": dataset_items(train, seed=1), "val": dataset_items(val, seed=2)}
    for i, item in enumerate(splits["val"]):
        item["name"] = f"val_{i:03d}{Path(item['name']).suffix}"  # one image folder for both splits (COCO, VOC)
    return {fmt: write(tmp_path / fmt, splits) for fmt, write in WRITERS.items()}
