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
    check_class_folders(card, train.classes, root / splits.train)
    return train, val


def check_class_folders(card, found: list[str], where: Path) -> None:
    """The class folders (sorted, as labels are numbered) must be the card's labels in order, or
    the card's `class_folders`: any other set would name every prediction with the wrong label."""
    expected = card.expected_class_folders()
    if not expected or list(found) == expected:
        return
    if sorted(found) == sorted(expected):
        why = "the same names in another order (labels are numbered in sorted folder order)"
    else:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        why = f"{len(found)} folders, {len(expected)} expected; missing {missing[:4]}, unexpected {extra[:4]}"
    field = "class_folders" if card.class_folders else "labels"
    raise EdgeShrinkError(f"{where} has class folders {list(found)[:6]} but model card '{card.name}' expects its {field} "
                          f"{expected[:6]} ({why}); point --data at the dataset the model was trained on, or list "
                          "the folders in label order as the card's class_folders")


def preflight_classification(card, data) -> None:
    """At planning, before any image is decoded: the training split's class folders match the card
    (skipped for synthetic data and for a data folder that is not there yet: the run refuses that)."""
    from toolkit.data.imagefolder import class_folders

    if data.synthetic:
        return
    split = dataset_root(card, data.root) / card.data_spec().train
    if split.is_dir():
        check_class_folders(card, class_folders(split), split)
