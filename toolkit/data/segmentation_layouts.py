"""Which files make up a segmentation dataset, in any of four folder layouts:

- `nifti`:  images/<case>.nii.gz + labels/<case>.nii.gz (the same names)
- `msd`:    the Medical Segmentation Decathlon download: imagesTr/<case>.nii.gz + labelsTr/<case>.nii.gz
            and dataset.json (label names, modalities); 4-D images hold the modalities last
- `nnunet`: nnU-Net raw: imagesTr/<case>_0000.nii.gz (_0001 ... one file per channel) +
            labelsTr/<case>.nii.gz, dataset.json (v1 or v2)
- `pairs`:  2-D image/mask files: images/<name>.png + masks/<name>.png (matched by name without
            extension), or a list file of `image mask [case]` lines; files are grouped into cases
            by a case key (segmentation_split.case_key)

Hidden files (`.x`, macOS `._x`) are ignored everywhere. Only names are listed here; the files
are read (regular files only, with size caps) by toolkit.data.segmentation_data."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError

LAYOUTS = ("nifti", "msd", "nnunet", "pairs")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(?:\.gz)?$")
EXPECTED = ("images/ + labels/ (NIfTI), imagesTr/ + labelsTr/ with dataset.json (MSD or nnU-Net raw), "
            "or images/ + masks/ (2-D pairs)")


@dataclass(frozen=True)
class Unit:
    """One scored unit: a volume (3-D layouts) or one image (2-D pairs), with its case key."""

    name: str
    case: str
    images: tuple[Path, ...]  # one file per channel (nnU-Net), else one file
    label: Path


@dataclass
class Listing:
    layout: str
    units: list[Unit]
    labels: list[str] = field(default_factory=list)  # from dataset.json ([]: not given there)
    modalities: list[str] = field(default_factory=list)


def stem(name: str) -> str:
    """A file name without its extension (`.nii.gz` counted as one)."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def visible_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in `folder` with one of `suffixes`, sorted; hidden and `._*` files left out."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise EdgeShrinkError(f"cannot list {folder} ({exc.strerror or type(exc).__name__}); check its permissions") from None
    return [p for p in entries if not p.name.startswith(".") and p.name.lower().endswith(suffixes)]


def detect_layout(root: Path, *, list_file: Optional[str] = None) -> str:
    """The layout of `root` by its folders (and, under imagesTr/, by its file names)."""
    if list_file:
        return "pairs"
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        files = visible_files(root / "imagesTr", NIFTI_SUFFIXES)
        named = files and all(NNUNET_NAME.match(f.name) for f in files)
        return "nnunet" if named and not (root / "labelsTr" / files[0].name).exists() else "msd"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "pairs"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "nifti" if visible_files(root / "images", NIFTI_SUFFIXES) else "pairs"
    raise EdgeShrinkError(f"{root} holds no segmentation layout: expected {EXPECTED}; "
                          "pass --data PATH, set EDGESHRINK_DATA_DIR, or set dataset.layout in the card")


def _require_dirs(root: Path, layout: str, *names: str) -> None:
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise EdgeShrinkError(f"{root} has no {missing[0]}/ folder, which the '{layout}' layout needs "
                              f"({' + '.join(n + '/' for n in names)}); fix dataset.layout or the folder")


def _same_names(root: Path, images: str, labels: str, layout: str) -> list[Unit]:
    _require_dirs(root, layout, images, labels)
    files = visible_files(root / images, NIFTI_SUFFIXES)
    if not files:
        raise EdgeShrinkError(f"no .nii/.nii.gz volumes in {root / images}; add the image volumes")
    return [Unit(stem(f.name), stem(f.name), (f,), root / labels / f.name) for f in files]


def list_nnunet(root: Path) -> list[Unit]:
    """Cases of an nnU-Net raw folder; every case needs the same channels _0000 ... _000N."""
    _require_dirs(root, "nnunet", "imagesTr", "labelsTr")
    channels: dict[str, dict[int, Path]] = {}
    for f in visible_files(root / "imagesTr", NIFTI_SUFFIXES):
        m = NNUNET_NAME.match(f.name)
        if m is None:
            raise EdgeShrinkError(f"{f} is not named <case>_0000.nii.gz (nnU-Net raw layout); rename it or remove it")
        channels.setdefault(m["case"], {})[int(m["channel"])] = f
    if not channels:
        raise EdgeShrinkError(f"no <case>_0000.nii.gz volumes in {root / 'imagesTr'}; add the image volumes")
    count = max(len(c) for c in channels.values())
    units = []
    for case, files in sorted(channels.items()):
        if sorted(files) != list(range(count)):
            raise EdgeShrinkError(f"case {case} has channel files {sorted(files)}, expected _0000 to _{count - 1:04d} "
                                  "(every case needs every channel); add the missing files or remove the case")
        label = root / "labelsTr" / (case + (".nii" if files[0].name.endswith(".nii") else ".nii.gz"))
        units.append(Unit(case, case, tuple(files[i] for i in range(count)), label))
    return units


def read_dataset_json(root: Path) -> tuple[list[str], list[str]]:
    """(label names by value, modality names by channel) from root/dataset.json (MSD, nnU-Net v1
    or v2); ([], []) when there is none."""
    from toolkit.core.files import read_bytes_capped

    path = root / "dataset.json"
    if not path.exists() and not path.is_symlink():
        return [], []
    fix = "fix or remove dataset.json (label names then come from the card)"
    try:
        data = json.loads(read_bytes_capped(path, "dataset description", fix))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgeShrinkError(f"dataset description {path} is not valid JSON ({str(exc)[:60]}); {fix}") from None
    if not isinstance(data, dict):
        raise EdgeShrinkError(f"dataset description {path} is not a JSON object; {fix}")
    labels = _indexed(data.get("labels") or {}, path, "labels", fix)
    modalities = _indexed(data.get("channel_names") or data.get("modality") or {}, path, "modality", fix)
    return labels, modalities


def _indexed(mapping, path: Path, key: str, fix: str) -> list[str]:
    """{"0": "background", "1": "x"} (MSD, nnU-Net v1) or {"background": 0, "x": 1} (nnU-Net v2) -> names by index."""
    if not isinstance(mapping, dict):
        raise EdgeShrinkError(f"{path}: '{key}' is not a mapping; {fix}")
    pairs = []
    for k, v in mapping.items():
        index, name = (v, k) if isinstance(v, int) and not isinstance(v, bool) else (k, v)
        if not str(index).isdigit() or not isinstance(name, str):
            raise EdgeShrinkError(f"{path}: '{key}' entry {k!r}: {v!r} is not index -> name (or name -> index); "
                                  "region-based labels are not supported; " + fix)
        pairs.append((int(index), name))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise EdgeShrinkError(f"{path}: '{key}' indices {[i for i, _ in pairs]} are not 0, 1, 2 ...; {fix}")
    return [name for _, name in pairs]


def list_layout(root: Path, *, layout: Optional[str] = None, list_file: Optional[str] = None,
                case_pattern: Optional[str] = None) -> Listing:
    """Every unit of the dataset at `root` in `layout` (None: detected)."""
    from toolkit.data.segmentation_pairs import list_pairs

    root = Path(root)
    if not root.is_dir():
        raise EdgeShrinkError(f"data folder {root} does not exist; pass --data PATH, set EDGESHRINK_DATA_DIR, "
                              "or use --synthetic-data")
    layout = layout or detect_layout(root, list_file=list_file)
    if layout == "nifti":
        return Listing(layout, _same_names(root, "images", "labels", layout))
    if layout == "pairs":
        return Listing(layout, list_pairs(root, list_file=list_file, case_pattern=case_pattern))
    labels, modalities = read_dataset_json(root)
    units = list_nnunet(root) if layout == "nnunet" else _same_names(root, "imagesTr", "labelsTr", layout)
    return Listing(layout, units, labels, modalities)
