#!/usr/bin/env python3
"""Run an EdgeShrink bundle's ONNX model on an NVIDIA Jetson.

TensorRT path: build an engine with trtexec from the bundle's ONNX (INT8 through the QDQ ONNX,
i.e. explicit quantization; FP16 as the profile says), cache it under engines/ keyed by the
ONNX sha256 + TensorRT version + flags, benchmark it with trtexec and parse its performance
summary. Without TensorRT it falls back to onnxruntime (TensorRT EP, then CUDA EP, then CPU).

  python3 edgeshrink_trt.py --json results/device.json
  python3 edgeshrink_trt.py --runtime onnxruntime --json results/ort.json
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
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgeshrink_common import open_bundle, results_record, sha256_file, time_calls, write_json  # noqa: E402

TRTEXEC_CANDIDATES = ("trtexec", "/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
_STAT = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([0-9.eE+-]+)\s*ms")


def find_trtexec() -> str | None:
    for c in TRTEXEC_CANDIDATES:
        path = shutil.which(c) or (c if Path(c).is_file() else None)
        if path:
            return path
    return None


def trtexec_command(trtexec: str, onnx: Path, engine: Path, precision: str, *, fp16: bool, build: bool,
                    warmup_ms: int = 500, duration_s: int = 5, avg_runs: int = 100) -> list[str]:
    """The trtexec command line: build-and-save (build=True) or load-and-benchmark."""
    cmd = [trtexec]
    if build:
        cmd += [f"--onnx={onnx}", f"--saveEngine={engine}"]
        if precision == "int8":
            cmd.append("--int8")  # with a QDQ ONNX this means explicit quantization (no calibrator)
        if fp16 or precision == "int8":
            cmd.append("--fp16")  # let layers without Q/DQ run in FP16 rather than FP32
    else:
        cmd += [f"--loadEngine={engine}"]
    cmd += [f"--warmUp={warmup_ms}", f"--duration={duration_s}", f"--avgRuns={avg_runs}", "--useSpinWait"]
    return cmd


def parse_stat_line(line: str) -> dict:
    """'min = 0.7 ms, ..., percentile(99%) = 1.0 ms' -> {'min': 0.7, ..., 'p99': 1.0}."""
    out = {}
    for key, pct, value in _STAT.findall(line):
        name = f"p{pct.rstrip('0').rstrip('.') if '.' in pct else pct}" if pct else key
        out[name] = float(value)
    if "median" in out:
        out.setdefault("p50", out["median"])
    return out


def parse_trtexec_summary(text: str) -> dict:
    """Parse trtexec's '=== Performance summary ===' block (TensorRT 8.x/10.x format)."""
    if "Performance summary" not in text:
        raise ValueError("no '=== Performance summary ===' in trtexec output")
    summary = text.split("Performance summary", 1)[1]
    result: dict = {}
    for raw in summary.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw.strip())
        if line.startswith("Throughput:"):
            result["throughput_qps"] = float(re.findall(r"([0-9.eE+-]+)\s*qps", line)[0])
        elif line.startswith("Latency:"):
            result["latency_ms"] = parse_stat_line(line)
        elif line.startswith("GPU Compute Time:"):
            result["gpu_compute_ms"] = parse_stat_line(line)
        elif line.startswith("Enqueue Time:"):
            result["enqueue_ms"] = parse_stat_line(line)
        elif line.startswith("H2D Latency:"):
            result["h2d_ms"] = parse_stat_line(line)
        elif line.startswith("D2H Latency:"):
            result["d2h_ms"] = parse_stat_line(line)
        elif line.startswith("Total Host Walltime:"):
            result["host_walltime_s"] = float(re.findall(r"([0-9.eE+-]+)\s*s", line)[0])
    if "latency_ms" not in result:
        raise ValueError("trtexec summary has no 'Latency:' line")
    result["fps"] = result.get("throughput_qps") or 1000.0 / result["latency_ms"]["p50"]
    return result


def tensorrt_version() -> str | None:
    try:
        import tensorrt

        return tensorrt.__version__
    except ImportError:
        pass
    trtexec = find_trtexec()
    if trtexec:
        out = subprocess.run([trtexec, "--help"], capture_output=True, text=True).stdout
        m = re.search(r"TensorRT v(\d+)", out)
        if m:
            v = m.group(1)
            return f"{int(v[0])}.{int(v[1:3])}.{int(v[3:])}" if len(v) >= 4 else v
    return None


def engine_path(bundle: Path, onnx: Path, trt_version: str, precision: str, fp16: bool) -> Path:
    """Cache key: ONNX sha256 + TensorRT version + precision flags."""
    key = f"{sha256_file(onnx)[:16]}-trt{trt_version}-{precision}{'-fp16' if fp16 else ''}"
    return bundle / "engines" / f"{onnx.stem}-{key}.engine"


def run_tensorrt(bundle: Path, manifest: dict, artifact: dict, args) -> dict:
    trtexec = find_trtexec()
    if trtexec is None:
        raise FileNotFoundError("trtexec not found")
    version = tensorrt_version() or "unknown"
    onnx = bundle / artifact["file"]
    fp16 = manifest.get("deploy", {}).get("fp16", True)
    engine = engine_path(bundle, onnx, version, artifact["precision"], fp16)
    engine.parent.mkdir(exist_ok=True)
    built = False
    if not engine.is_file():
        cmd = trtexec_command(trtexec, onnx, engine, artifact["precision"], fp16=fp16, build=True)
        print("building engine:", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not engine.is_file():
            raise RuntimeError("trtexec build failed: " + (proc.stdout + proc.stderr).strip().splitlines()[-1])
        built = True
    proc = subprocess.run(trtexec_command(trtexec, onnx, engine, artifact["precision"], fp16=fp16, build=False,
                                          duration_s=int(args.seconds)), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("trtexec run failed: " + (proc.stdout + proc.stderr).strip().splitlines()[-1])
    perf = parse_trtexec_summary(proc.stdout)
    artifact = dict(artifact, loaded_sha256=sha256_file(onnx))  # the ONNX the engine was built from
    bench = {"latency_ms": perf["latency_ms"], "fps": perf["fps"], "runs": None}
    runtime = {"name": "tensorrt", "version": version, "engine": engine.name, "engine_built_now": built,
               "fp16": fp16, "precision": artifact["precision"]}
    return results_record(manifest, artifact, runtime, bench, trtexec=perf)


def run_onnxruntime(bundle: Path, manifest: dict, artifact: dict, args) -> dict:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads or manifest.get("deploy", {}).get("threads", 2)
    data = C.read_listed(bundle, artifact)  # the bytes hashed are the bytes run
    session = ort.InferenceSession(data, opts, providers=wanted)
    spec = manifest["input"]
    x = np.random.default_rng(0).standard_normal((1, spec["channels"], spec["height"], spec["width"])).astype(np.float32)
    name = session.get_inputs()[0].name
    b = manifest.get("deploy", {}).get("benchmark", {})
    bench = time_calls(lambda: session.run(None, {name: x}), args.warmup or b.get("warmup", 20),
                       args.runs or b.get("min_runs", 100), args.seconds)
    runtime = {"name": "onnxruntime", "version": ort.__version__, "providers": session.get_providers(),
               "threads": opts.intra_op_num_threads}
    return results_record(manifest, dict(artifact, loaded_sha256=C.sha256_bytes(data)), runtime, bench)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(HERE))
    p.add_argument("--artifact", help="artifact name (default: the profile's deploy artifact)")
    p.add_argument("--runtime", choices=["auto", "tensorrt", "onnxruntime"], default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--runs", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", help="write the results JSON here")
    args = p.parse_args(argv)
    bundle, manifest, artifact = open_bundle(args.bundle, args.artifact, "onnx")
    record = None
    if args.runtime in ("auto", "tensorrt"):
        try:
            record = run_tensorrt(bundle, manifest, artifact, args)
        except (FileNotFoundError, RuntimeError) as exc:
            if args.runtime == "tensorrt":
                raise SystemExit(f"error: {exc}") from None
            print(f"TensorRT unavailable ({exc}); falling back to onnxruntime")
    if record is None:
        record = run_onnxruntime(bundle, manifest, artifact, args)
    lat = record["latency_ms"]
    print(f"{record['runtime']['name']}: p50 {lat['p50']:.3f} ms, p99 {lat.get('p99', float('nan')):.3f} ms, "
          f"{record['fps']:.1f} FPS")
    if args.json:
        write_json(args.json, record)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
