"""toolkit.core.memory: inside the ceiling a runaway allocation raises MemoryError (which a step turns
into its one-line refusal) instead of the kernel's OOM killer ending the run; the limit is restored."""

from __future__ import annotations

import resource

import pytest

from toolkit.core.memory import _meminfo_bytes, memory_ceiling


def test_a_runaway_allocation_raises_memory_error_and_the_limit_is_restored():
    before = resource.getrlimit(resource.RLIMIT_AS)
    too_much = int(0.2 * _meminfo_bytes("MemAvailable"))
    with pytest.raises(MemoryError):
        with memory_ceiling(fraction=0.05):
            bytearray(too_much)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    with memory_ceiling(fraction=0.05):
        bytearray(1 << 20)  # ordinary work still fits
    assert resource.getrlimit(resource.RLIMIT_AS) == before
