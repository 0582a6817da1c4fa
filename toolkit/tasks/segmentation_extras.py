"""Segmentation-only outputs: a PNG grid of held-out examples (image, truth, dense FP32, pruned INT8)
and one held-out volume's predicted mask as NIfTI with the source image's affine and header.
The full-slice files the task asks for are declared by SegmentationTask.extra_sizes() and made by the
pipeline (toolkit.pipeline.full_size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = [(0.1, 0.8, 0.2, 0.6), (0.9, 0.3, 0.1, 0.6), (0.2, 0.4, 0.95, 0.6), (0.95, 0.85, 0.1, 0.6),
           (0.8, 0.2, 0.8, 0.6), (0.1, 0.85, 0.85, 0.6)]
COLOUR_NAMES = ["green", "red", "blue", "yellow", "magenta", "cyan"]


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
    count = max(1, min(count, len(labels)))  # a held-out set of fewer slices than rows
    vol_step = max(1, len(labels) // count)
    picks = [int(np.argmax(fg[i:i + vol_step])) + i for i in range(0, vol_step * count, vol_step)][:count]
    names = task.class_names()
    cmap = ListedColormap([(0, 0, 0, 0)] + [COLOURS[i % len(COLOURS)] for i in range(len(names))])
    top = max(1, len(names))
    fig, axes = plt.subplots(len(picks), 4, figsize=(9, 2.3 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        for c, (mask, head) in enumerate([(None, "image"), (labels[i], "ground truth"),
                                          (dense_out[i].argmax(0), "dense FP32"), (pruned_out[i].argmax(0), "pruned INT8 TFLite")]):
            ax = axes[r, c]
            ax.imshow(images[i, 0], cmap="gray")
            if mask is not None:
                ax.imshow(mask, cmap=cmap, vmin=0, vmax=top, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=9)
    legend = ", ".join(f"{COLOUR_NAMES[i % len(COLOURS)]}: {n}" for i, n in enumerate(names.values()))
    fig.suptitle(f"{title} — {legend}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_typical_mask(folder: Path, task, outputs: np.ndarray, *, artifact: str) -> dict | None:
    """Write the predicted mask of the held-out volume whose mean Dice is the median one (a typical
    case) as `held_out_<case>_mask.nii.gz`, with the affine and header of the case's image; returns
    what was written (None for 2-D image data, which has no affine)."""
    from toolkit.tasks.segmentation_metrics import dice_per_class

    held = task.volumes.held_out
    if not held or held[0].affine is None:
        return None
    preds = task.predicted_volumes(outputs)
    classes = list(task.class_names())
    scores = [float(np.mean(list(dice_per_class(p, v.label, classes).values()))) for p, v in zip(preds, held)]
    pick = int(np.argsort(scores)[len(scores) // 2])
    volume = held[pick]
    path = Path(folder) / f"held_out_{volume.name}_mask.nii.gz"
    save_mask_nifti(path, preds[pick], volume)
    return {"file": path.name, "case": volume.case, "image": Path(volume.path).name, "artifact": artifact,
            "dice": scores[pick], "note": "open it over the case's image from the data folder"}


def save_mask_nifti(path: Path, mask: np.ndarray, volume) -> None:
    """A uint8 label map on the volume's grid, with its source image's affine and header."""
    import nibabel as nib

    header = nib.load(volume.path).header.copy() if volume.path else None
    image = nib.Nifti1Image(np.asarray(mask, np.uint8), volume.affine, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, str(path))
