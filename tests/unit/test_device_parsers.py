"""Device harness code that needs hardware we do not have (Jetson GPU, Android phone): the
command lines and output parsers, tested against the tools' documented output formats."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from toolkit.core.errors import EdgeShrinkError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def load_script(rel: str):
    sys.path.insert(0, str(REPO / "deploy" / "common"))
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trtexec_summary_parser():
    trt = load_script("deploy/jetson/edgeshrink_trt.py")
    r = trt.parse_trtexec_summary((FIXTURES / "trtexec_trt86.log").read_text())
    assert r["throughput_qps"] == pytest.approx(835.47)
    assert r["latency_ms"]["p50"] == pytest.approx(1.18506)
    assert r["latency_ms"]["p90"] == pytest.approx(1.20312) and r["latency_ms"]["p99"] == pytest.approx(1.36914)
    assert r["gpu_compute_ms"]["mean"] == pytest.approx(1.12634)
    assert r["host_walltime_s"] == pytest.approx(5.00312) and r["fps"] == pytest.approx(835.47)
    with pytest.raises(ValueError, match="Performance summary"):
        trt.parse_trtexec_summary("[I] Starting inference\n")


def test_trtexec_command_lines(tmp_path):
    trt = load_script("deploy/jetson/edgeshrink_trt.py")
    build = trt.trtexec_command("trtexec", Path("m.onnx"), Path("m.engine"), "int8", fp16=True, build=True)
    assert build[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--int8" in build and "--fp16" in build and not any("calib" in a for a in build)
    run = trt.trtexec_command("trtexec", Path("m.onnx"), Path("m.engine"), "fp32", fp16=False, build=False)
    assert "--loadEngine=m.engine" in run and "--int8" not in run and "--fp16" not in run
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model-a")
    a = trt.engine_path(tmp_path, onnx, "8.6.1", "int8", True)
    b = trt.engine_path(tmp_path, onnx, "10.3.0", "int8", True)
    onnx.write_bytes(b"model-b")
    c = trt.engine_path(tmp_path, onnx, "8.6.1", "int8", True)
    assert len({a, b, c}) == 3  # the cache key follows the ONNX bytes and the TensorRT version


def test_benchmark_model_parser_new_format():
    android = load_script("deploy/android/android_bench.py")
    r = android.parse_benchmark_output((FIXTURES / "benchmark_model_new.log").read_text())
    assert r["init_ms"] == pytest.approx(21.508) and r["first_inference_ms"] == pytest.approx(3.391)
    assert r["warmup_avg_ms"] == pytest.approx(2.35642) and r["inference_avg_ms"] == pytest.approx(2.29908)
    assert r["runs"] == 2171  # the steady-state stat line, not the warm-up one
    assert r["latency_ms"]["p50"] == pytest.approx(2.254) and r["latency_ms"]["p95"] == pytest.approx(2.561)
    assert r["memory_mb"] == {"init_delta": pytest.approx(4.46094), "overall_delta": pytest.approx(7.15234),
                              "peak": pytest.approx(12.8945)}
    assert r["model_size_mb"] == pytest.approx(0.782)


def test_benchmark_app_logcat_parser_old_format():
    android = load_script("deploy/android/android_bench.py")
    r = android.parse_benchmark_output((FIXTURES / "benchmark_app_logcat.log").read_text())
    assert r["runs"] == 184 and r["latency_ms"]["mean"] == pytest.approx(27.0011)
    assert r["latency_ms"]["p50_is_mean"] is True  # no percentiles in older tools: say so
    assert r["init_ms"] == pytest.approx(458.883) and r["memory_mb"]["overall_delta"] == 33.0
    with pytest.raises(ValueError, match="Inference timings"):
        android.parse_benchmark_output("INFO: STARTING!\n")


def test_benchmark_flags_per_delegate():
    android = load_script("deploy/android/android_bench.py")
    gpu = android.benchmark_args("/data/local/tmp/m.tflite", "gpu", 4, 20, 100, min_secs=5.0)
    assert gpu == ["--graph=/data/local/tmp/m.tflite", "--num_threads=4", "--warmup_runs=20", "--num_runs=100",
                   "--min_secs=5", "--use_gpu=true"]
    assert android.benchmark_args("m", "nnapi", 2, 1, 1, min_secs=1)[-1] == "--use_nnapi=true"
    assert android.benchmark_args("m", "xnnpack", 2, 1, 1, min_secs=1)[-1] == "--use_xnnpack=true"


def test_android_without_adb_is_a_clear_error(monkeypatch):
    android = load_script("deploy/android/android_bench.py")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit, match="adb not found"):
        android.Adb(None, None)


@pytest.mark.parametrize("spec", ["raspberrypi", "pi@", "@host", "pi@host:99999999", "pi@host:abc", ""])
def test_bad_host_specs(spec):
    from toolkit.delivery.remote import parse_host

    with pytest.raises(EdgeShrinkError, match="user@host"):
        parse_host(spec)


def test_host_spec_parsing():
    from toolkit.delivery.remote import parse_host

    h = parse_host("pi@192.168.1.20:2222")
    assert (h.user, h.host, h.port) == ("pi", "192.168.1.20", 2222)
    assert parse_host("jetson@orin.local").port == 22


def test_every_device_script_loads_its_helpers_the_same_checked_way():
    """The bootstrap that strips the bundle folder from sys.path and hash-checks edgeshrink_common
    before running it is one text, repeated in each script (it cannot be imported: that is the point)."""
    def bootstrap(rel):
        text = (REPO / rel).read_text()
        return text[text.index("import os\nimport sys\n"):text.index("C = _load_common()")]

    scripts = ["deploy/rpi/edgeshrink_run.py", "deploy/jetson/edgeshrink_trt.py", "deploy/android/android_bench.py"]
    first = bootstrap(scripts[0])
    assert "sys.path[:] = [p for p in sys.path if" in first and "hashlib.sha256(code)" in first
    assert all(bootstrap(s) == first for s in scripts[1:])
