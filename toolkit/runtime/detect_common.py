"""The host's handle on deploy/common/edgeshrink_detect.py: box decoding and NMS for detection,
the same file the device scripts run (numpy only), loaded by path once per process."""

from __future__ import annotations

from toolkit.runtime.timing import device_module


def device_detect():
    """The edgeshrink_detect module (decoding, NMS), loaded from deploy/common once per process."""
    return device_module("edgeshrink_detect")


def checked_decoding(spec: dict, where: str) -> dict:
    """The card's detection block with defaults filled in; a bad one is a one-line EdgeShrinkError."""
    from toolkit.core.errors import EdgeShrinkError

    try:
        return device_detect().check_decoding(dict(spec or {}))
    except ValueError as exc:
        raise EdgeShrinkError(f"{where}: {exc}; fix the card's detection block") from None
