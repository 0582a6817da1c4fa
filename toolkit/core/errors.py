"""One error type whose message is a single line naming the problem and the fix."""

from __future__ import annotations

import difflib
from typing import Iterable


class EdgeShrinkError(Exception):
    """A user-facing error. `str(err)` is one line: what is wrong and how to fix it."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> EdgeShrinkError:
    """Build the error for an unknown model/target/key, listing the valid names."""
    choices = sorted(choices)
    return EdgeShrinkError(
        f'unknown {kind} "{name}"{did_you_mean(name, choices)}; choose one of: {", ".join(choices)}'
    )


def os_error_line(exc: OSError) -> str:
    """One line for an error the operating system raised while EdgeShrink wrote or read a file."""
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the disk{where}; nothing partial was kept: free space there, or write "
                "elsewhere (--out DIR for bundles, EDGESHRINK_CACHE_DIR for caches)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write{where}: {exc.strerror}; choose a writable place (--out DIR for bundles, "
                "EDGESHRINK_CACHE_DIR for caches)")
    return f"{exc.strerror or type(exc).__name__}{where}; check the path and its disk"
