"""Detection-only outputs: detections.png, held-out images with the truth (green) and a file's
detections (red, with scores) drawn in the images' own pixels (Pillow only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def draw_boxes(image, boxes, *, colour: tuple, width: int = 3, captions=None):
    """Draw [x1, y1, x2, y2] boxes (with optional captions) on a PIL image in place."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    for i, box in enumerate(boxes):
        draw.rectangle([float(v) for v in box], outline=colour, width=width)
        if captions is not None:
            draw.text((float(box[0]) + 3, float(box[1]) + 2), captions[i], fill=colour)
    return image


def example_image(task, index: int, detections: dict, *, side: int = 320):
    """One held-out image at `side` pixels on its longer side, truth and detections drawn."""
    from PIL import Image

    sample = task.val.samples[index]
    image = (Image.fromarray(sample.pixels) if sample.pixels is not None else Image.open(sample.path)).convert("RGB")
    scale = side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw_boxes(image, sample.boxes * scale, colour=(40, 200, 60))
    keep = detections["scores"] >= task.decoding["draw_threshold"]
    captions = [f"{task.labels[int(c)] if int(c) < len(task.labels) else c} {s:.2f}"
                for c, s in zip(detections["labels"][keep], detections["scores"][keep])]
    return draw_boxes(image, detections["boxes"][keep] * scale, colour=(230, 40, 40), width=2, captions=captions)


def draw_examples(path: Path, task, outputs: np.ndarray, *, title: str, count: int = 6, side: int = 320) -> None:
    """A grid of the held-out images with the most boxes: truth green, detections red."""
    from PIL import Image, ImageDraw

    found = task.detections(outputs)
    order = sorted(range(len(task.val.samples)), key=lambda i: (-len(task.val.samples[i].boxes), i))[:count]
    tiles = [example_image(task, i, found[i], side=side) for i in order]
    columns = min(3, len(tiles))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * side, rows * side + 24), (255, 255, 255))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * side, 24 + (k // columns) * side))
    ImageDraw.Draw(sheet).text((6, 6), f"{title} (green: truth, red: detections >= {task.decoding['draw_threshold']})",
                               fill=(0, 0, 0))
    sheet.save(path)
