"""Outputs appear complete or not at all, and a re-run never loses the user's work.

Work happens in a hidden sibling folder (`.<name>.partial-<pid>`) that replaces the final one only
when everything in it has been written. What a device run or a re-benchmark left in the old folder
(`results/`, `engines/`, `bench.json`) moves into the new one; a folder holding files the tool did not
write (its fixed files and those its manifest.json lists) is not replaced. Partial folders of runs
that died (their process is gone) are removed, and so are their temporary job folders."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

# written later by `deliver` / `bench` / the device scripts (TensorRT engines), not by the run: carried over
KEEP_ON_RERUN = ("results", "engines", "bench.json")
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


def remove_dead_job_folders(parent: Path, prefix: str) -> None:
    """Delete this user's `<prefix><pid>-*` folders in `parent` whose process no longer exists
    (what a SIGKILLed run left: it had no chance to clean up)."""
    for p in Path(parent).glob(f"{prefix}*-*"):
        pid = p.name[len(prefix):].partition("-")[0]
        try:
            mine = p.is_dir() and not p.is_symlink() and p.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def listed_files(manifest) -> set[str]:
    """The plain file names a bundle's manifest.json lists (artifacts, device files, full-slice files)."""
    if not isinstance(manifest, dict):
        return set()
    slices = manifest.get("full_slice_benchmarks")
    groups = [manifest.get("artifacts"), manifest.get("device_files"), slices.get("rows") if isinstance(slices, dict) else None]
    names = {e.get("file") for g in groups if isinstance(g, list) for e in g if isinstance(e, dict)}
    return {n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\\" not in n}


def written_files(manifest) -> set[str]:
    """Names EdgeShrink writes in a bundle folder: its fixed files, the later ones it carries over on
    a re-run, and every file the manifest lists. Only these may be replaced or shipped."""
    return set(TOOL_FILES) | set(KEEP_ON_RERUN) | listed_files(manifest)


def foreign_files(folder: Path) -> list[str]:
    """Files in an existing output folder that no EdgeShrink run or command wrote."""
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder.name]
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    known = written_files(manifest)
    return sorted(p.name for p in folder.iterdir() if p.name not in known)


def check_replaceable(final: Path) -> None:
    """Refuse (one line) to replace a folder that holds files the tool did not write."""
    foreign = foreign_files(Path(final))
    if foreign:
        raise EdgeShrinkError(f"{final} holds files EdgeShrink did not write ({', '.join(foreign[:3])}); move them "
                              "away or choose another --out, so a re-run cannot delete them")


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """rmdir each folder (deepest first) while it is empty: what a refused run created, never content."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def _make_parent(final: Path) -> list[Path]:
    """Create `final`'s parent (writable); returns the folders created, for removal if the run fails."""
    created = _missing_folders(final.parent)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_if_empty(created)
        raise EdgeShrinkError(f"cannot create output folder {final.parent} ({exc.strerror}); choose a writable --out") from None
    return created


def _carry_over(final: Path, work: Path) -> None:
    """Move device results, TensorRT engines and bench.json of the old folder into the new one."""
    for keep in KEEP_ON_RERUN:
        if (final / keep).exists() and not (work / keep).exists():
            shutil.move(str(final / keep), str(work / keep))


@contextlib.contextmanager
def _swap_in(final: Path):
    """The staged work folder next to `final`, swapped in on success and deleted on any error."""
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
            _carry_over(final, work)
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_folder(final: Path):
    """Yield an empty `.<name>.partial-<pid>` folder next to `final`; on success it replaces
    `final` (device results, engines and bench.json of the old folder are carried over; the old
    copy is removed only after the swap), on any error (SIGINT/SIGTERM included) it is deleted, and
    so are the (still empty) output folders this run created for it."""
    final = Path(final)
    created = _make_parent(final)
    try:
        with _swap_in(final) as work:
            yield work
    except BaseException:
        _remove_if_empty(created)
        raise


def save_torch(payload, path: Path) -> None:
    """torch.save to a temporary name, then moved into place. A write the disk refused (torch says
    only "iostream error") is the OSError it was, and the temporary file is removed."""
    import errno

    import torch

    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
    except RuntimeError as exc:
        tmp.unlink(missing_ok=True)
        if shutil.disk_usage(path.parent).free < 1 << 20:  # under 1 MiB left: the disk was full
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise OSError(errno.EIO, f"could not write ({str(exc)[:80]})", str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
