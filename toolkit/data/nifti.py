"""MSD-layout NIfTI volumes (images/ and labels/ with the same file names), read with nibabel.

Case-level split: the sorted case names are permuted with a fixed seed and the last
`held_out` cases are held out, so no patient has slices on both sides. Each volume is
z-score normalised on its own, sliced along axis 0 and centre-padded to a fixed size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError

SPLIT_SEED = 0
HELD_OUT = 52


@dataclass
class Volume:
    name: str
    image: np.ndarray  # float32, z-scored, (X, Y, Z)
    label: np.ndarray  # uint8, (X, Y, Z)


@dataclass
class VolumeSet:
    train: list[Volume]
    held_out: list[Volume]
    problems: list[str] = field(default_factory=list)
    source: str = ""
    synthetic: bool = False


def read_pair(image_path: Path, label_path: Path, classes: int) -> Volume:
    """Read and check one image/label pair; raises EdgeShrinkError naming the file on a problem."""
    import nibabel as nib

    from toolkit.core.files import CHECKPOINT_MAX_BYTES, file_problem

    name = image_path.name.replace(".nii.gz", "").replace(".nii", "")
    for path in (image_path, label_path):  # a FIFO or device would block or never end
        problem = file_problem(path, CHECKPOINT_MAX_BYTES)
        if problem:
            raise EdgeShrinkError(f"{name}: {path} {problem}; replace or remove the file")
    try:
        image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
        label_raw = np.asarray(nib.load(str(label_path)).dataobj)
    except Exception as exc:
        raise EdgeShrinkError(f"{name}: unreadable NIfTI ({type(exc).__name__}: {str(exc)[:80]}); replace or remove the file") from None
    if image.shape != label_raw.shape:
        raise EdgeShrinkError(f"{name}: image shape {image.shape} differs from label shape {label_raw.shape}; fix or remove the pair")
    if image.ndim != 3:
        raise EdgeShrinkError(f"{name}: expected a 3-D volume, got {image.ndim}-D")
    values = np.unique(label_raw)
    if not np.all(np.isin(values, np.arange(classes))) or not np.all(values == np.round(values)):
        raise EdgeShrinkError(f"{name}: label values {values.tolist()[:8]} outside 0..{classes - 1}; fix the label file")
    if not np.all(np.isfinite(image)):
        raise EdgeShrinkError(f"{name}: the image holds NaN or infinite values; fix or remove the pair")
    std = image.std()
    image = (image - image.mean()) / (std if std > 0 else 1.0)
    return Volume(name, image.astype(np.float32), label_raw.astype(np.uint8))


def case_split(names: list[str], held_out: int = HELD_OUT, seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(train names, held-out names): a seeded permutation of the sorted case names."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    held = sorted(names[i] for i in order[-held_out:]) if held_out else []
    return [n for n in names if n not in set(held)], held


def load_msd(root: Path, classes: int = 3, held_out: int = HELD_OUT, progress: bool = True) -> VolumeSet:
    """All pairs under root/images and root/labels, split by case over the full list of case
    names (so one bad file cannot move cases between the sides). A bad training pair is reported
    in `problems` and skipped; a bad held-out pair stops the run (the evaluation would change)."""
    from tqdm import tqdm

    root = Path(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise EdgeShrinkError(f"{root} must hold images/ and labels/ (MSD layout); pass --data PATH or set EDGESHRINK_DATA_DIR")
    files = sorted(p for p in images_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))
    if not files:
        raise EdgeShrinkError(f"no .nii.gz volumes in {images_dir}")
    names = [f.name.replace(".nii.gz", "").replace(".nii", "") for f in files]
    if len(names) <= held_out:
        raise EdgeShrinkError(f"{images_dir} holds {len(names)} cases, not more than the {held_out} held out; add data")
    train_names, held_names = case_split(names, held_out)
    volumes, problems = {}, []
    for f in tqdm(files, desc="read volumes", disable=not progress, leave=False):
        label = labels_dir / f.name
        try:
            if not label.exists() and not label.is_symlink():
                raise EdgeShrinkError(f"{f.name}: no label file {label.name} in {labels_dir}; add it or remove the image")
            v = read_pair(f, label, classes)
            volumes[v.name] = v
        except EdgeShrinkError as exc:
            if f.name.replace(".nii.gz", "").replace(".nii", "") in held_names:
                raise EdgeShrinkError(f"held-out case unreadable: {exc}") from None
            problems.append(str(exc))
    return VolumeSet([volumes[n] for n in train_names if n in volumes], [volumes[n] for n in held_names], problems, str(root))


def pad_offsets(shape_yz: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left offset that centres a (Y, Z) slice in a size[0] x size[1] canvas."""
    oy, oz = (size[0] - shape_yz[0]) // 2, (size[1] - shape_yz[1]) // 2
    if oy < 0 or oz < 0:
        raise EdgeShrinkError(f"slice {shape_yz} is larger than the model input {size}; raise the card's input size")
    return oy, oz


def slices_of(volume: Volume, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(images (S,1,H,W) float32, labels (S,H,W) int64): axis-0 slices, centre-padded."""
    x, y, z = volume.image.shape
    oy, oz = pad_offsets((y, z), size)
    images = np.zeros((x, 1, size[0], size[1]), np.float32)
    labels = np.zeros((x, size[0], size[1]), np.int64)
    images[:, 0, oy:oy + y, oz:oz + z] = volume.image
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
