"""Segmentation volumes: the in-memory form every layout is read into, NIfTI reading with nibabel,
label values and normalisation, slicing to the model's input and back.

Each volume is normalised on its own (z-score per channel for input.scaling 'zscore_volume', else
x/255 then the card's mean/std), sliced along axis 0 and centre-padded to a fixed size. Label
values in the files are mapped to label indices 0..n-1 (dataset.label_values says which value each
label has; by default the values are the indices); any other value is refused naming the file.
Layouts and case-level splits: toolkit.data.segmentation_layouts, segmentation_split, segmentation_data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.segmentation_split import SPLIT_SEED
from toolkit.data.segmentation_split import case_split as _case_split

HELD_OUT = 52  # the hippocampus default (fraction 0.2 of 260 cases), for load_msd callers


def case_split(names: list[str], held_out: int = HELD_OUT, seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(train names, held-out names): a seeded permutation of the sorted case names, last `held_out` held out."""
    return _case_split(names, held_out, seed)


@dataclass
class Volume:
    name: str
    image: np.ndarray  # float32, normalised, (X, Y, Z) or (X, Y, Z, C)
    label: np.ndarray  # uint8 label indices, (X, Y, Z)
    case: str = ""  # the patient the volume belongs to ("": its name)
    spacing: tuple = (1.0, 1.0, 1.0)  # voxel size along X, Y, Z (mm for NIfTI, pixels for 2-D images)
    affine: Optional[np.ndarray] = None  # the source NIfTI's affine (None: a 2-D image)
    path: str = ""  # the image file it was read from

    def __post_init__(self):
        self.case = self.case or self.name

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)


@dataclass
class VolumeSet:
    train: list[Volume]
    held_out: list[Volume]
    problems: list[str] = field(default_factory=list)
    source: str = ""
    synthetic: bool = False
    layout: str = "nifti"
    labels: list[str] = field(default_factory=list)  # label names from the data (dataset.json), if any
    modalities: list[str] = field(default_factory=list)
    split: str = ""  # how the held-out cases were chosen
    spacing_unit: str = "mm"


def label_indices(raw: np.ndarray, values: Sequence[int], *, name: str, path: Path) -> np.ndarray:
    """Label values -> indices 0..n-1 (uint8); a value not declared is one line naming file and value."""
    found = np.unique(raw)
    allowed = np.asarray(values)
    bad = [v for v in found.tolist() if v != round(v) or int(v) not in set(allowed.tolist())]
    if bad:
        declared = f"0..{len(values) - 1}" if list(values) == list(range(len(values))) else str(list(values))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise EdgeShrinkError(f"{name}: label file {Path(path).name} holds value {bad[0]:g}{more} outside {declared} "
                              "(the card's labels); fix the label file or declare the value in dataset.label_values")
    if list(values) == list(range(len(values))):
        return raw.astype(np.uint8)
    order = np.argsort(allowed)
    return order[np.searchsorted(allowed[order], raw.astype(np.int64))].astype(np.uint8)


def normalise(image: np.ndarray, *, scaling: str = "zscore_volume", mean=(0.0,), std=(1.0,)) -> np.ndarray:
    """float32 model values of one whole volume/image; channels (if any) last."""
    if scaling != "zscore_volume":
        return ((image / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
    if image.ndim == 4:  # one z-score per channel (modality)
        return np.stack([normalise(image[..., c]) for c in range(image.shape[3])], axis=3)
    std_all = image.std()
    return ((image - image.mean()) / (std_all if std_all > 0 else 1.0)).astype(np.float32)


def nifti_spacing(header) -> tuple[float, float, float]:
    """Voxel size in mm along the first three axes, from the header's zooms and spatial unit."""
    unit = header.get_xyzt_units()[0]
    scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)  # 'mm' or 'unknown': mm
    zooms = tuple(float(z) * scale for z in header.get_zooms()[:3])
    return tuple(z if z > 0 else 1.0 for z in zooms) + (1.0,) * (3 - len(zooms))


def _load_nifti(path: Path, name: str):
    import nibabel as nib

    from toolkit.core.files import CHECKPOINT_MAX_BYTES, file_problem

    problem = file_problem(path, CHECKPOINT_MAX_BYTES)  # a FIFO or device would block or never end
    if problem:
        raise EdgeShrinkError(f"{name}: {path} {problem}; replace or remove the file")
    try:
        img = nib.load(str(path))
        return img, np.asarray(img.dataobj)
    except Exception as exc:
        raise EdgeShrinkError(f"{name}: unreadable NIfTI {Path(path).name} ({type(exc).__name__}: {str(exc)[:80]}); "
                              "replace or remove the file") from None


def read_volume(images: Sequence[Path], label_path: Path, *, name: str, values: Sequence[int], case: str = "",
                scaling: str = "zscore_volume", mean=(0.0,), std=(1.0,)) -> Volume:
    """One case: image file(s) (one per channel, or one 4-D file with channels last) and its label
    file; raises EdgeShrinkError naming the case and the problem."""
    if not Path(label_path).exists() and not Path(label_path).is_symlink():
        raise EdgeShrinkError(f"{name}: no label file {Path(label_path).name} in {Path(label_path).parent}; "
                              "add it or remove the image")
    loaded = [_load_nifti(Path(p), name) for p in images]
    label_img, label_raw = _load_nifti(Path(label_path), name)
    arrays = [np.asarray(a, dtype=np.float32) for _, a in loaded]
    image = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=3)
    spatial = image.shape[:3] if image.ndim == 4 else image.shape
    if spatial != label_raw.shape or any(a.shape != arrays[0].shape for a in arrays):
        raise EdgeShrinkError(f"{name}: image shape {image.shape} differs from label shape {label_raw.shape}; fix or remove the pair")
    if label_raw.ndim != 3:
        raise EdgeShrinkError(f"{name}: expected a 3-D volume, got {label_raw.ndim}-D")
    label = label_indices(label_raw, values, name=name, path=label_path)
    if not np.all(np.isfinite(image)):
        raise EdgeShrinkError(f"{name}: the image holds NaN or infinite values; fix or remove the pair")
    header = loaded[0][0].header
    return Volume(name, normalise(image, scaling=scaling, mean=mean, std=std), label, case=case,
                  spacing=nifti_spacing(header), affine=np.asarray(loaded[0][0].affine, np.float64), path=str(images[0]))


def read_pair(image_path: Path, label_path: Path, classes: int, *, label_values: Optional[Sequence[int]] = None) -> Volume:
    """Read and check one NIfTI image/label pair (labels 0..classes-1 unless `label_values`)."""
    name = Path(image_path).name.replace(".nii.gz", "").replace(".nii", "")
    return read_volume([Path(image_path)], Path(label_path), name=name, values=label_values or range(classes))


def load_msd(root: Path, classes: int = 3, held_out: int = HELD_OUT, progress: bool = True) -> VolumeSet:
    """All pairs under root/images and root/labels with `held_out` cases held out (see
    toolkit.data.segmentation_data.load_segmentation, which reads every layout)."""
    from toolkit.data.segmentation_data import SegmentationSource, load_segmentation

    source = SegmentationSource(root=Path(root), layout="nifti", labels=tuple(str(i) for i in range(classes)),
                                held_out=held_out)
    return load_segmentation(source, progress=progress)


def pad_offsets(shape_yz: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left offset that centres a (Y, Z) slice in a size[0] x size[1] canvas."""
    oy, oz = (size[0] - shape_yz[0]) // 2, (size[1] - shape_yz[1]) // 2
    if oy < 0 or oz < 0:
        raise EdgeShrinkError(f"slice {shape_yz} is larger than the model input {size}; raise the card's input size")
    return oy, oz


def slices_of(volume: Volume, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(images (S,C,H,W) float32, labels (S,H,W) int64): axis-0 slices, centre-padded."""
    x, y, z = volume.label.shape
    oy, oz = pad_offsets((y, z), size)
    image = volume.image if volume.image.ndim == 4 else volume.image[..., None]
    images = np.zeros((x, image.shape[3], size[0], size[1]), np.float32)
    labels = np.zeros((x, size[0], size[1]), np.int64)
    images[:, :, oy:oy + y, oz:oz + z] = image.transpose(0, 3, 1, 2)
    labels[:, oy:oy + y, oz:oz + z] = volume.label
    return images, labels


def restack(pred_slices: np.ndarray, volume_shape: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Per-slice predictions (S,H,W) back to the volume's (X,Y,Z) grid (crop the padding)."""
    _, y, z = volume_shape
    oy, oz = pad_offsets((y, z), size)
    return pred_slices[:, oy:oy + y, oz:oz + z]


def synthetic_volumes(count: int, seed: int) -> list[Volume]:
    """Small generated volumes with two blob classes (tests and data-less machines only)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        shape = (12, int(rng.integers(24, 30)), int(rng.integers(20, 28)))
        xx, yy, zz = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        label = np.zeros(shape, np.uint8)
        c = [s / 2 + rng.uniform(-2, 2) for s in shape]
        r = ((xx - c[0]) / 5) ** 2 + ((yy - c[1]) / 7) ** 2 + ((zz - c[2]) / 5) ** 2
        label[r < 1] = 1
        label[(r < 1) & (yy > c[1])] = 2
        image = rng.normal(0, 0.3, shape) + label * 1.0
        out.append(Volume(f"synthetic_{i:03d}", ((image - image.mean()) / image.std()).astype(np.float32), label))
    return out
