"""Segmentation-only outputs: a PNG grid of held-out examples (image, truth, dense FP32, pruned INT8).
The full-slice files the task asks for are declared by SegmentationTask.extra_sizes() and made by the
pipeline (toolkit.pipeline.full_size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

def example_grid(path: Path, task, dense_out: np.ndarray, pruned_out: np.ndarray, *, title: str, count: int = 4) -> None:
    """Rows of held-out slices with the most foreground: image | truth | dense FP32 | pruned INT8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from toolkit.data.nifti import slices_of

    size = (task.spec.height, task.spec.width)
    images, labels = zip(*(slices_of(v, size) for v in task.volumes.held_out))
    images, labels = np.concatenate(images), np.concatenate(labels)
    fg = (labels > 0).reshape(len(labels), -1).sum(1)
    vol_step = max(1, len(labels) // count)
    picks = [int(np.argmax(fg[i:i + vol_step])) + i for i in range(0, vol_step * count, vol_step)][:count]
    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.6), (0.9, 0.3, 0.1, 0.6)])
    fig, axes = plt.subplots(len(picks), 4, figsize=(9, 2.3 * len(picks)))
    for r, i in enumerate(picks):
        for c, (mask, head) in enumerate([(None, "image"), (labels[i], "ground truth"),
                                          (dense_out[i].argmax(0), "dense FP32"), (pruned_out[i].argmax(0), "pruned INT8 TFLite")]):
            ax = axes[r, c]
            ax.imshow(images[i, 0], cmap="gray")
            if mask is not None:
                ax.imshow(mask, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=9)
    fig.suptitle(f"{title} — green: anterior, red: posterior", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
