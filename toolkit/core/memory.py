"""A memory ceiling for steps that can run away (Torch-Pruning's tracing of some attention-like
graphs grew past 21 GB here, and the kernel's OOM killer ended the whole run without a word).
Under the ceiling such a step raises MemoryError, which the step turns into its one-line refusal."""

from __future__ import annotations

import contextlib


def _meminfo_bytes(key: str, path: str = "/proc/meminfo") -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _address_space_bytes() -> int:
    return _meminfo_bytes("VmSize", "/proc/self/status")


@contextlib.contextmanager
def memory_ceiling(*, fraction: float = 0.75):
    """Inside the block the process's address space may grow by at most `fraction` of the memory
    available when it starts (Linux RLIMIT_AS, soft limit only; restored after; within any limit
    already set). Where /proc or `resource` is missing, nothing is limited."""
    try:
        import resource

        headroom = int(fraction * _meminfo_bytes("MemAvailable"))
        ceiling = _address_space_bytes() + headroom
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, KeyError, ValueError):
        yield
        return
    for limit in (soft, hard):
        if limit != resource.RLIM_INFINITY:
            ceiling = min(ceiling, limit)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
