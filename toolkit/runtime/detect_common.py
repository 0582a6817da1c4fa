"""The host's handle on deploy/common/edgeshrink_detect.py: box decoding and NMS for detection,
the same file the device scripts run (numpy only), loaded by path once per process."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from toolkit.core.paths import DEPLOY_DIR

DETECT_FILE = DEPLOY_DIR / "common" / "edgeshrink_detect.py"  # <repo>/deploy, or the installed package data


@lru_cache(maxsize=1)
def device_detect():
    """The edgeshrink_detect module (decoding, NMS), loaded from deploy/common once per process."""
    spec = importlib.util.spec_from_file_location("edgeshrink_detect", DETECT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checked_decoding(spec: dict, where: str) -> dict:
    """The card's detection block with defaults filled in; a bad one is a one-line EdgeShrinkError."""
    from toolkit.core.errors import EdgeShrinkError

    try:
        return device_detect().check_decoding(dict(spec or {}))
    except ValueError as exc:
        raise EdgeShrinkError(f"{where}: {exc}; fix the card's detection block") from None
