"""Detection augmentation (numpy + Pillow): a crop that keeps every box whole, scale jitter
(zoom in by cropping, zoom out onto a larger mean-coloured canvas), horizontal flip and a mild
brightness/contrast change; the result is stretched to the model input like every other image.

    image, boxes, labels = augment(image_u8, boxes_xyxy, labels, rng, height=320, width=320)"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    crop_probability: float = 0.5
    expand_probability: float = 0.3
    max_expand: float = 1.8        # zoom out: canvas side up to this many times the image side
    min_crop: float = 0.4          # zoom in: the crop keeps at least this fraction of each side
    flip_probability: float = 0.5
    colour: float = 0.2            # brightness and contrast factors in [1 - colour, 1 + colour]
    min_box_pixels: float = 2.0    # boxes narrower or lower than this after resizing are dropped


def _box_keeping_crop(shape: tuple, boxes: np.ndarray, rng, min_crop: float) -> tuple[int, int, int, int]:
    """A random crop (x0, y0, x1, y1) that holds every box whole and at least `min_crop` of each side."""
    height, width = shape
    if len(boxes):
        ux0, uy0 = np.floor(boxes[:, :2].min(0)).astype(int)
        ux1, uy1 = np.ceil(boxes[:, 2:].max(0)).astype(int)
    else:
        ux0, uy0, ux1, uy1 = width // 2, height // 2, width // 2, height // 2
    out = []
    for lo, hi, side in ((ux0, ux1, width), (uy0, uy1, height)):
        lo, hi = int(np.clip(lo, 0, side)), int(np.clip(hi, 0, side))
        need = max(hi - lo, int(min_crop * side))
        size = int(rng.integers(need, side + 1)) if need < side else side
        start_lo, start_hi = max(0, hi - size), min(lo, side - size)
        start = int(rng.integers(start_lo, start_hi + 1)) if start_hi >= start_lo else max(0, min(lo, side - size))
        out.append((start, start + size))
    (x0, x1), (y0, y1) = out
    return x0, y0, x1, y1


def _expand(image: np.ndarray, boxes: np.ndarray, rng, max_expand: float) -> tuple[np.ndarray, np.ndarray]:
    """The image at a random place on a canvas up to `max_expand` times larger, filled with its mean colour."""
    height, width = image.shape[:2]
    factor = rng.uniform(1.0, max_expand)
    canvas_h, canvas_w = int(height * factor), int(width * factor)
    top, left = int(rng.integers(0, canvas_h - height + 1)), int(rng.integers(0, canvas_w - width + 1))
    canvas = np.empty((canvas_h, canvas_w, image.shape[2]), np.uint8)
    canvas[:] = image.reshape(-1, image.shape[2]).mean(0).astype(np.uint8)
    canvas[top:top + height, left:left + width] = image
    return canvas, boxes + np.array([left, top, left, top], np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _colour(image: np.ndarray, rng, amount: float) -> np.ndarray:
    if amount <= 0:
        return image
    contrast, brightness = rng.uniform(1 - amount, 1 + amount, 2)
    mean = image.mean()
    return np.clip((image.astype(np.float32) - mean) * contrast + mean * brightness, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng, *, height: int, width: int,
            config: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 at the model input, boxes (n, 4) in its pixels, their labels) after random
    expand, box-keeping crop, flip and colour change; boxes smaller than `min_box_pixels` after
    resizing are dropped with their labels."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if rng.random() < config.expand_probability:
        image, boxes = _expand(image, boxes, rng, config.max_expand)
    if rng.random() < config.crop_probability:
        x0, y0, x1, y1 = _box_keeping_crop(image.shape[:2], boxes, rng, config.min_crop)
        image = image[y0:y1, x0:x1]
        boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
    src_h, src_w = image.shape[:2]
    image = _resize(np.ascontiguousarray(image), height, width)
    boxes = np.clip(boxes * np.array([width / src_w, height / src_h] * 2, np.float32), 0, [width, height, width, height])
    if rng.random() < config.flip_probability:
        image = image[:, ::-1]
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= config.min_box_pixels) & ((boxes[:, 3] - boxes[:, 1]) >= config.min_box_pixels)
    return np.ascontiguousarray(_colour(image, rng, config.colour)), boxes[keep], np.asarray(labels).reshape(-1)[keep]
