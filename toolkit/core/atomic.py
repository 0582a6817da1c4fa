"""Outputs appear complete or not at all, and a re-run never loses the user's work.

Work happens in a hidden sibling folder (`.<name>.partial-<pid>`) that replaces the final one only
when everything in it has been written. What a device run or a re-benchmark left in the old folder
(`results/`, `bench.json`) moves into the new one; a folder holding files the tool did not write is
not replaced. Partial folders of runs that died (their process is gone) are removed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

KEEP_ON_RERUN = ("results", "bench.json")  # written later by `deliver` / `bench`, not by the run itself
TOOL_FILES = {"manifest.json", "config.json", "report.md", "tradeoffs.png", "examples.png", "frontier.png", "sweep.json", "sweep.md",
              "sweep.png", "bench.json", "results", "requirements-device.txt", "README.md"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(final: Path) -> None:
    """Delete `.<name>.partial-<pid>` / `.old-<pid>` folders whose process no longer exists."""
    for p in final.parent.glob(f".{final.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if kind.endswith((".partial", ".old")) and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def foreign_files(folder: Path) -> list[str]:
    """Files in an existing output folder that no EdgeShrink run or command wrote."""
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder.name]
    known = set(TOOL_FILES)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        known |= {a["file"] for a in manifest.get("artifacts", [])} | {f["file"] for f in manifest.get("device_files", [])}
        known |= {r["file"] for r in (manifest.get("full_slice_benchmarks") or {}).get("rows", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return sorted(p.name for p in folder.iterdir() if p.name not in known and not p.name.startswith("engines"))


def check_replaceable(final: Path) -> None:
    """Refuse (one line) to replace a folder that holds files the tool did not write."""
    foreign = foreign_files(Path(final))
    if foreign:
        raise EdgeShrinkError(f"{final} holds files EdgeShrink did not write ({', '.join(foreign[:3])}); move them "
                              "away or choose another --out, so a re-run cannot delete them")


@contextlib.contextmanager
def staged_folder(final: Path):
    """Yield an empty `.<name>.partial-<pid>` folder next to `final`; on success it replaces
    `final` (device results and bench.json of the old folder are carried over; the old copy is
    removed only after the swap), on any error (SIGINT/SIGTERM included) it is deleted."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeShrinkError(f"cannot create output folder {final.parent} ({exc.strerror}); choose a writable --out") from None
    if not os.access(final.parent, os.W_OK):
        raise EdgeShrinkError(f"output folder {final.parent} is not writable; choose a writable --out")
    check_replaceable(final)
    remove_stale_partials(final)
    work = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        check_replaceable(final)  # something may have appeared there while we worked
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            for keep in KEEP_ON_RERUN:
                if (final / keep).exists() and not (work / keep).exists():
                    shutil.move(str(final / keep), str(work / keep))
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
