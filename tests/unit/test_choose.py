"""The deploy choice (toolkit.pipeline.choose), in milliseconds: whatever the selection mode and
whether latency was measured, the deployed file passes the accuracy gate."""

from __future__ import annotations

import pytest

from tests.conftest import TINY_TARGET
from toolkit.core.errors import EdgeShrinkError


def _target(**deploy):
    from toolkit.config.targets import TargetProfile
    from toolkit.core.schema import validate_data

    return validate_data(TargetProfile, {**TINY_TARGET, "deploy": {**TINY_TARGET["deploy"], **deploy}}, "tiny")


def _files(pruned_int8_top1, *, p50=None):
    from toolkit.models.artifact import Artifact

    rows = [("dense", "fp32", 100, 0.90, 4.0), ("dense", "int8", 100, 0.895, 2.0), ("pruned", "fp32", 50, 0.89, 2.5),
            ("pruned", "int8", 50, pruned_int8_top1, 1.0)]
    return [Artifact(name=f"{s}-tflite-{p}", stage=s, format="tflite", precision=p, file=f"{s}_{p}.tflite", macs=m,
                     metrics={"top1": t}, latency_ms={"p50": ms} if p50 else {}) for s, p, m, t, ms in rows]


def _choose(files, target):
    from toolkit.pipeline.choose import choose_deploy

    choice = choose_deploy(files, target=target, metric="top1", measured_on="host")
    row = next(r for r in choice["candidates"] if r["artifact"] == choice["artifact"])
    assert row["passes"], choice
    return choice


def test_no_bench_deploys_the_profiles_file_when_it_passes():
    assert _choose(_files(0.895), _target())["artifact"] == "pruned-tflite-int8"


def test_no_bench_never_deploys_a_file_failing_the_gate():
    choice = _choose(_files(0.40), _target())
    assert choice["artifact"] == "dense-tflite-int8" and "fails the gate" in choice["reason"]


def test_measured_choice_skips_the_failing_fastest_file():
    choice = _choose(_files(0.40, p50=True), _target())
    assert choice["artifact"] == "dense-tflite-int8" and choice["measured_on"] == "host"


def test_fixed_choice_that_fails_the_gate_is_refused():
    with pytest.raises(EdgeShrinkError, match="fails the deploy gate"):
        _choose(_files(0.40, p50=True), _target(select="fixed"))
    assert _choose(_files(0.895), _target(select="fixed"))["artifact"] == "pruned-tflite-int8"


def test_nothing_passing_is_refused_in_every_mode():
    files = [f.with_(parity={"ok": False}) for f in _files(0.895)]
    for target in (_target(), _target(select="fixed")):
        with pytest.raises(EdgeShrinkError, match="no tflite file passes the deploy gate"):
            _choose(files, target)


def test_the_int8_fallback_is_skipped_when_its_float_twin_already_fails_the_gate():
    from types import SimpleNamespace

    from toolkit.config.targets import Gate
    from toolkit.pipeline.optional_stages import _float_twin_fails

    def art(name, top1, ok=True):
        return SimpleNamespace(name=name, metrics={"top1": top1}, delegate={"partitions": 9}, parity={"ok": ok})

    runner = SimpleNamespace(target=SimpleNamespace(gate=Gate(max_metric_drop=0.01, require_full_delegation=True)),
                             artifacts=[art("pruned-tflite-fp32", 0.70)])
    family = SimpleNamespace(stage="pruned")
    assert "below dense" in _float_twin_fails(runner, family, metric="top1", dense=0.80)
    runner.artifacts = [art("pruned-tflite-fp32", 0.80)]  # passes: its partitions do not matter here
    assert _float_twin_fails(runner, family, metric="top1", dense=0.80) == ""
    runner.artifacts = [art("pruned-tflite-fp32", 0.80, ok=False)]
    assert _float_twin_fails(runner, family, metric="top1", dense=0.80) == "parity failed"
