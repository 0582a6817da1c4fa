"""Choose the deployed file by measuring on the device itself (issue 9, item 5).

A bundle for a device profile is built on the host, where its deploy choice is only an estimate
(`measured_on: host-estimate`). Once `deliver` has the bundle on the device, every TFLite file
that passed the gate is benchmarked there with the bundle's own script (`edgeshrink_run.py
--bench --artifact NAME`), and the fastest one becomes the deploy artifact: the manifest's
`deploy.selection` is replaced by the device-measured record (the host estimate kept beside it as
`deploy.host_estimate`), written locally and on the device, and `report.md` gains a line."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Callable, Optional

from toolkit.core.errors import EdgeShrinkError


def needs_device_choice(manifest: dict) -> bool:
    """True for TFLite bundles of `deploy.select: fastest` profiles whose choice was not measured
    where they run: a host estimate, or no measurement at all (built with --no-bench)."""
    deploy = manifest.get("deploy") or {}
    selection = deploy.get("selection") or {}
    return (deploy.get("engine") == "tflite" and deploy.get("select", "fastest") == "fastest"
            and bool(selection.get("candidates")) and selection.get("measured_on") != "host")


def device_p50(ssh, manifest: dict, *, remote_dir: str, python: str, artifact: str) -> float:
    """Benchmark one artifact on the device; its result must name the sha256 the bundle lists."""
    from toolkit.delivery.compare import check_device_result, parse_json_object

    rel = f"results/bench-{artifact}.json"
    q = shlex.quote
    ssh.run(f"cd -- {q(remote_dir)} && {q(python)} edgeshrink_run.py --bench --artifact {q(artifact)} --json {q(rel)}",
            f"device benchmark of {artifact}", timeout=1800)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "bench.json"
        ssh.pull_file(f"{remote_dir}/{rel}", local)
        where = f"{rel} from {ssh.target}"
        result = parse_json_object(local.read_bytes().decode("utf-8", errors="replace"), where,
                                   "check the device's scripts and rerun the deploy")
    check_device_result(result, where, manifest.get("primary_metric", "top1"))
    expected = next(a["sha256"] for a in manifest["artifacts"] if a["name"] == artifact)
    if result.get("sha256") != expected:
        raise EdgeShrinkError(f"the device benchmarked a file for {artifact} whose sha256 differs from the bundle's; "
                              "rerun the deploy")
    return reported_p50(result, where)


def reported_p50(result: dict, where: str) -> float:
    """The p50 latency of a checked device result; a result without one is a one-line error."""
    p50 = (result.get("latency_ms") or {}).get("p50")
    if p50 is None:
        raise EdgeShrinkError(f"{where} reports no latency_ms.p50; check the device's scripts and rerun the deploy")
    return float(p50)


def choose_on_device(ssh, manifest: dict, *, remote_dir: str, python: str, deployed_result: dict, where: str,
                     say: Callable[[str], None]) -> dict:
    """The selection record measured on the device: every passing candidate's device p50."""
    estimate = manifest["deploy"]["selection"]
    p50 = {manifest["deploy"]["artifact"]: reported_p50(deployed_result, f"results/device.json from {where}")}
    for row in estimate["candidates"]:
        if row["passes"] and row["artifact"] not in p50:
            say(f"benchmarking {row['artifact']} on the device")
            p50[row["artifact"]] = device_p50(ssh, manifest, remote_dir=remote_dir, python=python, artifact=row["artifact"])
    rows = [{**row, "host_p50_ms": row["p50_ms"], "p50_ms": p50.get(row["artifact"])} for row in estimate["candidates"]]
    best = min((r for r in rows if r["passes"] and r["p50_ms"] is not None), key=lambda r: r["p50_ms"])
    changed = "" if best["artifact"] == estimate["artifact"] else f"; the host estimate had chosen {estimate['artifact']}"
    reason = (f"fastest tflite file that passes the gate: p50 {best['p50_ms']:.3f} ms (measured on the device {where})"
              f"{changed}")
    return {"artifact": best["artifact"], "reason": reason, "measured_on": f"device {where}", "candidates": rows}


def record_device_choice(bundle: Path, manifest: dict, selection: dict, *, push: Optional[Callable[[], None]]) -> dict:
    """Write the device-measured choice into the bundle's manifest.json (atomically) and report.md;
    `push()` copies the bundle to the device again when the deploy artifact changed."""
    deploy = {**manifest["deploy"], "artifact": selection["artifact"], "selection": selection,
              "host_estimate": manifest["deploy"]["selection"]}
    updated = {**manifest, "deploy": deploy}
    tmp = bundle / "manifest.json.tmp"
    tmp.write_text(json.dumps(updated, indent=2))
    os.replace(tmp, bundle / "manifest.json")
    report = bundle / "report.md"
    if report.is_file():
        lines = ["", f"**Deployed after measuring on the device: `{selection['artifact']}`** — {selection['reason']}.", "",
                 "| candidate | device p50 ms | host p50 ms | gate |", "|---|---|---|---|"]
        for r in selection["candidates"]:
            dev = "–" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}"
            host = "–" if r.get("host_p50_ms") is None else f"{r['host_p50_ms']:.3f}"
            lines.append(f"| {r['artifact']} | {dev} | {host} | {'pass' if r['passes'] else '; '.join(r['why_not'])} |")
        with open(report, "a") as f:
            f.write("\n".join(lines) + "\n")
    if push is not None and selection["artifact"] != manifest["deploy"]["artifact"]:
        push()
    return updated
