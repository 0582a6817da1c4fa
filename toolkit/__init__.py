"""EdgeShrink: prune, quantize, convert, verify and benchmark vision models for edge devices.

`import toolkit` stays light: torch, TensorFlow and the runtimes are imported inside the
functions that need them.
"""

__version__ = "0.1.0"

from toolkit.errors import EdgeShrinkError  # noqa: E402,F401
