"""Input loading for edgeshrink_run.py: image files and folders, a folder-per-class truth tree,
.npy arrays, video files and cameras, each yielded with a decode function. Every refusal is one
line: a missing path, an empty folder, an array that is not an image.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy,
edgeshrink_common and edgeshrink_run_images (Pillow / OpenCV / picamera2 are imported only when an
input needs them)."""

import stat
import sys
from pathlib import Path

import edgeshrink_run_images as I
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_ARRAY_BYTES = 1 << 30  # a .npy input is loaded whole


def kind_of(path) -> str:
    """'image', 'video', 'npy', 'nifti' or 'other', from the file name."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    suffix = Path(name).suffix
    return {".npy": "npy"}.get(suffix) or ("image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES
                                           else "other")


def list_inputs(items, kinds=("image", "video", "npy", "nifti")) -> list:
    """Input paths from files and folders (folders searched recursively, sorted, for files of `kinds`).
    A missing path, something that is not a regular file, or a folder without inputs is an error."""
    found = []
    for item in items or []:
        p = Path(item)
        if p.is_dir():
            inside = [f for f in sorted(p.rglob("*")) if f.is_file() and kind_of(f) in kinds]
            if not inside:
                raise SystemExit(f"error: --input {item} holds no {'/'.join(kinds)} files; pass a folder of inputs")
            found += inside
        elif not p.exists():
            raise SystemExit(f"error: --input {item} does not exist; pass image files, folders, .npy arrays or videos")
        elif not stat.S_ISREG(p.stat().st_mode):
            raise SystemExit(f"error: --input {item} is not a regular file; pass image files, folders or videos")
        elif p.suffix.lower() == ".npz":
            raise SystemExit(f"error: --input {item} is an .npz (an eval pack?); pass it with --eval-pack")
        else:
            found.append(p)
    return found


def truth_inputs(folder, names: list) -> list:
    """(path, class index) for folder/<class>/<image>; class folders must name a label (or an index).
    Folders named by index get a warning: a 1001-output model's index N is often label N-1."""
    root = Path(folder)
    if not root.is_dir():
        raise SystemExit(f"error: --truth {folder} is not a folder; pass a folder with one sub-folder per class")
    lookup = {n.strip().lower().replace(" ", "_"): i for i, n in reversed(list(enumerate(names)))}
    pairs, unknown, by_index = [], [], []
    subs = sorted(d for d in root.iterdir() if d.is_dir())
    for sub in subs:
        key = sub.name.strip().lower().replace(" ", "_")
        index = lookup.get(key, int(key) if key.isdigit() and int(key) < len(names) else None)
        if index is None:
            unknown.append(sub.name)
            continue
        by_index += [int(key)] if key.isdigit() else []
        pairs += [(f, index) for f in sorted(sub.rglob("*")) if f.is_file()]
    if unknown:
        raise SystemExit(f"error: truth folders {', '.join(unknown[:5])} name no label; rename them to label names "
                         "(or class indices) or pass the matching --labels")
    if not pairs:
        raise SystemExit(f"error: --truth {folder} holds no images in class sub-folders; lay it out as "
                         f"{folder}/<label>/<image>")
    if by_index and len(by_index) == len(subs):
        shifted = len(names) == 1001 or (bool(names) and names[0].strip().lower() in ("background", "__background__"))
        print(f"warning: truth folders are named like indices ({min(by_index)}..{max(by_index)}) and are scored "
              f"against model outputs of the same number"
              + (f"; this model has {len(names)} outputs (a background row?), so the labels may be off by one"
                 if shifted else "; check they are not off by one")
              + " (name the folders by label and pass --labels)", file=sys.stderr)
    return pairs


def load_array(path, max_bytes: int = MAX_ARRAY_BYTES):
    """A .npy input, checked before it is loaded whole: numeric, not empty, not huge."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower():
            raise SystemExit(f"error: {path} holds Python objects (dtype object); save a numeric array "
                             "(uint8 pixels HxWx3)") from None
        raise SystemExit(f"error: {path} is not a readable .npy array ({str(exc)[:80]})") from None
    except (OSError, EOFError) as exc:
        raise SystemExit(f"error: {path} is not a readable .npy array ({type(exc).__name__})") from None
    if arr.dtype.kind not in "uif" or arr.size == 0:
        raise SystemExit(f"error: {path} holds {arr.dtype} data of shape {arr.shape}; pass numbers (uint8 pixels)")
    if arr.nbytes > max_bytes:
        raise SystemExit(f"error: {path} is {arr.nbytes / 2 ** 30:.1f} GiB; split it into smaller arrays")
    return np.array(arr)


def classifier_arrays(path, model):
    """(name, array) per image in a .npy for a classifier: uint8 (or 0..255 integer) pixels HxWxC /
    NxHxWxC, resized like files; float arrays are taken as already-normalised model input (values
    per the model's input spec) and must have the model's HxWxC exactly."""
    arr = load_array(path)
    c = model.channels
    arr = arr[..., None] if arr.ndim == 2 and c == 1 else arr
    if arr.ndim not in (3, 4) or arr.shape[-1] != c:
        raise SystemExit(f"error: {path} has shape {list(arr.shape)}; pass HxWx{c} or NxHxWx{c} "
                         + ("float model input" if arr.dtype.kind == "f" else "uint8 pixels")
                         + (" (a 2-D array is one grey image; this model takes RGB)" if arr.ndim == 2 else ""))
    images = arr if arr.ndim == 4 else arr[None]
    if arr.dtype.kind == "f":
        if tuple(images.shape[1:3]) != (model.height, model.width):
            raise SystemExit(f"error: {path} is float ({arr.dtype}): taken as normalised model input, it must be "
                             f"{model.height}x{model.width}x{c}, not {images.shape[1]}x{images.shape[2]}x{c}; "
                             "or save uint8 pixels to have them resized and normalised")
        if not np.all(np.isfinite(images)):
            raise SystemExit(f"error: {path} holds NaN or infinite values")
        print(f"note: {Path(path).name} is {arr.dtype}: fed as already-normalised model input (no resize, no mean/std)")
        images = images.astype(np.float32)
    elif arr.dtype != np.uint8:
        if images.min() < 0 or images.max() > 255:
            raise SystemExit(f"error: {path} holds {arr.dtype} values {images.min()}..{images.max()}; pixels must be "
                             "0..255 (save uint8), or pass normalised float32 model input")
        images = images.astype(np.uint8)
    for i, a in enumerate(images):
        yield f"{Path(path).name}[{i}]", a


def video_frames(source, limit: int):
    """(name, HxWx3 uint8 RGB) from a video file or camera index with OpenCV (BGR converted to RGB)."""
    try:
        import cv2
    except ImportError:
        raise SystemExit("error: video and webcam input need OpenCV (pip install opencv-python-headless)") from None
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise SystemExit(f"error: cannot open video source {source!r}; check the file or camera index")
    count = 0
    while count < limit:
        ok, bgr = cap.read()
        if not ok:
            break
        yield f"frame{count}", np.ascontiguousarray(bgr[:, :, ::-1])
        count += 1
    cap.release()


def camera_frames(index: int, limit: int):
    """Pi camera via picamera2 (its 'RGB888' arrays are BGR in memory: converted), else OpenCV."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        yield from video_frames(index, limit)
        return
    cam = Picamera2()
    cam.configure(cam.create_preview_configuration(main={"size": (640, 480), "format": "RGB888"}))
    cam.start()
    try:
        for i in range(limit):
            yield f"camera{i}", np.ascontiguousarray(cam.capture_array()[:, :, 2::-1])
    finally:
        cam.stop()


def sources(args, truth_pairs, model):
    """(name, truth index or None, decode function) for every classifier input; decode returns uint8
    pixels (resized later) or float model input, and may raise ValueError (the input is skipped)."""
    cap = int(args.max_megapixels * 1e6)
    for path, index in truth_pairs:
        yield str(path), index, (lambda p=path: I.decode(p, "RGB", cap))
    for path in list_inputs(args.input, ("image", "video", "npy")):
        kind = kind_of(path)
        if kind == "video":
            for name, rgb in video_frames(str(path), args.max_frames):
                yield f"{path.name}:{name}", None, (lambda a=rgb: a)
        elif kind == "npy":
            for name, a in classifier_arrays(path, model):
                yield name, None, (lambda a=a: a)
        elif kind == "nifti":
            raise SystemExit(f"error: {path} is a NIfTI volume; volumes are for segmentation bundles")
        else:
            yield str(path), None, (lambda p=path: I.decode(p, "RGB", cap))
    if args.camera is not None:
        for name, rgb in camera_frames(args.camera, args.max_frames):
            yield name, None, (lambda a=rgb: a)


class OutputStems:
    """File stems for what one run writes under one folder, never twice the same: `clip.mp4:frame3`
    -> `clip_frame3`, `arrays.npy[2]` -> `arrays_2_`, `photo.jpg` -> `photo` (then `photo_2`, ...)."""

    def __init__(self):
        self.used = set()

    def stem(self, name: str) -> str:
        for ext in (".mp4:", ".avi:", ".mov:", ".mkv:"):  # video frames: clip.mp4:frame3 -> clip_frame3
            name = name.replace(ext, "_")
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        for ext in (".nii.gz", ".nii", ".npy", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"):
            if base.lower().endswith(ext):
                base = base[: -len(ext)]
                break
        stem, i = base, 2
        while stem in self.used:
            stem, i = f"{base}_{i}", i + 1
        self.used.add(stem)
        return stem
