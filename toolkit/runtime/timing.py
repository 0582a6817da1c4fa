"""The host's handle on the one device helper module, deploy/common/edgeshrink_common.py.

That file is what bundles ship and device scripts run (stdlib + numpy only); the host loads the
same file by path instead of keeping its own copy of the timing loop, hashing, memory probe,
interpreter loading and preprocessing."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from toolkit.core.paths import DEPLOY_DIR

COMMON_FILE = DEPLOY_DIR / "common" / "edgeshrink_common.py"  # <repo>/deploy, or the installed package data


@lru_cache(maxsize=1)
def device_common():
    """The edgeshrink_common module, loaded from deploy/common (shipped with the package) once per process."""
    spec = importlib.util.spec_from_file_location("edgeshrink_common", COMMON_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_calls(call, warmup: int = 10, min_runs: int = 50, min_seconds: float = 2.0, max_runs: int = 100_000) -> dict:
    """Latency percentiles (ms) and FPS of `call()`; runs until both min_runs and min_seconds pass."""
    return device_common().time_calls(call, warmup, min_runs, min_seconds, max_runs)


def summarize_ms(ms) -> dict:
    """The common latency record from raw per-run milliseconds."""
    return device_common().summarize_ms(ms)


def peak_rss_mb():
    return device_common().peak_rss_mb()
