"""The one device helper module, shared by the host (toolkit loads this file by path) and every
on-device script: bundle checks, timing, memory, interpreter loading, input (de)quantisation and
normalisation, the common results schema (image decoding and resizing live in the Pi runner's
edgeshrink_run_images.py). Needs only the standard library and numpy (no torch, no TensorFlow).

Run as `python3 edgeshrink_common.py BUNDLE` to check every bundle file against its sha256."""

import os
import sys

if __name__ == "__main__":  # never import from the bundle folder: a planted hashlib.py there would run
    _here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _here]

import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

RESULTS_SCHEMA = "edgeshrink-results/1"
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".pyd")  # what Python could import from a folder
RUNTIME_FOLDERS = {"results", "engines", "__pycache__", ".venv", "venv"}


class BundleError(SystemExit):
    """A one-line, user-facing refusal (exits the device script with status 1)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- manifest and bundle checks ------------------------------------------------------------------

def _entries(manifest: dict, key: str, where) -> list:
    items = manifest.get(key)
    if not isinstance(items, list) or not items:
        raise BundleError(f"{where} lists no {key}; rebuild the bundle on the host (make deploy)")
    for item in items:
        name = item.get("file") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(item.get("sha256"), str):
            raise BundleError(f"{where} has a {key} entry without file and sha256; rebuild the bundle")
        if name != os.path.basename(name) or name in ("", ".", ".."):
            raise BundleError(f"{where} names {name!r}; bundle files must be plain names inside the bundle")
    return items


def load_manifest(bundle) -> dict:
    """The bundle's manifest, checked for shape: artifacts and device files with sha256 (else a one-line error)."""
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{path} not found; run from a bundle folder, pass --bundle, or --model FILE.tflite")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is malformed (not valid JSON: {str(exc)[:80]}); copy the bundle again") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is malformed (not a JSON object); copy the bundle again")
    for key in ("artifacts", "device_files"):
        _entries(manifest, key, path)
    for a in manifest["artifacts"]:
        if not all(isinstance(a.get(k), str) for k in ("name", "format")):
            raise BundleError(f"{path}: artifact {a['file']!r} has no name/format; rebuild the bundle")
    return manifest


def unlisted_code(bundle, manifest: dict) -> list:
    """Top-level Python code in the bundle folder that the manifest does not list (planted modules)."""
    listed = {e["file"] for e in manifest["artifacts"] + manifest["device_files"]} | {"manifest.json"}
    found = []
    for p in sorted(Path(bundle).iterdir()):
        if p.name in listed or p.name in RUNTIME_FOLDERS:
            continue
        if (p.is_dir() and ((p / "__init__.py").exists() or any(p.glob("*.py")))) or p.suffix in CODE_SUFFIXES:
            found.append(p.name)
    return found


def verify_bundle(bundle) -> list:
    """Problems found checking every listed file's sha256 and looking for unlisted code (empty = ok)."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    problems = []
    for entry in manifest["artifacts"] + manifest["device_files"]:
        path = bundle / entry["file"]
        if not path.is_file():
            problems.append(f"{entry['file']}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['file']}: sha256 mismatch")
    problems += [f"{name}: not listed in manifest.json (unlisted code is refused; delete it)"
                 for name in unlisted_code(bundle, manifest)]
    return problems


def deploy_artifact(manifest: dict, name=None) -> dict:
    """The artifact record the device runs (the profile's deploy.artifact unless `name` is given)."""
    deploy = manifest.get("deploy") if isinstance(manifest.get("deploy"), dict) else {}
    wanted = name or deploy.get("artifact")
    if not wanted:
        raise BundleError("manifest.json names no deploy artifact (deploy.artifact); pass --artifact or rebuild")
    for a in manifest["artifacts"]:
        if a["name"] == wanted:
            return a
    raise BundleError(f"artifact {wanted!r} is not in the manifest; choose one of "
                      + ", ".join(a["name"] for a in manifest["artifacts"]))


def open_bundle(bundle, artifact_name, fmt: str, check_hashes: bool = True):
    """(bundle, manifest, artifact): hashes checked, the artifact picked and its format enforced."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if check_hashes:
        problems = verify_bundle(bundle)
        if problems:
            raise BundleError("bundle hash check failed: " + "; ".join(problems))
    artifact = deploy_artifact(manifest, artifact_name)
    if artifact["format"] != fmt:
        raise BundleError(f"{artifact['file']} is {artifact['format']}; this runner takes {fmt} files")
    return bundle, manifest, artifact


def read_listed(bundle, entry: dict) -> bytes:
    """The bytes of one listed file, read once and checked against its sha256 (what runs is what was hashed)."""
    data = (Path(bundle) / entry["file"]).read_bytes()
    if sha256_bytes(data) != entry["sha256"]:
        raise BundleError(f"{entry['file']}: sha256 mismatch; copy the bundle again")
    return data


# --- timing and memory ---------------------------------------------------------------------------

def summarize_ms(ms) -> dict:
    """The common latency record from raw per-run milliseconds."""
    import numpy as np

    ms = np.asarray(ms, dtype=np.float64)
    lat = {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
           "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min())}
    return {"runs": int(ms.size), "latency_ms": lat, "fps": float(1000.0 / lat["p50"])}


def percentiles(ms) -> dict:
    return summarize_ms(ms)["latency_ms"]


def time_calls(call, warmup: int = 10, min_runs: int = 50, min_seconds: float = 2.0, max_runs: int = 100_000) -> dict:
    """Warm-up, then run until both min_runs and min_seconds pass (at most max_runs); latency in ms."""
    for _ in range(warmup):
        call()
    samples, started = [], time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - started < min_seconds):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return summarize_ms(samples)


def peak_rss_mb():
    """This process's peak resident memory in MB (VmHWM; fresh after exec, unlike ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        return None


def emulator():
    """The user-mode emulator running this process (e.g. 'qemu-aarch64-static'), else None. qemu fakes
    /proc/self/exe but not the per-thread link, which still names the real executable."""
    try:
        import threading

        real = os.path.basename(os.readlink(f"/proc/self/task/{threading.get_native_id()}/exe"))
    except (OSError, AttributeError):
        return None
    return real if real.startswith("qemu-") else None


def device_description() -> dict:
    cpu, model = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "Model":
                    model = value.strip()
    except OSError:
        pass
    try:
        model = model or Path("/proc/device-tree/model").read_text().strip("\x00\n")
    except OSError:
        pass
    return {"hostname": platform.node(), "model": model, "cpu": cpu, "arch": platform.machine(),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "emulated_by": emulator()}


def results_record(manifest: dict, artifact: dict, runtime: dict, bench, **extra) -> dict:
    """The one results schema every harness writes. `artifact["loaded_sha256"]`, when set, is the
    hash of the bytes that actually ran, and is what `sha256` records."""
    bench = bench or {}
    rec = {"schema": RESULTS_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "model": manifest.get("model"), "target": manifest.get("target"), "file": artifact["file"],
           "sha256": artifact.get("loaded_sha256") or artifact["sha256"], "format": artifact["format"],
           "precision": artifact.get("precision"), "runtime": runtime, "device": device_description(),
           "latency_ms": bench.get("latency_ms"), "fps": bench.get("fps"), "runs": bench.get("runs"),
           "memory_mb": {"peak_rss": peak_rss_mb()}}
    rec.update(extra)
    return rec


def write_json(path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# --- LiteRT interpreter --------------------------------------------------------------------------

def _interpreter_class():
    """(Interpreter class, package name): LiteRT, then tflite-runtime, then TensorFlow's."""
    for module, package in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                            ("tflite_runtime.interpreter", "tflite-runtime"), ("tensorflow.lite", "tensorflow")):
        try:
            mod = __import__(module, fromlist=["Interpreter"])
            return mod, package
        except ImportError:
            continue
    raise BundleError("neither ai-edge-litert nor tflite-runtime is installed; pip install ai-edge-litert "
                      "(or tflite-runtime with numpy<2)")


def make_interpreter(model, threads: int = 2, xnnpack: bool = True, attach_native_errors: bool = False):
    """(allocated interpreter, runtime record) for model bytes or a path. The record says what really
    ran: the package and version, and whether XNNPACK was applied (a DELEGATE node in the graph).
    With attach_native_errors, a failure's native stderr lines go on the exception (`native_stderr`)
    instead of the terminal, so a device script can report the failure in one line."""
    from importlib import metadata

    mod, package = _interpreter_class()
    Interpreter = mod.Interpreter
    kwargs = {"num_threads": threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}

    def build():
        made = Interpreter(**source, **kwargs)
        made.allocate_tensors()
        return made

    interp = _without_delegate_banner(build, attach_native_errors)
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = getattr(mod, "__version__", "unknown")
    applied = xnnpack_applied(interp)
    return interp, {"name": package, "version": version, "threads": threads, "xnnpack_applied": applied,
                    "delegate": "xnnpack" if applied else "none (built-in CPU kernels)"}


def _without_delegate_banner(build, attach_errors: bool = False):
    """build() with native stderr captured: LiteRT's 'Created ... XNNPACK delegate' INFO line is
    dropped (the results record says whether XNNPACK applied); any other native output is passed on
    (or, with attach_errors and a failing build, set on the exception as `native_stderr`)."""
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return build()
    failed = None
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            return build()
        except Exception as exc:
            failed = exc
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").splitlines()
            rest = [line for line in lines if not line.startswith("INFO: Created TensorFlow Lite XNNPACK delegate")]
            if failed is not None and attach_errors:
                failed.native_stderr = rest
            elif rest:
                print("\n".join(rest), file=sys.stderr)


def xnnpack_applied(interp):
    """True when the default XNNPACK delegate took over part of the graph, None when unknowable."""
    try:
        return any(op.get("op_name") == "DELEGATE" for op in interp._get_ops_details())
    except Exception:  # older runtimes have no _get_ops_details
        return None


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


# --- outputs ---------------------------------------------------------------------------------------

def top_k(scores, k: int):
    """Indices of the k highest scores; ties keep the lower index first (stable)."""
    import numpy as np

    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]


def softmax(x):
    import numpy as np

    e = np.exp(x - np.max(x))
    return e / e.sum()


# --- `python3 edgeshrink_common.py BUNDLE` -------------------------------------------------------

def check_bundle_main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Check every bundle file against the manifest's sha256")
    p.add_argument("bundle", nargs="?", default=str(Path(__file__).resolve().parent))
    args = p.parse_args(argv)
    try:
        problems = verify_bundle(args.bundle)
        deploy_artifact(load_manifest(args.bundle))
    except BundleError as exc:
        print(exc.code, file=sys.stderr)
        return 1
    for line in problems:
        print(f"hash check failed: {line}", file=sys.stderr)
    if not problems:
        print("bundle ok: every file matches its sha256")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(check_bundle_main())
