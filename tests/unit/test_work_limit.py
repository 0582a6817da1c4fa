"""Limits count work (CPU seconds), not wall-clock seconds: a child that waits is not stopped for
waiting, a child that computes is stopped at its CPU limit, and a child that hangs is stopped by the
wall-clock backstop; each with one line, never a traceback."""

import signal
import sys
import time

import numpy as np
import pytest

from toolkit.core import work_limit
from toolkit.core.errors import EdgeShrinkError
from toolkit.core.work_limit import WorkLimitExceeded, cpu_time_box, run_limited, spent_cpu_limit

BUSY = [sys.executable, "-c", "while True: pass"]


def test_a_child_that_computes_is_stopped_at_its_cpu_limit():
    started = time.monotonic()
    with pytest.raises(EdgeShrinkError) as raised:
        run_limited(BUSY, cpu_seconds=1, what="the busy child", fix="give it less to do")
    message = str(raised.value)
    assert "the busy child spent its 1 CPU seconds and was stopped; give it less to do" == message
    assert "\n" not in message
    assert time.monotonic() - started < 60


def test_a_child_that_waits_is_not_stopped_for_waiting():
    """2 s of wall-clock time and almost no CPU pass a 1-CPU-second limit (a wall-clock limit would stop it)."""
    done = run_limited([sys.executable, "-c", "import time; time.sleep(2); print('finished')"], cpu_seconds=1,
                       what="the sleeping child", fix="-", capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "finished"


def test_a_hung_child_is_stopped_by_the_wall_clock_backstop(monkeypatch):
    monkeypatch.setattr(work_limit, "backstop_s", lambda cpu_seconds: 1.0)
    with pytest.raises(EdgeShrinkError, match=r"^the hung child waited 1 s without finishing and was stopped; wait less$"):
        run_limited([sys.executable, "-c", "import time; time.sleep(60)"], cpu_seconds=30, what="the hung child",
                    fix="wait less")


def test_without_a_limit_nothing_is_limited():
    done = run_limited([sys.executable, "-c", "import sys; sys.exit(3)"], cpu_seconds=None, what="-", fix="-")
    assert done.returncode == 3
    assert work_limit.backstop_s(None) is None


def test_a_kill_that_is_not_the_cpu_limit_is_not_reported_as_one():
    """SIGKILL from the OOM killer or a user, well before the limit, is the child's own failure."""
    assert spent_cpu_limit(-signal.SIGXCPU, cpu_seconds=10, spent_s=10.2)
    assert spent_cpu_limit(-signal.SIGKILL, cpu_seconds=10, spent_s=20.0)
    assert not spent_cpu_limit(-signal.SIGKILL, cpu_seconds=10, spent_s=0.5)
    assert not spent_cpu_limit(0, cpu_seconds=10, spent_s=10.0)
    assert not spent_cpu_limit(-signal.SIGXCPU, cpu_seconds=None, spent_s=10.0)


def test_the_in_process_box_counts_cpu_time_not_sleep():
    with cpu_time_box(0.3):
        time.sleep(1.0)  # no CPU spent: not stopped
    with pytest.raises(WorkLimitExceeded):
        with cpu_time_box(0.3):
            total = 0
            while True:
                total += 1
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)  # the timer is cleared after the block


def test_the_in_process_box_is_not_an_exception_a_step_would_swallow():
    assert not issubclass(WorkLimitExceeded, Exception)


def test_an_onnx2tf_child_over_its_cpu_limit_is_one_line(tmp_path):
    """The real conversion child (it imports TensorFlow: more than a CPU second) under a 1-second limit."""
    import torch

    from toolkit.convert.background import BackgroundConversion
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    onnx_path = torch_to_onnx(torch.nn.Conv2d(3, 4, 3), (1, 3, 16, 16), tmp_path / "tiny.onnx")
    job = BackgroundConversion(onnx_path, tmp_path / "out", calib01=np.zeros((2, 16, 16, 3), np.float32),
                               mean=(0.0,), std=(1.0,), int8=False, io_dtype="int8", cache=False, cpu_seconds=1)
    with pytest.raises(EdgeShrinkError, match=r"^TFLite conversion \(onnx2tf\) spent its 1 CPU seconds and was stopped"):
        job.result()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tflite"))
