"""2-D image/mask pairs (PNG, JPEG, TIFF, BMP or .npy): listing and reading.

Listed from images/ + masks/ (or labels/) matched by file name without extension, or from a list
file of `image mask [case]` lines (paths relative to the data folder; `#` starts a comment; commas
or whitespace between fields). Each image becomes a one-slice volume of its case."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.segmentation_layouts import IMAGE_SUFFIXES, Unit, stem, visible_files
from toolkit.data.segmentation_split import case_key, compile_case_pattern


def list_pairs(root: Path, *, list_file: Optional[str] = None, case_pattern: Optional[str] = None) -> list[Unit]:
    """Every image/mask pair with its case key; a mask missing for an image is left to the reader
    (a training pair is skipped and reported, a held-out one stops the run)."""
    pattern = compile_case_pattern(case_pattern)
    rows = _list_file_rows(root, list_file) if list_file else _folder_rows(root)
    units = []
    for image, mask, case in rows:
        name = stem(image.name)
        units.append(Unit(name, case or case_key(name, pattern, given=bool(case_pattern)), (image,), mask))
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise EdgeShrinkError(f"two images are named {twice!r} (names without extension must be unique); rename one")
    return units


def _folder_rows(root: Path) -> list[tuple[Path, Path, None]]:
    masks_dir = root / "masks" if (root / "masks").is_dir() else root / "labels"
    if not (root / "images").is_dir() or not masks_dir.is_dir():
        raise EdgeShrinkError(f"{root} needs images/ and masks/ folders for 2-D pairs (or set dataset.list_file); "
                              "add them or fix dataset.layout")
    images = visible_files(root / "images", IMAGE_SUFFIXES)
    if not images:
        raise EdgeShrinkError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root / 'images'}; add the image files")
    masks = {stem(m.name): m for m in visible_files(masks_dir, IMAGE_SUFFIXES)}
    return [(f, masks.get(stem(f.name), masks_dir / (stem(f.name) + ".png")), None) for f in images]


def _list_file_rows(root: Path, list_file: str) -> list[tuple[Path, Path, Optional[str]]]:
    from toolkit.core.files import read_bytes_capped

    path = Path(list_file) if Path(list_file).is_absolute() else root / list_file
    fix = "write one `image mask [case]` line per pair"
    text = read_bytes_capped(path, "pairs list", fix).decode("utf-8", errors="replace")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise EdgeShrinkError(f"{path} line {number} has {len(fields)} fields; {fix}")
        image, mask = (_inside(root, f, path, number) for f in fields[:2])
        if image.name.startswith("."):
            continue
        rows.append((image, mask, fields[2] if len(fields) == 3 else None))
    if not rows:
        raise EdgeShrinkError(f"{path} lists no pairs; {fix}")
    return rows


def _inside(root: Path, field: str, path: Path, number: int) -> Path:
    """A list-file path, relative to the data folder; absolute paths and `..` are refused."""
    p = Path(field)
    if p.is_absolute() or ".." in p.parts:
        raise EdgeShrinkError(f"{path} line {number}: {field!r} leaves the data folder; give paths relative to {root}")
    return root / p


def decode_2d(path: Path, what: str) -> np.ndarray:
    """HxW or HxWx3 array of one image or mask file (regular file, size-capped)."""
    import io

    from toolkit.core.files import IMAGE_MAX_BYTES, read_bytes_capped

    data = read_bytes_capped(path, what, "replace or remove the file", IMAGE_MAX_BYTES)
    try:
        if path.name.lower().endswith(".npy"):
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            arr = _pil_array(io.BytesIO(data))
    except Exception as exc:  # PIL and numpy raise many types for truncated or foreign files
        raise EdgeShrinkError(f"{what} {path} is unreadable ({type(exc).__name__}: {str(exc)[:60]}); replace or remove it") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise EdgeShrinkError(f"{what} {path} has shape {list(arr.shape)}, not an HxW or HxWx3 image; replace it")
    return arr[..., :3] if arr.ndim == 3 else arr


def _pil_array(stream) -> np.ndarray:
    from PIL import Image

    with Image.open(stream) as img:
        img.load()
        if img.mode in ("1", "L", "P", "I", "I;16", "F"):
            return np.asarray(img)  # palette masks keep their indices
        return np.asarray(img.convert("RGB"))


def grey(arr: np.ndarray) -> np.ndarray:
    """HxWx3 -> HxW luma (ITU-R 601), exactly as the device script computes it (grey RGB stays exact)."""
    a = np.asarray(arr, np.float32)
    if a.ndim == 2 or (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
        return a if a.ndim == 2 else a[..., 0]
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def image_channels(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """HxW or HxWx3 -> HxW (one channel) or HxWxC, as the device script feeds the model."""
    if channels == 1:
        return grey(arr)
    a = np.asarray(arr, np.float32)
    if a.ndim == 2:
        return np.repeat(a[..., None], channels, axis=2)
    if a.shape[2] != channels:
        raise EdgeShrinkError(f"image {path} has {a.shape[2]} channels but the card's input.channels is {channels}; "
                              "make them match")
    return a
