"""ImageFolder-layout classification data, decoded once into a uint8 array cache.

Decoding 13k JPEGs costs ~30 s on two cores, so each (folder, split, size) is decoded once
and kept as .npy files under the cache folder; training, calibration and evaluation then read
the same pixels. Labels follow sorted class-folder order (torchvision's ImageFolder rule).

Hidden files and folders (`.DS_Store`, macOS `._x.jpg`, `.ipynb_checkpoints`) are ignored; an
image path that is a folder, a FIFO, a device, or a broken or looping symbolic link is a one-line
error naming it (nothing is opened that could block). Images decode in threads (PIL releases the
GIL; no fork after torch's thread pools exist, which could deadlock a child), watched: an image
that has not decoded after DECODE_STALL_S seconds is a one-line error, not a hang.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import cache_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DECODE_STALL_S = 120.0  # no single image takes this long to decode: a worker this slow is stuck


@dataclass
class ImageSplit:
    """Decoded images (N,H,W,3 uint8), integer labels, class folder names, and provenance."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    source: str
    synthetic: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int, seed: int = 0) -> "ImageSplit":
        """A class-balanced-by-chance random subset of `count` items (fixed seed)."""
        if count >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:count])
        return ImageSplit(self.images[idx], self.labels[idx], self.classes, self.source, self.synthetic)


def class_folders(split_dir: Path) -> list[str]:
    """Sorted class folder names of an ImageFolder split; hidden folders (`.ipynb_checkpoints`) ignored."""
    if not split_dir.is_dir():
        raise EdgeShrinkError(
            f"data folder {split_dir} does not exist; pass --data PATH or set EDGESHRINK_DATA_DIR "
            "to the folder holding the dataset (or set the split folder names in the card's dataset)"
        )
    found = []
    for p in _entries(split_dir):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():  # dangling or looping: it would silently drop a class
            raise EdgeShrinkError(f"class folder {p} is a broken or looping symbolic link; fix or remove it")
        if p.is_dir():
            found.append(p.name)
    return sorted(found)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise EdgeShrinkError(f"cannot list {folder} ({exc.strerror or type(exc).__name__}); check its permissions") from None


def image_files(class_dir: Path) -> list[Path]:
    """The image files of one class folder, sorted; hidden files (`._x.jpg` of macOS included) are
    ignored, an image path that is not a regular file (or is too big) is a one-line error."""
    from toolkit.core.files import IMAGE_MAX_BYTES, file_problem

    files = []
    for f in sorted(_entries(class_dir)):
        if f.name.startswith(".") or f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        problem = file_problem(f, IMAGE_MAX_BYTES)
        if problem:
            raise EdgeShrinkError(f"image {f} {problem}; remove it or replace it with an image file")
        files.append(f)
    return files


def list_image_folder(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of an ImageFolder split. `classes` (from the training split) fixes the
    label order; the split must hold exactly those class folders. Refuses a missing or empty folder."""
    found = class_folders(split_dir)
    if classes is not None and found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise EdgeShrinkError(
            f"{split_dir} has other class folders than the training split (missing: {missing[:5]}, extra: {extra[:5]}); "
            "every split needs the same class folders, or labels would shift"
        )
    classes = found
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in image_files(split_dir / name):
            files.append(f)
            labels.append(index)
    if not files:
        raise EdgeShrinkError(
            f"no images found under {split_dir}; expected <class>/<image>.jpg sub-folders (ImageFolder layout)"
        )
    return files, labels, classes


def _decode(args: tuple) -> np.ndarray | str:
    """One decoded image, or the reason it could not be decoded."""
    from toolkit.data.preprocess import resize_image

    path, h, w, interpolation, channels = args
    try:
        return resize_image(path, h, w, interpolation=interpolation, channels=channels)
    except Exception as exc:  # PIL raises many types for truncated / foreign files
        return f"{type(exc).__name__}: {str(exc)[:80]}"


def decode_all(jobs: list[tuple], desc: str, progress: bool = True) -> list:
    """`_decode` of every job, in order, on up to 4 daemon threads. A job running longer than
    DECODE_STALL_S is a one-line error naming its file (a stuck thread cannot be killed; being a
    daemon it cannot keep the process alive either). Ctrl-C and SIGTERM reach the waiting main thread."""
    import queue

    from tqdm import tqdm

    results: list = [None] * len(jobs)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(jobs)):
        todo.put(i)
    running: dict[int, tuple[int, float]] = {}
    lock, stop = threading.Lock(), threading.Event()

    def work(worker: int) -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                running[worker] = (i, time.monotonic())
            try:
                result = _decode(jobs[i])
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread, never lost
                result = f"{type(exc).__name__}: {str(exc)[:80]}"
            with lock:
                running.pop(worker, None)
            done.put((i, result))

    threads = [threading.Thread(target=work, args=(w,), name=f"edgeshrink-decode-{w}", daemon=True)
               for w in range(max(1, min(4, os.cpu_count() or 1, len(jobs))))]
    for t in threads:
        t.start()
    try:
        with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
            for _ in range(len(jobs)):
                while True:
                    alive = any(t.is_alive() for t in threads)  # before the wait: a result put by a thread
                    try:                                       # that then ended is still found
                        i, result = done.get(timeout=0.5)
                        break
                    except queue.Empty:
                        _check_stall(jobs, running, lock, alive)
                results[i] = result
                bar.update(1)
    finally:
        stop.set()
    return results


def _check_stall(jobs, running, lock, alive: bool) -> None:
    now = time.monotonic()
    with lock:
        stuck = sorted((start, i) for i, start in running.values() if now - start > DECODE_STALL_S)
    if stuck:
        raise EdgeShrinkError(f"decoding {jobs[stuck[0][1]][0]} has not finished after {DECODE_STALL_S:.0f} s (a file "
                              "that never ends, e.g. on a hung network mount); remove or replace it")
    if not alive:
        raise EdgeShrinkError("image decoding stopped without finishing (a decoder thread died); run again, and "
                              "report it if it repeats")


def _cache_key(root: Path, split: str, files: list[Path], decode: tuple) -> str:
    """Keyed on every file's name, size and modification time, so an edited image is decoded again."""
    stats = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps([str(Path(root).resolve()), split, list(decode), stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_cache(cache: Path, count: int, size: tuple[int, int]):
    """(images, labels) from a decoded-image cache entry, or None (entry removed) when it is truncated,
    edited or of another shape: a damaged cache is decoded again, never trusted."""
    import shutil

    try:
        images = np.asarray(np.load(cache / "images.npy", mmap_mode="r"))
        labels = np.load(cache / "labels.npy")
        if images.shape[:3] == (count, *size) and images.dtype == np.uint8 and labels.shape == (count,):
            return images, labels
    except (OSError, ValueError, EOFError):
        pass
    print(f"[edgeshrink] warning: decoded-image cache {cache.name} is damaged; decoding the images again")
    shutil.rmtree(cache, ignore_errors=True)
    return None


def load_image_split(root: Path, split: str, height: int, width: int, progress: bool = True, *,
                     classes: list[str] | None = None, interpolation: str = "bilinear", channels: int = 3) -> ImageSplit:
    """Decode `root/split` at HxW (cached). Refuses missing folders, class lists that differ from
    `classes`, and unreadable images with a one-line error."""
    files, labels, classes = list_image_folder(Path(root) / split, classes)
    decode = (height, width, interpolation, channels)
    key = _cache_key(Path(root), split, files, decode)
    cache = cache_dir() / f"images-{split}-{height}x{width}-{key}"
    if (cache / "done").exists():
        cached = _read_cache(cache, len(files), (height, width))
        if cached is not None:
            return ImageSplit(cached[0], cached[1], classes, str(root))
    jobs = [(str(f), *decode) for f in files]
    decoded = decode_all(jobs, f"decode {split}", progress)
    bad = [(f, d) for f, d in zip(files, decoded) if isinstance(d, str)]
    if bad:
        raise EdgeShrinkError(f"{len(bad)} image(s) in {Path(root) / split} cannot be decoded, first {bad[0][0]} "
                              f"({bad[0][1]}); remove or replace them")
    images = np.stack(decoded)
    labels_arr = np.asarray(labels, dtype=np.int64)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "images.npy", images)
    np.save(tmp / "labels.npy", labels_arr)
    (tmp / "done").write_text("ok")
    try:
        os.replace(tmp, cache)  # another run may have written the same entry meanwhile: keep theirs
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return ImageSplit(images, labels_arr, classes, str(root))


def synthetic_split(classes: int, per_class: int, height: int, width: int, seed: int) -> ImageSplit:
    """A small generated, learnable dataset (class = colour + stripe frequency). Tests and
    data-less machines only; every output built on it says `synthetic`."""
    rng = np.random.default_rng(seed)
    n = classes * per_class
    labels = np.repeat(np.arange(classes), per_class)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((n, height, width, 3), np.uint8)
    for i, c in enumerate(labels):
        hue = np.array([(c * 37) % 255, (c * 91) % 255, (c * 173) % 255], np.float32)
        stripes = 0.5 + 0.5 * np.sin((xx * (c + 1) / width + yy * rng.uniform(0, 0.2)) * np.pi * 2)
        img = hue[None, None, :] * stripes[..., None] + rng.normal(0, 20, (height, width, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    perm = rng.permutation(n)
    return ImageSplit(images[perm], labels[perm].astype(np.int64), [f"class{c}" for c in range(classes)],
                      "synthetic", synthetic=True)
