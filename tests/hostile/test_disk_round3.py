"""The disk says no: a full filesystem during a run, and a read-only output folder, are one line
naming the problem and the fix; nothing partial is left on the disk. The full disk is a real one
(a 64 KB tmpfs; skipped where this machine may not mount one)."""

from __future__ import annotations

import subprocess

import pytest

from tests.hostile.conftest import assert_refused, cli, leftovers


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_that_fills_during_a_run_is_one_line_and_leaves_nothing(full_disk, henv):
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--finetune-epochs", "0",
               "--no-bench", "--out", full_disk / "out")
    assert_refused(proc, "no space left", "--out")
    assert leftovers(full_disk) == [] and not any((full_disk / "out").glob("*")) if (full_disk / "out").exists() else True


def test_a_read_only_output_folder_is_one_line(tmp_path, henv):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permissions; the full-disk case covers the write path")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--finetune-epochs", "0",
               "--no-bench", "--out", out)
    assert_refused(proc, "--out")


def test_os_errors_have_one_line_naming_the_fix():
    import errno

    from toolkit.core.errors import os_error_line

    full = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/x.tflite"))
    assert "no space left" in full and "/data/x.tflite" in full and "--out" in full
    assert "writable" in os_error_line(OSError(errno.EROFS, "Read-only file system", "/ro/x"))
    assert "\n" not in os_error_line(OSError(errno.EIO, "Input/output error"))
