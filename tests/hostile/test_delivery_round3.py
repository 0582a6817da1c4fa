"""Hostile round 3, delivery: `deliver` run from odd folders, remote_dir values that would aim the
mirroring copy (rsync --delete) at a device's home or root, unusable --known-hosts files and changed
host keys, links and unlisted files in a bundle, and device results that are malformed or carry
terminal escape sequences. Delivery goes to a real OpenSSH server on 127.0.0.1 (tests/stages/test_device.py's
`sshd`); the device's python is a small script standing in for a device (it runs the bundle's real
hash check and writes the results file the test gives it)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import assert_refused, cli
from tests.stages import test_device

sshd = test_device.sshd  # the real OpenSSH server on 127.0.0.1 (a module-scoped fixture)

UNREACHABLE = "nobody@127.0.0.1:1"  # a refusal that needed a connection would say "cannot reach"
NAME = "tiny_mnv3-rpi4"  # <model>-<target> of the bundle below: its folder name on the device


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bundle(folder: Path, remote_dir: str) -> Path:
    """A small but complete bundle: a model file, the real device hash checker and runner, and a
    manifest listing each with its sha256 (deploy over SSH to `remote_dir`)."""
    folder.mkdir(parents=True)
    (folder / "m.tflite").write_bytes(os.urandom(4096))
    shutil.copy(REPO / "deploy" / "common" / "edgeshrink_common.py", folder)
    shutil.copy(REPO / "deploy" / "rpi" / "edgeshrink_run.py", folder)
    art = {"name": "pruned-tflite-int8", "file": "m.tflite", "format": "tflite", "precision": "int8", "stage": "pruned",
           "sha256": _sha(folder / "m.tflite"), "metrics": {"top1": 0.5}, "size_bytes": 4096}
    manifest = {"model": "tiny_mnv3", "target": "rpi4", "primary_metric": "top1", "artifacts": [art],
                "device_files": [{"file": f, "sha256": _sha(folder / f)} for f in ("edgeshrink_common.py", "edgeshrink_run.py")],
                "deploy": {"artifact": "pruned-tflite-int8", "engine": "tflite", "transport": "ssh",
                           "remote_dir": remote_dir, "python": "python3"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def device_python(tmp_path: Path, result) -> Path:
    """The device's python: the bundle's real hash check runs in this interpreter; the benchmark
    writes `result` (a JSON value, or raw text) to results/device.json, as a device would."""
    text = result if isinstance(result, str) else json.dumps(result)
    (tmp_path / "device_result.json").write_text(text)
    script = tmp_path / "device-python"
    script.write_text(f'#!/bin/sh\nif [ "$1" = edgeshrink_common.py ]; then exec {sys.executable} "$@"; fi\n'
                      f'cat {tmp_path / "device_result.json"} > results/device.json\n')
    script.chmod(0o755)
    return script


def good_result(bundle: Path) -> dict:
    return {"sha256": _sha(bundle / "m.tflite"), "latency_ms": {"p50": 1.5, "p90": 1.7, "p99": 2.0}, "fps": 666.0,
            "runtime": {"name": "ai-edge-litert"}, "device": {"model": "test device"}, "precision": "int8"}


def deliver(bundle, server, *extra, python=None, cwd=None):
    args = ["deliver", bundle, "--host", server["host"], "--ssh-key", server["key"], "--known-hosts", server["known_hosts"]]
    return cli(*args, *(["--remote-python", python] if python else []), *extra, cwd=cwd)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. every remote path comes from the manifest's bundle name and a dedicated remote_dir ----------

@pytest.mark.parametrize("arg, cwd", [("..", "results"), (".", "")], ids=["dotdot-from-results", "dot-from-bundle"])
def test_deliver_from_inside_a_bundle_lands_in_its_own_folder(henv, sshd, tmp_path, arg, cwd):
    device = tmp_path / "device"
    (device / "edgeshrink" / "other-bundle").mkdir(parents=True)
    (device / "edgeshrink" / "other-bundle" / "keep.txt").write_text("another bundle")
    (device / "notes.txt").write_text("the user's notes")
    before = _tree(device)
    bundle = make_bundle(tmp_path / "local" / "whatever-name", str(device / "edgeshrink"))
    (bundle / "results").mkdir()
    proc = deliver(arg, sshd, python=device_python(tmp_path, good_result(bundle)), cwd=bundle / cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = _tree(device)
    assert {k: v for k, v in after.items() if k in before} == before  # siblings and the folder above untouched
    assert after[f"edgeshrink/{NAME}/m.tflite"] == (bundle / "m.tflite").read_bytes()
    assert (bundle / "results" / f"127.0.0.1-{sshd['port']}.json").is_file()


REMOTE_DIRS = ["/", "//", "~", "~/", "~/..", "~/x/../..", "/home", "/tmp/../", "/opt/./x", "relative/x", "~root/x", "",
               "~/a\x1b[2Jb"]


@pytest.mark.parametrize("remote_dir", REMOTE_DIRS, ids=range(len(REMOTE_DIRS)))
def test_remote_dir_that_is_not_a_dedicated_folder_is_refused_before_connecting(henv, tmp_path, remote_dir):
    bundle = make_bundle(tmp_path / NAME, remote_dir)
    proc = cli("deliver", bundle, "--host", UNREACHABLE)
    assert_refused(proc, "remote_dir")
    assert "cannot reach" not in proc.stderr and "\x1b" not in proc.stderr


@pytest.mark.parametrize("remote_dir", ["/", "~/..", "~", "/home"])
def test_validate_refuses_such_a_remote_dir_in_a_profile(tmp_path, remote_dir):
    import yaml

    profile = yaml.safe_load((REPO / "targets" / "rpi4.yaml").read_text())
    profile["deploy"]["remote_dir"] = remote_dir
    (tmp_path / "rpi4.yaml").write_text(yaml.safe_dump(profile))
    proc = cli("validate", tmp_path / "rpi4.yaml")
    assert proc.returncode == 2 and "remote_dir" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_remote_dir_that_is_the_device_home_is_refused_before_writing(henv, sshd, tmp_path):
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # the remote shell's $HOME
    for remote_dir in (str(home), str(home) + "/"):
        bundle = make_bundle(tmp_path / remote_dir.replace("/", "_"), remote_dir)
        assert_refused(deliver(bundle, sshd), "home folder", "remote_dir")
    assert not (home / NAME).exists()


@pytest.mark.parametrize("edit", [{"model": ".."}, {"target": "../../x"}, {"model": "a/b"}, {"model": None}, {"target": 7}],
                         ids=["dotdot", "path", "slash", "missing", "number"])
def test_bundle_name_from_the_manifest_must_be_a_plain_name(henv, tmp_path, edit):
    bundle = make_bundle(tmp_path / NAME, "~/edgeshrink")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, **edit}))
    proc = cli("deliver", bundle, "--host", UNREACHABLE)
    assert_refused(proc, "manifest.json", "plain names")


def test_deliver_refuses_a_folder_that_is_not_a_bundle(henv, tmp_path):
    (tmp_path / "results").mkdir()
    assert_refused(cli("deliver", "..", "--host", UNREACHABLE, cwd=tmp_path / "results"), "manifest.json")


# ---- 3. host keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["missing-folder", "a-folder", "under-a-file"])
def test_known_hosts_must_be_a_file_ssh_can_store(henv, tmp_path, where):
    (tmp_path / "notes.txt").write_text("mine")
    known = {"missing-folder": tmp_path / "nowhere" / "known_hosts", "a-folder": tmp_path,
             "under-a-file": tmp_path / "notes.txt" / "known_hosts"}[where]
    bundle = make_bundle(tmp_path / NAME, "~/edgeshrink")
    proc = cli("deliver", bundle, "--host", UNREACHABLE, "--known-hosts", known)
    assert_refused(proc, "--known-hosts")
    assert "cannot reach" not in proc.stderr and (tmp_path / "notes.txt").read_text() == "mine"
    run = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--quiet", "--out", tmp_path / "out",
              "--host", UNREACHABLE, "--known-hosts", known)
    assert_refused(run, "--known-hosts")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_changed_host_key_is_named_with_its_fix(henv, sshd, tmp_path):
    from toolkit.delivery.remote import Ssh, parse_host

    known = tmp_path / "known_hosts"
    Ssh(parse_host(sshd["host"]), sshd["key"], str(known)).run("true", "first contact", timeout=60)
    stored = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd['port']}", "-f", str(known)], capture_output=True)
    assert stored.returncode == 0  # the device's key was stored (hashed or not)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{sshd['port']} {' '.join(other)}\n")  # as if the device's key had changed
    bundle = make_bundle(tmp_path / NAME, str(tmp_path / "device"))
    proc = cli("deliver", bundle, "--host", sshd["host"], "--ssh-key", sshd["key"], "--known-hosts", known)
    assert_refused(proc, "host key changed", "ssh-keygen -R", str(known))
    assert "authorized_keys" not in proc.stderr and not (tmp_path / "device").exists()


# ---- 4. links and unlisted files never travel ----------------------------------------------------------

def _without_rsync(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "scp"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))


PLANTS = [f"{plant}-{copier}" for plant in ("link-to-a-secret", "link-to-a-folder", "unlisted-file", "unlisted-folder")
          for copier in ("rsync", "scp")]


@pytest.mark.parametrize("case", PLANTS)
def test_links_and_unlisted_files_are_refused_naming_them(henv, sshd, tmp_path, monkeypatch, case):
    plant, _, copier = case.rpartition("-")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret 42")
    bundle = make_bundle(tmp_path / NAME, str(tmp_path / "device"))
    name = {"link-to-a-secret": "leak.txt", "link-to-a-folder": "home", "unlisted-file": "notes.txt",
            "unlisted-folder": "extra"}[plant]
    if plant == "link-to-a-secret":
        (bundle / name).symlink_to(secret)
    elif plant == "link-to-a-folder":
        (bundle / name).symlink_to(tmp_path)
    elif plant == "unlisted-file":
        (bundle / name).write_text("not in the manifest")
    else:
        (bundle / name).mkdir()
    if copier == "scp":
        _without_rsync(tmp_path, monkeypatch)
    proc = deliver(bundle, sshd, python=device_python(tmp_path, good_result(bundle)))
    assert_refused(proc, name)
    assert not (tmp_path / "device").exists() and secret.read_text() == "host secret 42"


def test_scp_fallback_copies_exactly_the_bundles_files(henv, sshd, tmp_path, monkeypatch):
    device = tmp_path / "device"
    bundle = make_bundle(tmp_path / "local", str(device))
    (bundle / "results").mkdir()
    (bundle / "results" / "old-pi.json").write_text(json.dumps(good_result(bundle)))  # stays on the host
    _without_rsync(tmp_path, monkeypatch)
    proc = deliver(bundle, sshd, python=device_python(tmp_path, good_result(bundle)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped = {k: v for k, v in _tree(device / NAME).items() if not k.startswith("results/")}
    assert shipped == {k: v for k, v in _tree(bundle).items() if not k.startswith("results/")}
    assert sorted(p.name for p in (device / NAME / "results").iterdir()) == ["device.json"]


# ---- 6. device results are checked where they are read; device text is printed without escapes --------

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\x9b1m"

BAD_RESULTS = {
    "a-list": [1, 2],
    "a-string": '"fast"',
    "not-json": "\x1b[31m{not json",
    "string-latency": {"latency_ms": {"p50": "fast"}},
    "latency-a-list": {"latency_ms": [1, 2]},
    "nan-latency": '{"latency_ms": {"p50": NaN}}',
    "bool-fps": {"fps": True},
    "device-a-string": {"device": "pi"},
    "results-of-strings": {"results": ["x"]},
    "results-an-object": {"results": {"a": 1}},
    "accuracy-a-string": {"accuracy": {"top1": "high"}},
}


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_compare_refuses_a_mistyped_device_result_naming_it(henv, tmp_path, case):
    bundle = make_bundle(tmp_path / NAME, "~/edgeshrink")
    (bundle / "results").mkdir()
    value = BAD_RESULTS[case]
    (bundle / "results" / "pi.json").write_text(value if isinstance(value, str) else json.dumps(value))
    proc = cli("compare", bundle)
    assert_refused(proc, "pi.json")
    assert "\x1b" not in proc.stderr and "\x9b" not in proc.stderr


def test_compare_prints_device_text_without_control_characters(henv, tmp_path):
    bundle = make_bundle(tmp_path / NAME, "~/edgeshrink")
    (bundle / "results").mkdir()
    result = {**good_result(bundle), "device": {"model": f"pi{ESCAPES}"}, "runtime": {"name": ESCAPES, "delegate": "\x07"},
              "precision": "\x1b[1m"}
    (bundle / "results" / "pi.json").write_text(json.dumps(result))
    proc = cli("compare", bundle)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert "pi?" in proc.stdout and "1.50" in proc.stdout
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) < 0xa0 for c in proc.stdout), repr(proc.stdout)


@pytest.mark.parametrize("case", ["a-list", "string-latency", "results-of-strings", "not-json"])
def test_deliver_refuses_a_malformed_device_result_and_stores_nothing(henv, sshd, tmp_path, case):
    bundle = make_bundle(tmp_path / NAME, str(tmp_path / "device"))
    (bundle / "results").mkdir()
    proc = deliver(bundle, sshd, python=device_python(tmp_path, BAD_RESULTS[case]))
    assert_refused(proc, "device.json")
    assert "\x1b" not in proc.stderr and not list((bundle / "results").iterdir())  # no poisoned results file
    assert cli("compare", bundle).returncode == 0  # later compares still work


def test_device_error_output_reaches_the_terminal_without_escapes(henv, sshd, tmp_path):
    bundle = make_bundle(tmp_path / NAME, str(tmp_path / "device"))
    script = device_python(tmp_path, {})
    script.write_text(script.read_text().replace("cat ", f"printf '{ESCAPES}boom\\n' >&2; exit 1; cat "))
    proc = deliver(bundle, sshd, python=script)
    assert_refused(proc, "device benchmark failed", "boom")
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
