#!/usr/bin/env python3
"""Benchmark an EdgeShrink bundle's TFLite model on an Android phone over adb.

Uses the LiteRT/TFLite benchmark tool: the native `benchmark_model` binary (pushed to
/data/local/tmp) or the benchmark app (org.tensorflow.lite.benchmark, read back from logcat).
Runs once per delegate the profile names (XNNPACK CPU, GPU, NNAPI) and writes the common
results schema (init time, first inference, warm-up and steady-state averages, memory).

  python3 android_bench.py --bundle . --benchmark-binary android_aarch64_benchmark_model --json results/android.json
  python3 android_bench.py --bundle . --app --json results/android.json
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
# Never import from the bundle folder: a planted numpy/ or argparse.py there would run unchecked.
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != HERE]


def _load_common(name: str = "edgeshrink_common"):
    """A deploy/common module (edgeshrink_common, edgeshrink_detect) from beside this script (or ../common
    in the source tree); inside a bundle only when its bytes match the sha256 manifest.json lists, and
    those same bytes are what runs."""
    import hashlib
    import json
    import types

    for path in (os.path.join(HERE, f"{name}.py"), os.path.join(HERE, "..", "common", f"{name}.py")):
        if os.path.isfile(path):
            break
    else:
        raise SystemExit(f"error: {name}.py is not beside this script; copy it from deploy/common/")
    with open(path, "rb") as f:
        code = f.read()
    manifest = os.path.join(HERE, "manifest.json")
    if os.path.exists(manifest):
        try:
            with open(manifest, "rb") as f:
                listed = {e["file"]: e["sha256"] for e in json.loads(f.read())["device_files"]}
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            raise SystemExit(f"error: {manifest} is malformed or lists no device_files; copy the bundle again") from None
        if listed.get(os.path.basename(path)) != hashlib.sha256(code).hexdigest():
            raise SystemExit(f"error: {name}.py: sha256 mismatch or not listed in manifest.json; "
                             "copy the bundle again")
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(code, path, "exec"), module.__dict__)
    return module


C = _load_common()

import argparse  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from edgeshrink_common import open_bundle, results_record, write_json  # noqa: E402

DELEGATE_FLAGS = {"xnnpack": ["--use_xnnpack=true"], "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"],
                  "none": ["--use_xnnpack=false"]}
_NUM = r"([0-9.]+(?:e[+-]?\d+)?)"


def benchmark_args(graph: str, delegate: str, threads: int, warmup: int, runs: int, *, min_secs: float) -> list[str]:
    """Flags of the benchmark tool for one delegate."""
    return [f"--graph={graph}", f"--num_threads={threads}", f"--warmup_runs={warmup}", f"--num_runs={runs}",
            f"--min_secs={min_secs:g}", *DELEGATE_FLAGS[delegate]]


def parse_benchmark_output(text: str) -> dict:
    """Parse benchmark_model stdout or the benchmark app's logcat (both formats, with or without
    p5/median/p95). Times in ms, memory in MB."""
    out: dict = {}
    m = re.search(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, Warmup \(avg\): {_NUM}, "
                  rf"Inference \(avg\): {_NUM}", text)
    if not m:
        raise ValueError("no 'Inference timings in us' line in the benchmark output")
    init, first, warm, avg = (float(v) / 1000.0 for v in m.groups())
    out.update(init_ms=init, first_inference_ms=first, warmup_avg_ms=warm, inference_avg_ms=avg)
    stats = re.findall(r"count=(\d+) first=\d+ curr=\d+ min=" + _NUM + " max=" + _NUM + " avg=" + _NUM +
                       " std=" + _NUM + r"(?: p5=" + _NUM + " median=" + _NUM + " p95=" + _NUM + ")?", text)
    if stats:
        count, mn, mx, av, sd, p5, med, p95 = stats[-1]  # the last stat line is the steady-state run
        lat = {"min": float(mn) / 1000, "max": float(mx) / 1000, "mean": float(av) / 1000, "std": float(sd) / 1000}
        if med:
            lat.update(p5=float(p5) / 1000, p50=float(med) / 1000, p95=float(p95) / 1000)
        else:
            lat["p50"] = lat["mean"]
            lat["p50_is_mean"] = True  # older tools print no percentiles
        out["latency_ms"] = lat
        out["runs"] = int(count)
    else:
        out["latency_ms"] = {"p50": avg, "mean": avg, "p50_is_mean": True}
    mem = re.search(rf"Memory footprint delta from the start of the tool \(MB\): init={_NUM} overall={_NUM}", text)
    if mem:
        out["memory_mb"] = {"init_delta": float(mem.group(1)), "overall_delta": float(mem.group(2))}
    peak = re.search(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}", text)
    if peak:
        out.setdefault("memory_mb", {})["peak"] = float(peak.group(1))
    size = re.search(rf"The input model file size \(MB\): {_NUM}", text)
    if size:
        out["model_size_mb"] = float(size.group(1))
    out["fps"] = 1000.0 / out["latency_ms"]["p50"]
    return out


class Adb:
    def __init__(self, adb: str | None, serial: str | None):
        self.adb = adb or shutil.which("adb")
        if not self.adb:
            raise SystemExit("error: adb not found; install Android platform-tools (sdkmanager 'platform-tools') "
                             "and put adb on PATH, or pass --adb PATH")
        self.serial = serial

    def __call__(self, *args: str, check: bool = True) -> str:
        cmd = [self.adb] + (["-s", self.serial] if self.serial else []) + list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed: {(proc.stderr or proc.stdout).strip()[:200]}")
        return proc.stdout

    def require_device(self) -> str:
        lines = [l.split() for l in self("devices").splitlines()[1:] if l.strip()]
        ready = [l[0] for l in lines if len(l) > 1 and l[1] == "device"]
        if not ready:
            raise SystemExit("error: no Android device on adb (adb devices lists none ready); connect a phone with USB "
                             "debugging enabled and accept the prompt")
        if self.serial is None and len(ready) > 1:
            raise SystemExit(f"error: several devices on adb ({', '.join(ready)}); pass --serial")
        return self.serial or ready[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(HERE))
    p.add_argument("--artifact")
    p.add_argument("--benchmark-binary", help="local android_aarch64_benchmark_model to push")
    p.add_argument("--app", action="store_true", help="use the installed benchmark app and logcat instead")
    p.add_argument("--adb")
    p.add_argument("--serial")
    p.add_argument("--delegates", help="comma list (default: the profile's delegate + variants)")
    p.add_argument("--json", help="write the results JSON here")
    args = p.parse_args(argv)

    bundle, manifest, artifact = open_bundle(args.bundle, args.artifact, "tflite")
    dep = manifest.get("deploy", {})
    delegates = args.delegates.split(",") if args.delegates else [dep.get("delegate", "xnnpack")] + dep.get("delegate_variants", [])
    if not args.app and not args.benchmark_binary:
        raise SystemExit("error: pass --benchmark-binary (the LiteRT android_aarch64_benchmark_model) or --app")
    adb = Adb(args.adb, args.serial)
    serial = adb.require_device()
    remote = dep.get("remote_dir", "/data/local/tmp/edgeshrink")
    adb("shell", "mkdir", "-p", remote)
    graph = f"{remote}/{Path(artifact['file']).name}"
    adb("push", str(bundle / artifact["file"]), graph)
    model_name = adb("shell", "getprop", "ro.product.model", check=False).strip()
    bench = dep.get("benchmark", {})
    runs = []
    for delegate in delegates:
        flags = benchmark_args(graph, delegate, dep.get("threads", 4), bench.get("warmup", 20),
                               bench.get("min_runs", 100), min_secs=bench.get("min_seconds", 5.0))
        if args.app:
            adb("logcat", "-c")
            adb("shell", "am", "start", "-S", "-n", "org.tensorflow.lite.benchmark/.BenchmarkModelActivity",
                "--es", "args", '"' + " ".join(flags) + '"')
            text = ""
            for _ in range(120):
                time.sleep(2)
                text = adb("logcat", "-d", "-s", "tflite", check=False)
                if "Inference timings in us" in text:
                    break
        else:
            binary = f"{remote}/benchmark_model"
            adb("push", args.benchmark_binary, binary)
            adb("shell", "chmod", "+x", binary)
            text = adb("shell", binary, *flags)
        parsed = parse_benchmark_output(text)
        runtime = {"name": "litert-benchmark-" + ("app" if args.app else "binary"), "delegate": delegate,
                   "threads": dep.get("threads", 4), "flags": flags}
        rec = results_record(manifest, artifact, runtime,
                             {"latency_ms": parsed["latency_ms"], "fps": parsed["fps"], "runs": parsed.get("runs")},
                             android={k: v for k, v in parsed.items() if k not in ("latency_ms", "fps", "runs")})
        rec["device"] = {"kind": "android", "serial": serial, "model": model_name}
        rec["memory_mb"] = parsed.get("memory_mb", {})
        runs.append(rec)
        print(f"{delegate:8s} init {parsed['init_ms']:.1f} ms, first {parsed['first_inference_ms']:.2f} ms, "
              f"steady {parsed['inference_avg_ms']:.2f} ms ({parsed['fps']:.1f} FPS)")
    if args.json:
        write_json(args.json, runs[0] if len(runs) == 1 else {"schema": runs[0]["schema"], "results": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
