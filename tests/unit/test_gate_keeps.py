"""When the other converter's INT8 file (fewer XNNPACK partitions) may replace the run's: its primary
metric passes the gate against the dense FP32 file, or is no worse than the current file's."""

from __future__ import annotations

from types import SimpleNamespace

from toolkit.pipeline.optional_stages import gate_keeps


def _runner(dense_top1: float, max_drop: float = 0.015):
    dense = SimpleNamespace(name="dense-tflite-fp32", metrics={"top1": dense_top1})
    target = SimpleNamespace(runtime=SimpleNamespace(engine="tflite"), gate=SimpleNamespace(max_metric_drop=max_drop))
    return SimpleNamespace(task=SimpleNamespace(primary_metric="top1"), target=target, artifacts=[dense])


def test_a_file_within_the_gate_or_no_worse_is_kept():
    runner = _runner(0.80)
    assert gate_keeps(runner, metrics={"top1": 0.79}, current={"top1": 0.795})  # within 0.015 of dense
    assert gate_keeps(runner, metrics={"top1": 0.70}, current={"top1": 0.69})  # both fail the gate; no worse
    assert not gate_keeps(runner, metrics={"top1": 0.70}, current={"top1": 0.79})  # fails where the current passes
    assert not gate_keeps(runner, metrics={}, current={"top1": 0.79})
    assert gate_keeps(runner, metrics={}, current={})  # nothing to compare
