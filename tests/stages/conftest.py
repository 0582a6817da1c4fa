"""Fixtures for tests/stages: the emulated arm64 Python the device-script tests run under."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Read at import, before the session fixture points EDGESHRINK_CACHE_DIR at a fresh temp folder.
CACHE = os.environ.get("EDGESHRINK_AARCH64_CACHE") or str(
    Path(os.environ["EDGESHRINK_CACHE_DIR"]) / "aarch64" if os.environ.get("EDGESHRINK_CACHE_DIR") else REPO / ".cache" / "aarch64")


@pytest.fixture(scope="session")
def aarch64_env():
    """(qemu command prefix, environment) for the emulated arm64 Python; fails (never skips) with the
    one command to run when qemu-user-static / mmdebstrap are missing."""
    env = {**os.environ, "EDGESHRINK_AARCH64_CACHE": CACHE, "PYTHON": sys.executable}
    proc = subprocess.run([str(REPO / "tests" / "aarch64_setup.sh")], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        pytest.fail("aarch64 setup failed: " + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    ready = Path(proc.stdout.strip().splitlines()[-1])
    if not ready.is_absolute():
        ready = REPO / ready
    root = ready / "root"
    run_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ready / "wheels"), "LC_ALL": "C.UTF-8"}
    return ["qemu-aarch64-static", "-L", str(root), str(root / "usr" / "bin" / "python3.11")], run_env
