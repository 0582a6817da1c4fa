"""Input loading for edgeshrink_run.py: image files and folders, a folder-per-class truth tree,
.npy arrays, video files and cameras, each yielded with a decode function.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy and
edgeshrink_common (Pillow / OpenCV / picamera2 are imported only when an input needs them)."""

from pathlib import Path

import edgeshrink_common as C
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}


def list_inputs(items) -> list:
    """Image/video paths from files and folders (folders searched recursively, sorted)."""
    found = []
    for item in items or []:
        p = Path(item)
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
        else:
            found.append(p)
    return found


def truth_inputs(folder, names: list) -> list:
    """(path, class index) for folder/<class>/<image>; class folders must name a label (or an index)."""
    root = Path(folder)
    if not root.is_dir():
        raise SystemExit(f"error: --truth {folder} is not a folder; pass a folder with one sub-folder per class")
    lookup = {n.strip().lower().replace(" ", "_"): i for i, n in reversed(list(enumerate(names)))}
    pairs, unknown = [], []
    for sub in sorted(d for d in root.iterdir() if d.is_dir()):
        key = sub.name.strip().lower().replace(" ", "_")
        index = lookup.get(key, int(key) if key.isdigit() and int(key) < len(names) else None)
        if index is None:
            unknown.append(sub.name)
            continue
        pairs += [(f, index) for f in sorted(sub.rglob("*")) if f.is_file()]
    if unknown:
        raise SystemExit(f"error: truth folders {', '.join(unknown[:5])} name no label; rename them to label names "
                         "(or class indices) or pass the matching --labels")
    return pairs


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


def sources(args, truth_pairs):
    """(name, truth index or None, decode function) for every input; decode may raise ValueError."""
    for path, index in truth_pairs:
        yield str(path), index, (lambda p=path: C.decode_image(p))
    for path in list_inputs(args.input):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            for name, rgb in video_frames(str(path), args.max_frames):
                yield f"{path.name}:{name}", None, (lambda a=rgb: a)
        elif path.suffix.lower() == ".npy":
            arr = np.load(path)
            for i, a in enumerate(arr if arr.ndim == 4 else arr[None]):
                yield f"{path.name}[{i}]", None, (lambda a=a: a.astype(np.uint8))
        else:
            yield str(path), None, (lambda p=path: C.decode_image(p))
    if args.camera is not None:
        for name, rgb in camera_frames(args.camera, args.max_frames):
            yield name, None, (lambda a=rgb: a)
