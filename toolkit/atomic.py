"""Outputs appear complete or not at all: work happens in a hidden sibling folder that replaces
the final one only when everything in it has been written."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def staged_folder(final: Path):
    """Yield an empty `.<name>.partial-<pid>` folder next to `final`; on success it replaces
    `final` (an older copy is removed only after the swap), on any error it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
