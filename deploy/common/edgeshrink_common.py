"""Shared by every on-device script: bundle checks, preprocessing from the manifest, the common
results schema. Needs only the standard library and numpy (no torch, no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

RESULTS_SCHEMA = "edgeshrink-results/1"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle) -> dict:
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; run from a bundle folder or pass --bundle")
    return json.loads(path.read_text())


def verify_bundle(bundle) -> list[str]:
    """Problems found when checking every file the manifest lists against its sha256 (empty = ok)."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    problems = []
    entries = [(a["file"], a["sha256"]) for a in manifest.get("artifacts", [])]
    entries += [(f["file"], f["sha256"]) for f in manifest.get("device_files", [])]
    for rel, digest in entries:
        path = bundle / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def deploy_artifact(manifest: dict, name: str | None = None) -> dict:
    """The artifact record the device runs (the profile's deploy.artifact unless `name` is given)."""
    wanted = name or manifest.get("deploy", {}).get("artifact")
    for a in manifest["artifacts"]:
        if a["name"] == wanted:
            return a
    raise SystemExit(f"error: artifact {wanted!r} is not in the manifest; choose one of "
                     + ", ".join(a["name"] for a in manifest["artifacts"]))


def open_bundle(bundle, artifact_name: str | None, fmt: str, check_hashes: bool = True) -> tuple[Path, dict, dict]:
    """(bundle, manifest, artifact): hashes checked, the artifact picked and its format enforced."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if check_hashes:
        problems = verify_bundle(bundle)
        if problems:
            raise SystemExit("error: bundle hash check failed: " + "; ".join(problems))
    artifact = deploy_artifact(manifest, artifact_name)
    if artifact["format"] != fmt:
        raise SystemExit(f"error: {artifact['file']} is {artifact['format']}; this runner takes {fmt} files")
    return bundle, manifest, artifact


def percentiles(ms) -> dict:
    import numpy as np

    ms = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min())}


def time_calls(call, warmup: int, min_runs: int, min_seconds: float) -> dict:
    """Warm-up, then run until both min_runs and min_seconds pass; latency record in ms."""
    for _ in range(warmup):
        call()
    samples, started = [], time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000.0)
    lat = percentiles(samples)
    return {"runs": len(samples), "latency_ms": lat, "fps": 1000.0 / lat["p50"]}


def peak_rss_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def device_description() -> dict:
    cpu = platform.processor() or platform.machine()
    model = None
    for path, key in (("/proc/cpuinfo", "model name"), ("/proc/cpuinfo", "Model")):
        try:
            for line in open(path):
                if line.startswith(key):
                    value = line.split(":", 1)[1].strip()
                    if key == "Model":
                        model = value
                    else:
                        cpu = value
        except OSError:
            pass
    try:
        model = model or Path("/proc/device-tree/model").read_text().strip("\x00\n")
    except OSError:
        pass
    return {"hostname": platform.node(), "model": model, "cpu": cpu, "arch": platform.machine(),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}


def results_record(manifest: dict, artifact: dict, runtime: dict, bench: dict | None, **extra) -> dict:
    """The one results schema every harness writes (host, Raspberry Pi, Jetson, Android)."""
    rec = {
        "schema": RESULTS_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": manifest.get("model"),
        "target": manifest.get("target"),
        "file": artifact["file"],
        "sha256": artifact["sha256"],
        "format": artifact["format"],
        "precision": artifact["precision"],
        "runtime": runtime,
        "device": device_description(),
        "latency_ms": (bench or {}).get("latency_ms"),
        "fps": (bench or {}).get("fps"),
        "runs": (bench or {}).get("runs"),
        "memory_mb": {"peak_rss": peak_rss_mb()},
    }
    rec.update(extra)
    return rec


def write_json(path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def quantize_input(x, detail):
    """Float model input -> the dtype a TFLite input expects (int8/uint8 via scale/zero point)."""
    import numpy as np

    dtype = detail["dtype"]
    if dtype in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    return np.ascontiguousarray(x, dtype=dtype)


def dequantize_output(y, detail):
    import numpy as np

    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def normalise(images_u8_nhwc, spec: dict):
    """uint8 NHWC images -> float32 NHWC model input (x/255 - mean) / std, as the manifest says."""
    import numpy as np

    x = images_u8_nhwc.astype(np.float32) / 255.0
    return (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)


def check_bundle_main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Check every bundle file against the manifest's sha256")
    p.add_argument("bundle", nargs="?", default=str(Path(__file__).resolve().parent))
    args = p.parse_args(argv)
    problems = verify_bundle(args.bundle)
    for line in problems:
        print(f"hash check failed: {line}")
    if not problems:
        print("bundle ok: every file matches its sha256")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(check_bundle_main())
