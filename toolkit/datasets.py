"""Resolve a model card's dataset to decoded splits (real data, or labelled synthetic data)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from toolkit.cards import ModelCard
from toolkit.errors import EdgeShrinkError
from toolkit.paths import data_dir


def dataset_root(card: ModelCard, data: Optional[str]) -> Path:
    """--data flag, else $EDGESHRINK_DATA_DIR/<dataset>, else ../shared/data/<dataset>."""
    return Path(data).expanduser() if data else data_dir() / card.dataset


def classification_splits(card: ModelCard, data: Optional[str], synthetic: bool = False, progress: bool = True):
    """(train, val) ImageSplits at the card's input size. `synthetic=True` generates a small
    labelled-synthetic set instead (tests, machines without the data)."""
    from toolkit.data.imagefolder import load_image_split, synthetic_split

    h, w = card.input.size
    if synthetic:
        n = len(card.labels)
        return synthetic_split(n, 24, h, w, seed=1), synthetic_split(n, 8, h, w, seed=2)
    root = dataset_root(card, data)
    if not root.is_dir():
        raise EdgeShrinkError(
            f"data folder {root} does not exist; pass --data PATH, set EDGESHRINK_DATA_DIR, or use --synthetic-data to try the pipeline without data"
        )
    train = load_image_split(root, "train", h, w, progress)
    val = load_image_split(root, "val", h, w, progress)
    if len(train.classes) != len(card.labels):
        raise EdgeShrinkError(
            f"{root} has {len(train.classes)} classes but model card '{card.name}' has {len(card.labels)} labels; point --data at the right dataset"
        )
    return train, val
