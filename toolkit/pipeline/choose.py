"""Which file a target deploys: the fastest one that passes the gate, measured, never a file slower
than the dense FP32 one, with the reason written into the manifest.

Gate: the file's primary metric is at most `gate.max_metric_drop` below the dense FP32 file's, and,
where the profile demands it, the file runs wholly on the target's delegate (one partition).
Speed: host p50 for the host profile; for device profiles the device's own p50 when a device run is
given, otherwise the host ranking as a labelled estimate (figures on the device may rank otherwise)."""

from __future__ import annotations

from typing import Optional

from toolkit.core.errors import EdgeShrinkError

ENGINE_FORMAT = {"tflite": "tflite", "onnxruntime": "onnx", "tensorrt": "onnx"}


def _metric_drop(artifact, dense_metric: Optional[float], metric: str) -> Optional[float]:
    value = artifact.metrics.get(metric)
    return None if value is None or dense_metric is None else dense_metric - value


def gate_failures(artifact, *, dense_metric: Optional[float], metric: str, gate) -> list[str]:
    """Why a file fails the deploy gate (empty: it passes)."""
    reasons = []
    drop = _metric_drop(artifact, dense_metric, metric)
    if drop is not None and drop > gate.max_metric_drop:
        reasons.append(f"{metric} {drop:+.4f} below dense > {gate.max_metric_drop}")
    if dense_metric is not None and artifact.metrics.get(metric) is None:
        reasons.append(artifact.metrics.get("metric_error") or f"no {metric} measured")
    partitions = (artifact.delegate or {}).get("partitions")
    if gate.require_full_delegation and partitions not in (None, 1):
        reasons.append(f"{partitions} delegate partitions (full delegation required)")
    if artifact.parity and not artifact.parity.get("ok", True):
        reasons.append("parity failed")
    return reasons


def candidates(artifacts, target) -> list:
    """Files the target's runtime can run: its format, a precision it lists, dense FP32 included."""
    fmt = ENGINE_FORMAT[target.runtime.engine]
    return [a for a in artifacts if a.format == fmt and a.precision in target.precisions]


def choose_deploy(artifacts, *, target, metric: str, measured_on: str) -> dict:
    """The selection record: chosen artifact name, how speed was judged, every candidate's figures."""
    pool = candidates(artifacts, target)
    fmt = ENGINE_FORMAT[target.runtime.engine]
    dense = next((a for a in pool if a.stage == "dense" and a.precision == "fp32"), None)
    dense_metric = dense.metrics.get(metric) if dense else None
    rows = []
    for a in pool:
        fails = gate_failures(a, dense_metric=dense_metric, metric=metric, gate=target.gate)
        rows.append({"artifact": a.name, "p50_ms": (a.latency_ms or {}).get("p50"), metric: a.metrics.get(metric),
                     "partitions": (a.delegate or {}).get("partitions"), "passes": not fails, "why_not": fails})
    passing = [r for r in rows if r["passes"]]
    if not rows:
        raise EdgeShrinkError(f"deploy artifact {target.deploy.artifact} was not produced (no {fmt} file); check the "
                              "profile's formats/precisions")
    if not passing:  # never deploy a file that fails the gate, whatever the selection mode
        raise EdgeShrinkError(f"no {fmt} file passes the deploy gate ({'; '.join(r['artifact'] + ': ' + ', '.join(r['why_not']) for r in rows)}); "
                              "relax gate.max_metric_drop, prune less, or fine-tune longer")
    if target.deploy.select == "fixed" or all(r["p50_ms"] is None for r in passing):
        return _preferred(pool, rows, target, fmt)
    best = min((r for r in passing if r["p50_ms"] is not None), key=lambda r: r["p50_ms"])
    label = "host measurement" if measured_on == "host" else "ESTIMATE from the host ranking (measure on the device with HOST=)"
    reason = (f"fastest {fmt} file that passes the gate: p50 {best['p50_ms']:.3f} ms ({label}); "
              f"{sum(not r['passes'] for r in rows)} of {len(rows)} candidates failed the gate")
    return {"artifact": best["artifact"], "reason": reason, "measured_on": measured_on, "candidates": rows}


def _preferred(pool, rows, target, fmt: str) -> dict:
    """Without a latency ranking (deploy.select: fixed, or --no-bench): the profile's deploy.artifact
    when it passes the gate. A fixed choice that fails is refused; without measurements the passing
    file of the preferred precision with the fewest MACs stands in (pruned before dense on a tie)."""
    chosen = target.deploy.artifact
    row = next((r for r in rows if r["artifact"] == chosen), None)
    fixed = target.deploy.select == "fixed"
    if row is None and fixed:
        raise EdgeShrinkError(f"deploy artifact {chosen} was not produced; check the profile's formats/precisions")
    if row is None:  # e.g. no INT8 file: neither converter's passed the full-integer check (tflite_converters)
        row = {"artifact": chosen, "passes": False, "why_not": ["not produced (the report's TFLite converters say why)"]}
    elif row["passes"]:
        reason = ("the profile's deploy.artifact (deploy.select: fixed)" if fixed else
                  "the profile's deploy.artifact: no latency was measured (--no-bench)")
        return {"artifact": chosen, "reason": reason, "measured_on": None, "candidates": rows}
    why = ", ".join(row["why_not"])
    if fixed:
        raise EdgeShrinkError(f"deploy artifact {chosen} (deploy.select: fixed) fails the deploy gate ({why}); relax "
                              "gate.max_metric_drop, prune less or fine-tune longer, or set deploy.select: fastest")
    precision = chosen.split("-")[-1]
    passes = {r["artifact"] for r in rows if r["passes"]}
    best = min((a for a in pool if a.name in passes),
               key=lambda a: (a.precision != precision, a.macs or 0, a.stage == "dense", a.name))
    reason = (f"the profile's deploy.artifact {chosen} fails the gate ({why}) and no latency was measured "
              f"(--no-bench): {best.name} is the passing {fmt} file with the fewest MACs")
    return {"artifact": best.name, "reason": reason, "measured_on": None, "candidates": rows}
