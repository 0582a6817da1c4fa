"""Limits that count work: the CPU seconds a step spends, not the wall-clock seconds it waits.

A wall-clock limit that passes on a quiet machine fails on a busy one: with three jobs on two cores
the deploy zoo's 900 s onnx2tf limit stopped conversions of CoaT and Xception41p that finish in
about 400 CPU seconds. Here a child process gets RLIMIT_CPU (the kernel stops it with SIGXCPU, then
SIGKILL, once it has spent that many CPU seconds, however busy the machine is), and an in-process
step gets ITIMER_PROF (the process's CPU time, all threads). A child that hangs without spending CPU
is still stopped by a wall-clock backstop several times longer (`backstop_s`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import threading
from typing import Callable, Optional

from toolkit.core.errors import EdgeShrinkError

BACKSTOP_FACTOR = 6  # a child waiting on nothing is stopped after 6x its CPU limit in wall seconds (+ a minute)
GRACE_S = 10  # SIGXCPU at the limit, SIGKILL this much later


class WorkLimitExceeded(BaseException):
    """Raised inside `cpu_time_box` when the block has spent its CPU seconds (a BaseException, so that
    a step's own `except Exception` does not take it for the step's failure)."""


def backstop_s(cpu_seconds: Optional[float]) -> Optional[float]:
    """The wall-clock seconds after which a child with `cpu_seconds` of CPU is stopped anyway (None: no limit)."""
    return None if not cpu_seconds else BACKSTOP_FACTOR * float(cpu_seconds) + 60.0


def child_setup(cpu_seconds: Optional[float] = None) -> Optional[Callable[[], None]]:
    """A preexec_fn for subprocess: SIGTERM when the parent exits (Linux PR_SET_PDEATHSIG) and, with
    `cpu_seconds`, an RLIMIT_CPU of that many seconds. None off Linux, where neither exists."""
    if not sys.platform.startswith("linux"):
        return None

    def setup() -> None:
        import ctypes
        import resource

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if cpu_seconds:
            soft = max(1, math.ceil(cpu_seconds))
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + GRACE_S))
    return setup


def children_cpu_s() -> float:
    """CPU seconds (user + system) spent so far by this process's children that have been waited for."""
    try:
        import resource
    except ImportError:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spent_cpu_limit(returncode: Optional[int], *, cpu_seconds: Optional[float], spent_s: float) -> bool:
    """Whether a child's exit is the kernel stopping it at its CPU limit: SIGXCPU, or the hard limit's
    SIGKILL (when SIGXCPU was caught) after spending about the limit; another SIGKILL (the OOM
    killer, a user) is not."""
    if not cpu_seconds or returncode is None:
        return False
    return returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and spent_s >= 0.9 * cpu_seconds)


def run_limited(cmd: list[str], *, cpu_seconds: Optional[float], what: str, fix: str,
                **run_options) -> subprocess.CompletedProcess:
    """subprocess.run(cmd) with at most `cpu_seconds` of CPU (None: no limit). Running past it, or
    past the wall-clock backstop, is a one-line EdgeShrinkError naming `what` and `fix`."""
    before = children_cpu_s()
    try:
        done = subprocess.run(cmd, timeout=backstop_s(cpu_seconds), preexec_fn=child_setup(cpu_seconds),
                              check=False, **run_options)
    except subprocess.TimeoutExpired:
        raise EdgeShrinkError(f"{what} waited {backstop_s(cpu_seconds):.0f} s without finishing and was stopped; "
                              f"{fix}") from None
    if spent_cpu_limit(done.returncode, cpu_seconds=cpu_seconds, spent_s=children_cpu_s() - before):
        raise EdgeShrinkError(f"{what} spent its {cpu_seconds:.0f} CPU seconds and was stopped; {fix}")
    return done


@contextlib.contextmanager
def cpu_time_box(cpu_seconds: Optional[float]):
    """Raise WorkLimitExceeded in the block once this process has spent `cpu_seconds` more CPU time
    (ITIMER_PROF: user + system, all threads). A no-op without a limit, off the main thread, or where
    the platform has no profiling timer."""
    if not cpu_seconds or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "ITIMER_PROF"):
        yield
        return

    def expire(signum, frame):
        raise WorkLimitExceeded()
    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, float(cpu_seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
