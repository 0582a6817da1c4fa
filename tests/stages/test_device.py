"""Bundles for every profile; the device runtimes run for real on this machine: the Pi script in a
venv with only numpy + ai-edge-litert, the Jetson script's onnxruntime fallback, and SSH delivery
to a real OpenSSH server on 127.0.0.1 that the test starts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.core.errors import EdgeShrinkError


def test_every_profile_yields_a_self_contained_bundle(profile_bundles):
    from toolkit.models.checkpoint import sha256_file

    assert set(profile_bundles) >= {"host", "rpi4", "rpi5", "android", "jetson-orin-nano", "jetson-nano"}
    for name, bundle in profile_bundles.items():
        m = json.loads((bundle / "manifest.json").read_text())
        files = {p.name for p in bundle.iterdir()}
        assert {"manifest.json", "README.md", "requirements-device.txt", "edgeshrink_common.py"} <= files, name
        deployed = next(a for a in m["artifacts"] if a["name"] == m["deploy"]["artifact"])
        assert (bundle / deployed["file"]).is_file()
        for f in m["device_files"] + m["artifacts"]:
            assert sha256_file(bundle / f["file"]) == f["sha256"], (name, f["file"])
        assert m["input"]["mean"] and m["labels"] and m["versions"]["onnxruntime"]
        readme = (bundle / "README.md").read_text()
        engine = m["deploy"]["engine"]
        if engine == "tflite":
            assert deployed["format"] == "tflite"
            assert ("edgeshrink_run.py" in files) == (m["deploy"]["transport"] != "adb") or "android_bench.py" in files
            if "edgeshrink_run.py" in files:  # the runner's modules come with it, each hashed
                runner = {"edgeshrink_run_model.py", "edgeshrink_run_inputs.py", "edgeshrink_run_eval.py",
                          "edgeshrink_run_bench.py"}
                assert runner <= files and runner <= {f["file"] for f in m["device_files"]}, name
        else:
            assert "edgeshrink_trt.py" in files and deployed["format"] == "onnx" and "edgeshrink_trt.py" in readme
    android = json.loads((profile_bundles["android"] / "manifest.json").read_text())
    assert android["deploy"]["delegate_variants"] == ["gpu", "nnapi"]
    q = next(profile_bundles["android"].glob("*_pruned_int8.tflite"))
    from toolkit.runtime.tflite_check import io_dtypes

    assert io_dtypes(q) == ("uint8", "uint8")  # the android profile asks for uint8 I/O


def test_pi_runtime_in_minimal_venv_reproduces_manifest_accuracy(profile_bundles, device_python, use_workspace, tmp_path):
    from toolkit.pipeline.device_files import write_eval_pack
    from toolkit.config.cards import load_card
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    bundle = profile_bundles["rpi4"]
    out = subprocess.run([str(device_python), "-c", "import torch"], capture_output=True)
    assert out.returncode != 0  # the device venv really has no torch
    card = load_card("tiny_mnv3")
    pack = write_eval_pack(load_task(card, card_input_spec(card), DataRef(None, True), False), tmp_path / "heldout.npz")
    result = tmp_path / "r.json"
    proc = subprocess.run([str(device_python), str(bundle / "edgeshrink_run.py"), "--eval-pack", str(pack), "--bench",
                           "--runs", "5", "--seconds", "0.1", "--warmup", "1", "--json", str(result)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(result.read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    expected = next(a for a in manifest["artifacts"] if a["name"] == "pruned-tflite-int8")["metrics"]["top1"]
    assert abs(r["accuracy"]["top1"] - expected) <= 0.005
    assert r["schema"] == "edgeshrink-results/1" and r["runtime"]["name"] == "ai-edge-litert"
    deployed = next(a for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"])
    assert r["latency_ms"]["p50"] > 0 and r["sha256"] == deployed["sha256"]


def test_pi_runtime_refuses_a_tampered_bundle(profile_bundles, device_python, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(profile_bundles["rpi5"], bundle)
    model = next(bundle.glob("*_pruned_int8.tflite"))
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    proc = subprocess.run([str(device_python), str(bundle / "edgeshrink_run.py"), "--bench"], capture_output=True, text=True)
    assert proc.returncode != 0 and "sha256 mismatch" in proc.stderr


def test_jetson_runtime_falls_back_to_onnxruntime(profile_bundles, tmp_path):
    bundle = profile_bundles["jetson-orin-nano"]
    out = tmp_path / "jetson.json"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no trtexec here
    proc = subprocess.run([sys.executable, str(bundle / "edgeshrink_trt.py"), "--runs", "5", "--seconds", "0.2",
                           "--warmup", "1", "--json", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "falling back to onnxruntime" in proc.stdout
    r = json.loads(out.read_text())
    assert r["runtime"]["name"] == "onnxruntime" and "CPUExecutionProvider" in r["runtime"]["providers"]
    assert r["precision"] == "int8" and r["latency_ms"]["p50"] > 0


# --- SSH delivery against a real OpenSSH server on 127.0.0.1 ---------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.fail("OpenSSH server not installed: apt-get install openssh-server (.ci/run does this)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "log", "w"))
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    import getpass

    yield {"host": f"{getpass.getuser()}@127.0.0.1:{port}", "key": str(d / "client_key"),
           "known_hosts": str(d / "known_hosts"), "port": port}
    proc.terminate()
    proc.wait(timeout=10)


def _hashes(folder: Path) -> dict:
    from toolkit.models.checkpoint import sha256_file

    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def test_ssh_deploy_runs_on_the_device_and_pulls_results(profile_bundles, device_python, sshd, tmp_path, monkeypatch):
    from toolkit.delivery.remote import deliver_and_benchmark

    bundle = tmp_path / "tiny_mnv3-rpi4"
    shutil.copytree(profile_bundles["rpi4"], bundle)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the "device" home: ~/edgeshrink lands here
    before = _hashes(bundle)
    result = deliver_and_benchmark(bundle, sshd["host"], python=str(device_python), key=sshd["key"],
                                   known_hosts=sshd["known_hosts"], progress=False)
    pulled = bundle / "results" / f"127.0.0.1-{sshd['port']}.json"
    assert pulled.is_file() and json.loads(pulled.read_text())["latency_ms"]["p50"] > 0
    m = json.loads((bundle / "manifest.json").read_text())
    assert result["sha256"] == next(a["sha256"] for a in m["artifacts"] if a["name"] == m["deploy"]["host_estimate"]["artifact"])
    assert result["runtime"]["name"] == "ai-edge-litert" and result["delivered_to"] == sshd["host"]
    # rpi4 is a device profile: its host-estimated choice is replaced by one measured on the device
    chosen = m["deploy"]["selection"]
    assert chosen["measured_on"] == f"device {sshd['host']}" and m["deploy"]["host_estimate"]["measured_on"] != "host"
    passing = [r for r in chosen["candidates"] if r["passes"]]
    assert len(passing) >= 2 and all(r["p50_ms"] > 0 for r in passing)  # host figures: none (built with --no-bench)
    assert chosen["artifact"] == min(passing, key=lambda r: r["p50_ms"])["artifact"] == m["deploy"]["artifact"]
    assert json.loads(pulled.read_text())["device_selection"]["artifact"] == chosen["artifact"]
    assert "measured on the device" in (bundle / "report.md").read_text()
    after = _hashes(bundle)
    assert {k: v for k, v in after.items() if k not in ("manifest.json", "report.md")} == \
        {k: v for k, v in before.items() if k not in ("manifest.json", "report.md")}  # only results/ was added
    from toolkit.delivery.compare import collect_rows, format_rows

    assert "ai-edge-litert" in format_rows(collect_rows([bundle]))


def test_ssh_deploy_failed_hash_check_leaves_bundle_intact(profile_bundles, device_python, sshd, tmp_path):
    from toolkit.delivery.remote import deliver_and_benchmark

    bundle = tmp_path / "tampered-rpi4"
    shutil.copytree(profile_bundles["rpi4"], bundle)
    model = next(bundle.glob("*_pruned_int8.tflite"))
    model.write_bytes(model.read_bytes() + b"\x00")
    before = _hashes(bundle)
    with pytest.raises(EdgeShrinkError, match="hash check on the device failed"):
        deliver_and_benchmark(bundle, sshd["host"], python=str(device_python), key=sshd["key"],
                              known_hosts=sshd["known_hosts"], progress=False)
    assert _hashes(bundle) == before and not (bundle / "results").exists()


def test_ssh_deploy_quotes_every_remote_value(profile_bundles, device_python, sshd, tmp_path, monkeypatch):
    """A bundle name, remote_dir and python path full of shell syntax reach the device as plain words."""
    from toolkit.delivery.remote import deliver_and_benchmark

    import pwd

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    remote_home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where sshd starts the remote shell
    bundle = tmp_path / "b $(touch PWNED1);`touch PWNED2`'"
    shutil.copytree(profile_bundles["rpi4"], bundle)
    _rewrite_manifest(bundle, lambda m: m["deploy"].update(remote_dir=str(tmp_path / "es dir;touch PWNED3")))
    py = tmp_path / "py thon;touch PWNED4"
    py.write_text(f"#!/bin/sh\nexec {device_python} \"$@\"\n")
    py.chmod(0o755)
    result = deliver_and_benchmark(bundle, sshd["host"], python=str(py), key=sshd["key"],
                                   known_hosts=sshd["known_hosts"], progress=False)
    assert result["latency_ms"]["p50"] > 0
    # the device folder is named from the manifest (<model>-<target>), never from the local path
    assert (tmp_path / "es dir;touch PWNED3" / "tiny_mnv3-rpi4" / "results" / "device.json").is_file()
    assert not [p for p in tmp_path.rglob("PWNED*") if p.name.startswith("PWNED")]
    assert not list(remote_home.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_ssh_unreachable_host_is_a_clear_error(profile_bundles, sshd, tmp_path):
    from toolkit.delivery.remote import deliver_and_benchmark

    with pytest.raises(EdgeShrinkError, match="cannot reach .* over SSH"):
        deliver_and_benchmark(profile_bundles["rpi4"], f"nobody@127.0.0.1:{_free_port()}", key=sshd["key"],
                              known_hosts=sshd["known_hosts"], progress=False)


# --- device-side refusals: nothing from the bundle folder runs before it is checked ----------------

def _copy(profile_bundles, tmp_path, name="rpi4") -> Path:
    bundle = tmp_path / "b"
    shutil.copytree(profile_bundles[name], bundle)
    return bundle


def _one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "bundle ok" not in proc.stdout and "Traceback" not in proc.stderr
    return lines[0]


PLANTS = {  # file planted in the bundle -> what would run if Python imported from the bundle folder
    "numpy/__init__.py": "numpy package shadowing the real one",
    "argparse.py": "stdlib module shadowing",
    "hashlib.py": "stdlib module used by the hash check itself",
    "sitecustomize.py": "startup hook",
}


@pytest.mark.parametrize("planted", sorted(PLANTS))
@pytest.mark.parametrize("script", ["edgeshrink_run.py", "edgeshrink_common.py"])
def test_planted_code_in_the_bundle_never_runs(planted, script, profile_bundles, device_python, tmp_path):
    bundle = _copy(profile_bundles, tmp_path)
    marker = tmp_path / "PWNED"
    (bundle / planted).parent.mkdir(exist_ok=True)
    (bundle / planted).write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('planted')\n")
    args = ["--bench", "--runs", "1", "--seconds", "0"] if script == "edgeshrink_run.py" else ["."]
    proc = subprocess.run([str(device_python), str(bundle / script), *args], capture_output=True, text=True, cwd=bundle)
    assert not marker.exists(), PLANTS[planted]
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "not listed in manifest.json" in line and planted.split("/")[0] in line


HELPERS = ["edgeshrink_common.py", "edgeshrink_detect.py", "edgeshrink_run_model.py", "edgeshrink_run_images.py",
           "edgeshrink_run_inputs.py", "edgeshrink_run_eval.py", "edgeshrink_run_segment.py", "edgeshrink_run_detect.py",
           "edgeshrink_run_bench.py"]


@pytest.mark.parametrize("helper", HELPERS)
def test_a_tampered_helper_module_is_refused_before_it_runs(helper, profile_bundles, device_python, tmp_path):
    bundle = _copy(profile_bundles, tmp_path)
    marker = tmp_path / "PWNED"
    with open(bundle / helper, "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    proc = subprocess.run([str(device_python), str(bundle / "edgeshrink_run.py"), "--bench"], capture_output=True, text=True)
    assert f"{helper}: sha256 mismatch" in _one_line_error(proc) and not marker.exists()


@pytest.mark.parametrize("helper", HELPERS[1:])
def test_a_missing_runner_module_is_a_one_line_error(helper, profile_bundles, device_python, tmp_path):
    bundle = _copy(profile_bundles, tmp_path)
    (bundle / helper).unlink()
    proc = subprocess.run([str(device_python), str(bundle / "edgeshrink_run.py"), "--bench"], capture_output=True, text=True)
    assert f"{helper} is not beside this script" in _one_line_error(proc)


def _rewrite_manifest(bundle: Path, edit) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def _drop_deploy_artifact(m):
    m["artifacts"] = [a for a in m["artifacts"] if a["name"] != m["deploy"]["artifact"]]


MANIFEST_CASES = {
    "empty_object": (lambda b: (b / "manifest.json").write_text("{}"), "lists no"),
    "truncated": (lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text()[:200]), "malformed"),
    "not_json": (lambda b: (b / "manifest.json").write_bytes(b"\x00\xff garbage"), "malformed"),
    "a_list": (lambda b: (b / "manifest.json").write_text("[]"), "malformed"),
    "no_artifacts": (lambda b: _rewrite_manifest(b, lambda m: m.update(artifacts=[])), "lists no artifacts"),
    "no_deploy_artifact": (lambda b: _rewrite_manifest(b, _drop_deploy_artifact), "is not in the manifest"),
    "no_deploy_section": (lambda b: _rewrite_manifest(b, lambda m: m.pop("deploy")), "names no deploy artifact"),
    "path_outside_bundle": (lambda b: _rewrite_manifest(b, lambda m: m["artifacts"][0].update(file="../../etc/passwd")),
                            "must be plain names inside the bundle"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
@pytest.mark.parametrize("script", ["edgeshrink_run.py", "edgeshrink_common.py"])
def test_bad_manifests_are_one_line_errors(case, script, profile_bundles, device_python, tmp_path):
    bundle = _copy(profile_bundles, tmp_path)
    damage, expected = MANIFEST_CASES[case]
    damage(bundle)
    args = ["--bench", "--runs", "1", "--seconds", "0"] if script == "edgeshrink_run.py" else ["."]
    proc = subprocess.run([str(device_python), str(bundle / script), *args], capture_output=True, text=True, cwd=bundle)
    line = _one_line_error(proc)
    assert expected in line or (expected == "lists no" and "device_files" in line), line


def test_an_artifact_not_in_the_manifest_is_refused(profile_bundles, device_python, tmp_path):
    bundle = _copy(profile_bundles, tmp_path)
    proc = subprocess.run([str(device_python), str(bundle / "edgeshrink_run.py"), "--artifact", "planted.tflite"],
                          capture_output=True, text=True)
    assert "artifact 'planted.tflite' is not in the manifest" in _one_line_error(proc)
    (bundle / "extra.tflite").write_bytes(next(bundle.glob("*_pruned_int8.tflite")).read_bytes())
    proc = subprocess.run([str(device_python), str(bundle / "edgeshrink_common.py"), "."], capture_output=True,
                          text=True, cwd=bundle)
    assert proc.returncode == 0  # a data file beside the bundle is not code; the runner only loads listed files
