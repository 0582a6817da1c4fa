"""Deliver a bundle to a device over SSH, check its hashes there, run the device benchmark and
pull the results back. Key-based only (BatchMode): no passwords, nothing secret in files."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError


@dataclass(frozen=True)
class SshHost:
    user: str
    host: str
    port: int = 22

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"

    def __str__(self) -> str:
        return f"{self.login}:{self.port}"


# A user or host may not start with '-' (ssh would read it as an option) and holds no shell characters.
_HOST_SPEC = re.compile(r"([A-Za-z0-9_][A-Za-z0-9._-]{0,63})@([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9a-fA-F:]+\])"
                        r"(?::(\d{1,5}))?")


def parse_host(spec: str) -> SshHost:
    """'user@host[:port]' -> SshHost; anything else (shell characters, a leading '-', a port outside
    1..65535) is a one-line error."""
    m = _HOST_SPEC.fullmatch(spec or "")
    if not m or not 0 < int(m.group(3) or 22) < 65536:
        raise EdgeShrinkError(f"HOST={spec!r} is not user@host[:port] (letters, digits, '.', '_', '-'; no leading '-'); "
                              "e.g. HOST=pi@raspberrypi.local:22")
    return SshHost(m.group(1), m.group(2).strip("[]"), int(m.group(3) or 22))


class Ssh:
    def __init__(self, target: SshHost, key: Optional[str] = None, known_hosts: Optional[str] = None,
                 timeout: int = 10):
        self.target = target
        self.opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}", "-o", "StrictHostKeyChecking=accept-new"]
        if known_hosts:
            self.opts += ["-o", f"UserKnownHostsFile={known_hosts}"]
        if key:
            self.opts += ["-i", str(key), "-o", "IdentitiesOnly=yes"]

    def ssh_cmd(self) -> list[str]:
        return ["ssh", "-p", str(self.target.port), *self.opts]

    def run(self, command: str, what: str, timeout: float = 900) -> str:
        proc = subprocess.run([*self.ssh_cmd(), "--", self.target.login, command], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode == 255:
            raise EdgeShrinkError(f"cannot reach {self.target} over SSH ({_last(proc.stderr)}); check HOST, that sshd runs "
                                  "there and that your public key is in its ~/.ssh/authorized_keys")
        if proc.returncode != 0:
            raise EdgeShrinkError(f"{what} failed on {self.target}: {_last(proc.stdout + proc.stderr)}")
        return proc.stdout

    def push_dir(self, local: Path, remote: str) -> None:
        if shutil.which("rsync"):
            cmd = ["rsync", "-az", "--protect-args", "--delete", "--exclude", "engines/", "--exclude", "results/",
                   "-e", shlex.join(self.ssh_cmd()), "--", f"{local}/", f"{self.target.login}:{remote}/"]
        else:
            cmd = ["scp", "-q", "-r", "-P", str(self.target.port), *self.opts, "--", f"{local}/.",
                   f"{self.target.login}:{remote}/"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise EdgeShrinkError(f"copying {local.name} to {self.target} failed: {_last(proc.stderr)}")

    def pull_file(self, remote: str, local: Path) -> None:
        """Fetch with `ssh cat` (works without an SFTP subsystem, which modern scp needs)."""
        proc = subprocess.run([*self.ssh_cmd(), "--", self.target.login, f"cat -- {shlex.quote(remote)}"],
                              capture_output=True, timeout=300)
        if proc.returncode != 0:
            raise EdgeShrinkError(f"fetching {remote} from {self.target} failed: {_last(proc.stderr.decode(errors='replace'))}")
        Path(local).write_bytes(proc.stdout)


def _last(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:240] if lines else "no output"


def device_command(manifest: dict, python: str, remote_dir: str) -> str:
    """The benchmark command run on the device for this bundle's engine; every value is one quoted word."""
    engine = manifest["deploy"]["engine"]
    script = "edgeshrink_run.py --bench" if engine == "tflite" else "edgeshrink_trt.py"
    return f"cd -- {shlex.quote(remote_dir)} && {shlex.quote(python)} {script} --json results/device.json"


def _absolute_remote_dir(ssh: Ssh, configured: str, bundle_name: str) -> str:
    """The bundle's folder on the device as an absolute path (~ resolved there), checked for sanity."""
    if not configured or "\n" in configured or "\x00" in configured or "\n" in bundle_name:
        raise EdgeShrinkError(f"deploy.remote_dir {configured!r} is not a usable folder; set e.g. ~/edgeshrink in the profile")
    base = configured.rstrip("/") or "/"
    if base == "~" or base.startswith("~/"):
        home = ssh.run('printf %s "$HOME"', "reading $HOME", timeout=60).strip()
        base = home + base[1:]
    if not base.startswith("/"):
        raise EdgeShrinkError(f"deploy.remote_dir {configured!r} must be absolute or start with ~/")
    return f"{base.rstrip('/')}/{bundle_name}"


def deliver_and_benchmark(bundle: Path, host_spec: str, python: Optional[str] = None, key: Optional[str] = None,
                          known_hosts: Optional[str] = None, *, progress: bool = True,
                          measure_candidates: bool = True) -> dict:
    """Copy, hash-check on the device, benchmark there, pull results/<host>.json back. For a
    device profile (host-estimated choice) every file that passed the gate is benchmarked on the
    device too and the fastest becomes the deploy artifact (toolkit.delivery.device_select).
    On any failure the local bundle is left exactly as it was."""
    from toolkit.delivery.compare import read_manifest
    from toolkit.delivery.device_select import choose_on_device, needs_device_choice, record_device_choice

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if not isinstance(manifest.get("deploy"), dict):
        raise EdgeShrinkError(f"{bundle} has no deploy section; rebuild it with `make deploy`")
    if manifest["deploy"]["transport"] == "adb":
        raise EdgeShrinkError(f"target {manifest['target']} deploys over adb, not SSH; run android_bench.py from the bundle")
    target = parse_host(host_spec)
    ssh = Ssh(target, key or os.environ.get("EDGESHRINK_SSH_KEY"), known_hosts)
    python = python or manifest["deploy"].get("python", "python3")

    def say(msg):
        if progress:
            print(f"[deploy] {msg}", flush=True)

    say(f"connecting to {target}")
    ssh.run("true", "connection test", timeout=60)
    remote_dir = _absolute_remote_dir(ssh, str(manifest["deploy"].get("remote_dir", "~/edgeshrink")), bundle.name)
    quoted = shlex.quote(remote_dir)
    ssh.run(f"mkdir -p -- {shlex.quote(remote_dir + '/results')}", "creating the remote folder")
    say(f"copying {bundle.name} -> {target.login}:{remote_dir}")
    ssh.push_dir(bundle, remote_dir)
    say("checking sha256 of every file on the device")
    try:
        ssh.run(f"cd -- {quoted} && {shlex.quote(python)} edgeshrink_common.py .", "hash check")
    except EdgeShrinkError as exc:
        raise EdgeShrinkError(f"hash check on the device failed, nothing was run: {exc}") from None
    say("running the device benchmark")
    ssh.run(device_command(manifest, python, remote_dir), "device benchmark", timeout=1800)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = Path(tmp) / "device.json"
        ssh.pull_file(f"{remote_dir}/results/device.json", fetched)
        result = json.loads(fetched.read_text())
        if result.get("sha256") != next(a["sha256"] for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"]):
            raise EdgeShrinkError("the device ran a file whose sha256 differs from the bundle's; rerun the deploy")
        result["delivered_to"] = str(target)
        if measure_candidates and needs_device_choice(manifest):
            result["device_selection"] = choose_on_device(ssh, manifest, remote_dir=remote_dir, python=python,
                                                          deployed_result=result, where=str(target), say=say)
        out = bundle / "results" / f"{target.host}-{target.port}.json"
        out.parent.mkdir(exist_ok=True)
        tmp_out = out.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=2))
        os.replace(tmp_out, out)
    if "device_selection" in result:
        record_device_choice(bundle, manifest, result["device_selection"], push=lambda: ssh.push_dir(bundle, remote_dir))
        say(f"deploy artifact (measured on the device): {result['device_selection']['artifact']}")
    say(f"results: {out}")
    return result
