"""Training batches for detection: augmented images at the model input (normalised NCHW) and
their boxes as one padded tensor (B, M, 5) of [label, x1, y1, x2, y2] rows, label -1 for padding."""

from __future__ import annotations

import numpy as np

from toolkit.data.preprocess import InputSpec, normalize_nhwc_uint8


def pad_targets(boxes: list, labels: list) -> np.ndarray:
    """(B, M, 5) float32 [label, x1, y1, x2, y2] with M the most boxes of any image (at least 1)."""
    rows = max([1] + [len(b) for b in boxes])
    out = np.full((len(boxes), rows, 5), -1.0, np.float32)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        out[i, :len(b), 0] = lab
        out[i, :len(b), 1:] = b
    return out


def detection_batches(images: list, boxes: list, labels: list, spec: InputSpec, *, batch_size: int, seed: int,
                      augmentation=None):
    """(batches(epoch), steps per epoch): each epoch a seeded permutation of the images, augmented
    (toolkit.data.detection_augment) and stretched to the input; the last partial batch is dropped
    when there is more than one batch."""
    import torch

    from toolkit.data.detection_augment import AugmentConfig, augment

    config = augmentation or AugmentConfig()
    batch_size = min(batch_size, len(images))
    steps = max(1, len(images) // batch_size)

    def batches(epoch: int):
        rng = np.random.default_rng(seed * 1000 + epoch)
        order = rng.permutation(len(images))
        for step in range(steps):
            picked = [augment(images[i], boxes[i], labels[i], rng, height=spec.height, width=spec.width, config=config)
                      for i in order[step * batch_size:(step + 1) * batch_size]]
            x = normalize_nhwc_uint8(np.stack([p[0] for p in picked]), spec)
            y = pad_targets([p[1] for p in picked], [p[2] for p in picked])
            yield torch.from_numpy(x), torch.from_numpy(y)

    return batches, steps
