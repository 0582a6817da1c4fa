"""The host's handle on the device helper modules in deploy/common (edgeshrink_common, edgeshrink_detect).

Those files are what bundles ship and device scripts run (stdlib + numpy only); the host loads the
same file by path instead of keeping its own copy of the timing loop, hashing, memory probe,
interpreter loading and preprocessing."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from toolkit.core.paths import DEPLOY_DIR

COMMON_DIR = DEPLOY_DIR / "common"  # <repo>/deploy, or the installed package data
COMMON_FILE = COMMON_DIR / "edgeshrink_common.py"


@lru_cache(maxsize=None)
def device_module(name: str):
    """A deploy/common module (edgeshrink_common, edgeshrink_detect), loaded by path from the files
    bundles ship, once per process."""
    spec = importlib.util.spec_from_file_location(name, COMMON_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_common():
    """The edgeshrink_common module (timing loop, hashing, memory probe, interpreter loading)."""
    return device_module("edgeshrink_common")


def time_calls(call, warmup: int = 10, min_runs: int = 50, min_seconds: float = 2.0, max_runs: int = 100_000) -> dict:
    """Latency percentiles (ms) and FPS of `call()`; runs until both min_runs and min_seconds pass."""
    return device_common().time_calls(call, warmup, min_runs, min_seconds, max_runs)


def summarize_ms(ms) -> dict:
    """The common latency record from raw per-run milliseconds."""
    return device_common().summarize_ms(ms)


def peak_rss_mb():
    return device_common().peak_rss_mb()
