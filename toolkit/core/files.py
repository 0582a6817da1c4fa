"""Reading files a user hands in (cards, profiles, plans, manifests, weights, images): only regular
files, only up to a size cap.

A folder, a FIFO (`mkfifo x.yaml`), a device (`/dev/zero`) or a socket is refused in one line
saying what it is, before anything opens it for reading (a FIFO would block the reader forever, a
device would be read until memory runs out); so is a dangling or looping symbolic link. Files over
the cap for their kind are refused, naming the size."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

TEXT_MAX_BYTES = 1 << 20             # cards, profiles, plans (config.json), manifests: 1 MB
CHECKPOINT_MAX_BYTES = 16 << 30      # weights files: 16 GB
IMAGE_MAX_BYTES = 256 << 20          # one image of a dataset: 256 MB


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def kind_of(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', ... for a stat mode that is not a regular file."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def file_problem(path: str | Path, max_bytes: int) -> str | None:
    """Why `path` cannot be read as a regular file of at most `max_bytes` (None: it can). Symbolic
    links are followed; a dangling or looping one is a problem."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is a broken symbolic link (its target does not exist)" if path.is_symlink() else "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops"
        if exc.errno == errno.ENOTDIR:
            return "does not exist (a parent of it is a file, not a folder)"
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file ({kind_of(st.st_mode)})"
    if st.st_size > max_bytes:
        return f"is {_size(st.st_size)}, over the {_size(max_bytes)} limit"
    return None


def require_file(path: str | Path, what: str, fix: str, max_bytes: int = TEXT_MAX_BYTES) -> Path:
    """`path` when it is a regular file of at most `max_bytes`; else `<what> <path> <problem>; <fix>`."""
    problem = file_problem(path, max_bytes)
    if problem:
        raise EdgeShrinkError(f"{what} {path} {problem}; {fix}")
    return Path(path)


def read_bytes_capped(path: str | Path, what: str, fix: str, max_bytes: int = TEXT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. The file is opened without blocking and
    checked again once open (it may have been swapped for a FIFO meanwhile), and at most
    `max_bytes` + 1 bytes are read (it may have grown)."""
    require_file(path, what, fix, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise EdgeShrinkError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__}); {fix}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise EdgeShrinkError(f"{what} {path} is not a regular file ({kind_of(mode)}); {fix}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise EdgeShrinkError(f"{what} {path} is over the {_size(max_bytes)} limit; {fix}")
    return data
