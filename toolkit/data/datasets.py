"""Resolve a model card's dataset to decoded splits (real data, or labelled synthetic data)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import data_dir


def dataset_root(card, data: Optional[str]) -> Path:
    """--data flag, else the card's dataset root: a path (relative to the card) when it names an
    existing folder there, else a dataset name under $EDGESHRINK_DATA_DIR (default ../shared/data)."""
    if data:
        return Path(data).expanduser()
    root = card.data_spec().root
    beside_card = card.resolve(root)
    if beside_card.is_dir() or "/" in root or root.startswith("."):
        return beside_card
    return data_dir() / root


def classification_splits(card, spec, data, progress: bool = True):
    """(train, eval) ImageSplits at the card's input. The class list comes from the training split
    and the evaluation split must hold the same classes. `data.synthetic` generates a small
    labelled-synthetic set instead (tests, machines without the data)."""
    from toolkit.data.imagefolder import load_image_split, synthetic_split

    h, w = spec.height, spec.width
    if data.synthetic:
        n = len(card.labels) or 4
        return synthetic_split(n, 24, h, w, seed=1), synthetic_split(n, 8, h, w, seed=2)
    root = dataset_root(card, data.root)
    splits = card.data_spec()
    if not root.is_dir():
        raise EdgeShrinkError(
            f"data folder {root} does not exist; pass --data PATH, set EDGESHRINK_DATA_DIR, or use --synthetic-data to try the pipeline without data"
        )
    decode = {"interpolation": card.input.interpolation, "channels": spec.channels}
    train = load_image_split(root, splits.train, h, w, progress, **decode)
    val = load_image_split(root, splits.val, h, w, progress, classes=train.classes, **decode)
    if card.labels and len(train.classes) != len(card.labels):
        raise EdgeShrinkError(
            f"{root} has {len(train.classes)} classes but model card '{card.name}' has {len(card.labels)} labels; point --data at the right dataset"
        )
    return train, val
