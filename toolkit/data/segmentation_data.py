"""Read a segmentation dataset in any layout (toolkit.data.segmentation_layouts) into volumes,
split at case level (toolkit.data.segmentation_split).

The split is made over the full list of case names before any file is read, so one bad file
cannot move cases between the sides. A bad training unit is reported in `problems` and skipped;
a bad held-out unit stops the run (the evaluation would change)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.nifti import Volume, VolumeSet, label_indices, normalise, read_volume
from toolkit.data.segmentation_layouts import Listing, Unit, list_layout
from toolkit.data.segmentation_split import HeldOut, split_cases


@dataclass(frozen=True)
class SegmentationSource:
    """Where and how to read a segmentation dataset (made from a card by `source_from_card`)."""

    root: Path
    layout: Optional[str] = None  # None: detected from the folder
    list_file: Optional[str] = None
    case_pattern: Optional[str] = None
    labels: tuple[str, ...] = ()  # the card's label names (empty: dataset.json's)
    label_values: Optional[tuple[int, ...]] = None
    held_out: HeldOut = None
    channels: int = 1
    scaling: str = "zscore_volume"
    mean: tuple = (0.0,)
    std: tuple = (1.0,)


def source_from_card(card, root: Path) -> SegmentationSource:
    """The card's dataset block and input normalisation, with the data folder resolved."""
    spec = card.data_spec()
    held_out = spec.held_out
    return SegmentationSource(root=Path(root), layout=spec.layout, list_file=spec.list_file, case_pattern=spec.case_pattern,
                              labels=tuple(card.labels), label_values=tuple(spec.label_values) if spec.label_values else None,
                              held_out=tuple(held_out) if isinstance(held_out, list) else held_out,
                              channels=card.input.channels, scaling=card.input.scaling,
                              mean=tuple(card.input.mean), std=tuple(card.input.std))


def label_names(source: SegmentationSource, listing: Listing) -> list[str]:
    """The card's labels, else dataset.json's; when both are given their counts must agree."""
    card, data = list(source.labels), listing.labels
    if card and data and len(card) != len(data):
        raise EdgeShrinkError(f"the card lists {len(card)} labels but {source.root / 'dataset.json'} names {len(data)} "
                              f"({', '.join(data)}); make the card's labels match")
    labels = card or data
    if not labels:
        raise EdgeShrinkError(f"no label names for {source.root}: list them in the card's labels "
                              "(background first, one per label value)")
    if source.label_values is not None and len(source.label_values) != len(labels):
        raise EdgeShrinkError(f"dataset.label_values has {len(source.label_values)} values for {len(labels)} labels; "
                              "give one value per label, in label order")
    return labels


def load_segmentation(source: SegmentationSource, *, progress: bool = True) -> VolumeSet:
    """Train and held-out volumes of the dataset, split by case; see the module docstring."""
    listing = list_layout(source.root, layout=source.layout, list_file=source.list_file, case_pattern=source.case_pattern)
    labels = label_names(source, listing)
    values = source.label_values or tuple(range(len(labels)))
    train_cases, held_cases, split = split_cases([u.case for u in listing.units], source.held_out)
    volumes, problems = _read_all(listing.units, set(held_cases), source, values, progress)
    train = [v for v in volumes if v.case in set(train_cases)]
    held = [v for v in volumes if v.case in set(held_cases)]
    if not train and train_cases:
        raise EdgeShrinkError(f"no training case of {source.root} could be read ({problems[0] if problems else 'none listed'}); "
                              "fix the files")
    return VolumeSet(train, held, problems, str(source.root), layout=listing.layout, labels=list(labels),
                     modalities=listing.modalities, split=split, spacing_unit="px" if listing.layout == "pairs" else "mm")


def _read_all(units: list[Unit], held: set, source: SegmentationSource, values, progress: bool):
    from tqdm import tqdm

    volumes, problems = [], []
    for unit in tqdm(units, desc="read cases", disable=not progress, leave=False):
        try:
            volumes.append(read_unit(unit, source, values))
        except EdgeShrinkError as exc:
            if unit.case in held:
                raise EdgeShrinkError(f"held-out case unreadable: {exc}") from None
            problems.append(str(exc))
    return volumes, problems


def read_unit(unit: Unit, source: SegmentationSource, values) -> Volume:
    """One volume (or one 2-D image as a one-slice volume), normalised, with label indices."""
    norm = {"scaling": source.scaling, "mean": source.mean, "std": source.std}
    if unit.images[0].name.lower().endswith((".nii", ".nii.gz")):
        volume = read_volume(unit.images, unit.label, name=unit.name, values=values, case=unit.case, **norm)
    else:
        volume = read_image_pair(unit, values=values, channels=source.channels, **norm)
    found = 1 if volume.image.ndim == 3 else volume.image.shape[3]
    if found != source.channels:
        raise EdgeShrinkError(f"{unit.name}: the image has {found} channel(s) but the card's input.channels is "
                              f"{source.channels}; make them match (and the model's in_channels)")
    return volume


def read_image_pair(unit: Unit, *, values, channels: int, scaling: str, mean, std) -> Volume:
    """A 2-D image and its mask as a (1, H, W[, C]) volume; z-scored over the whole image as the
    device script does it."""
    from toolkit.data.segmentation_pairs import decode_2d, image_channels

    if not unit.label.exists() and not unit.label.is_symlink():
        raise EdgeShrinkError(f"{unit.name}: no mask file {unit.label.name} in {unit.label.parent}; add it or remove the image")
    image = image_channels(decode_2d(unit.images[0], "image"), channels, unit.images[0])
    mask = decode_2d(unit.label, "mask")
    if mask.ndim == 3:
        if not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2])):
            raise EdgeShrinkError(f"{unit.name}: mask {unit.label.name} is in colour; save masks as one-channel PNGs "
                                  "holding the label values")
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise EdgeShrinkError(f"{unit.name}: image shape {list(image.shape[:2])} differs from mask shape {list(mask.shape)}; "
                              "fix or remove the pair")
    if not np.all(np.isfinite(image)):
        raise EdgeShrinkError(f"{unit.name}: the image holds NaN or infinite values; fix or remove the pair")
    label = label_indices(mask, values, name=unit.name, path=unit.label)
    scaled = normalise(image.astype(np.float32), scaling=scaling, mean=mean, std=std) if image.ndim == 2 else \
        _normalise_rgb(image, scaling=scaling, mean=mean, std=std)
    return Volume(unit.name, scaled[None], label[None], case=unit.case, path=str(unit.images[0]))


def _normalise_rgb(image: np.ndarray, *, scaling: str, mean, std) -> np.ndarray:
    """HxWxC: one z-score over all channels (as the device script), or x/255 then mean/std per channel."""
    if scaling == "zscore_volume":
        s = image.std()
        return ((image - image.mean()) / (s if s > 0 else 1.0)).astype(np.float32)
    return normalise(image, scaling=scaling, mean=mean, std=std)
