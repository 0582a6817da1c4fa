"""Deliver a bundle to a device over SSH, check its hashes there, run the device benchmark and
pull the results back. Key-based only (BatchMode): no passwords, nothing secret in files."""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

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


RUNTIME_FOLDERS = ("results", "engines", "__pycache__", ".venv", "venv")  # made on the device; never shipped
_HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


def check_known_hosts(path: Optional[str]) -> Optional[str]:
    """--known-hosts as an absolute path ssh can store keys in (None: ssh's default). A missing
    folder, a folder or an unwritable file would make every connection a first contact, so that a
    changed device key is never noticed: refused."""
    if not path:
        return None
    p = Path(os.path.expanduser(str(path))).absolute()
    fix = "give a file in an existing, writable folder (e.g. ~/.ssh/known_hosts)"
    if any(c.isspace() or c in '"%' for c in str(p)):
        raise EdgeShrinkError(f"--known-hosts {path!r} holds spaces, quotes or '%', which ssh would split; {fix}")
    if p.is_dir() or (p.exists() and not p.is_file()):
        raise EdgeShrinkError(f"--known-hosts {path} is a folder, not a file ssh can store host keys in; {fix}")
    if not p.parent.is_dir():
        raise EdgeShrinkError(f"--known-hosts {path}: its folder {p.parent} does not exist, so no host key could be "
                              f"stored and a changed device key would go unnoticed; {fix}")
    if not os.access(p if p.exists() else p.parent, os.W_OK):
        raise EdgeShrinkError(f"--known-hosts {path} is not writable, so no host key could be stored; {fix}")
    return str(p)


class Ssh:
    def __init__(self, target: SshHost, key: Optional[str] = None, known_hosts: Optional[str] = None,
                 timeout: int = 10):
        self.target = target
        self.known_hosts = check_known_hosts(known_hosts)
        self.opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}", "-o", "StrictHostKeyChecking=accept-new"]
        if self.known_hosts:
            self.opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if key:
            self.opts += ["-i", str(key), "-o", "IdentitiesOnly=yes"]

    def ssh_cmd(self) -> list[str]:
        return ["ssh", "-p", str(self.target.port), *self.opts]

    def host_key_changed(self, stderr: str) -> Optional[EdgeShrinkError]:
        """The error for ssh's refusal of a device whose host key differs from the stored one."""
        if not any(marker in stderr for marker in _HOST_KEY_CHANGED):
            return None
        name = self.target.host if self.target.port == 22 else f"[{self.target.host}]:{self.target.port}"
        store = self.known_hosts or "~/.ssh/known_hosts"
        return EdgeShrinkError(f"host key changed: {self.target} presents a different SSH host key than the one stored "
                               f"in {store}, so nothing was sent (a reinstalled device, or someone in between); if the "
                               f"device really was reinstalled, remove the old key with `ssh-keygen -R '{name}' -f "
                               f"{store}` and deliver again")

    def _waited(self, cmd: list[str], *, what: str, timeout: float, **run_options) -> subprocess.CompletedProcess:
        """subprocess.run with a wall-clock limit: the time is the network's and the device's, not work
        this host does, so it is not counted in CPU seconds (toolkit.core.work_limit)."""
        try:
            return subprocess.run(cmd, timeout=timeout, check=False, **run_options)
        except subprocess.TimeoutExpired:
            raise EdgeShrinkError(f"{what} on {self.target} did not finish in {timeout:.0f} s; check the device is up "
                                  "and not busy, then deliver again") from None

    def run(self, command: str, what: str, timeout: float = 900) -> str:
        proc = self._waited([*self.ssh_cmd(), "--", self.target.login, command], what=what, timeout=timeout,
                            capture_output=True, text=True)
        if proc.returncode == 255:
            raise self.host_key_changed(proc.stderr) or EdgeShrinkError(
                f"cannot reach {self.target} over SSH ({_last(proc.stderr)}); check HOST, that sshd runs "
                "there and that your public key is in its ~/.ssh/authorized_keys")
        if proc.returncode != 0:
            raise EdgeShrinkError(f"{what} failed on {self.target}: {_last(proc.stdout + proc.stderr)}")
        return proc.stdout

    def push_dir(self, local: Path, remote: str, files: list[str]) -> None:
        """Mirror the bundle's checked `files` into `remote` (rsync: deleting other files there, except the
        device's runtime folders; scp: exactly these plain files, no recursion, no links followed)."""
        if shutil.which("rsync"):
            excludes = [arg for name in RUNTIME_FOLDERS for arg in ("--exclude", f"/{name}/")]
            cmd = ["rsync", "-rptz", "--protect-args", "--delete", *excludes, "-e", shlex.join(self.ssh_cmd()),
                   "--", f"{local}/", f"{self.target.login}:{remote}/"]
        else:
            cmd = ["scp", "-q", "-p", "-P", str(self.target.port), *self.opts, "--", *(str(local / f) for f in files),
                   f"{self.target.login}:{remote}/"]
        proc = self._waited(cmd, what=f"copying {local.name}", timeout=1800, capture_output=True, text=True)
        if proc.returncode != 0:
            raise self.host_key_changed(proc.stderr) or EdgeShrinkError(
                f"copying {local.name} to {self.target} failed: {_last(proc.stderr)}")

    def pull_file(self, remote: str, local: Path) -> None:
        """Fetch with `ssh cat` (works without an SFTP subsystem, which modern scp needs)."""
        proc = self._waited([*self.ssh_cmd(), "--", self.target.login, f"cat -- {shlex.quote(remote)}"],
                            what=f"fetching {remote}", timeout=300, capture_output=True)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            raise self.host_key_changed(stderr) or EdgeShrinkError(f"fetching {remote} from {self.target} failed: {_last(stderr)}")
        Path(local).write_bytes(proc.stdout)


def _last(text: str) -> str:
    """The last non-empty line of a device's output, without terminal control characters."""
    from toolkit.delivery.compare import printable

    lines = [l for l in text.strip().splitlines() if l.strip()]
    return printable(lines[-1][:240]) if lines else "no output"


def bundle_name(manifest: dict) -> str:
    """The bundle's folder name on the device, `<model>-<target>` from its manifest (never the local
    path given: `deliver ..` or `deliver .` must not aim at the remote folder's parent)."""
    from toolkit.config.cards import SAFE_NAME

    model, target = manifest.get("model"), manifest.get("target")
    if not all(isinstance(v, str) and SAFE_NAME.match(v) and ".." not in v for v in (model, target)):
        raise EdgeShrinkError(f"manifest.json names model {model!r} and target {target!r}, not plain names (letters, "
                              "digits, '.', '_', '-'); rebuild the bundle with `edgeshrink run`")
    return f"{model}-{target}"


def shipped_files(bundle: Path, manifest: dict) -> list[str]:
    """The bundle's files to copy: each one EdgeShrink wrote (fixed files, those manifest.json lists);
    a symbolic link or any other file is refused, naming it, before anything is sent."""
    from toolkit.core.atomic import written_files

    allowed, files = written_files(manifest) - set(RUNTIME_FOLDERS), []
    for p in sorted(bundle.iterdir()):
        if p.is_symlink():
            raise EdgeShrinkError(f"{p} is a symbolic link; delivery never follows links out of a bundle: replace it "
                                  "with the file itself or remove it")
        if p.name in RUNTIME_FOLDERS and p.is_dir():
            continue
        if p.name not in allowed or not p.is_file():
            raise EdgeShrinkError(f"{p} is not a file manifest.json lists or EdgeShrink wrote; move it out of the bundle "
                                  "(delivery copies only the bundle's own files) and deliver again")
        files.append(p.name)
    return files


def device_command(manifest: dict, python: str, remote_dir: str) -> str:
    """The benchmark command run on the device for this bundle's engine; every value is one quoted word."""
    engine = manifest["deploy"]["engine"]
    script = "edgeshrink_run.py --bench" if engine == "tflite" else "edgeshrink_trt.py"
    return f"cd -- {shlex.quote(remote_dir)} && {shlex.quote(python)} {script} --json results/device.json"


def _configured_remote_dir(manifest: dict) -> str:
    """The manifest's deploy.remote_dir, checked before any connection (a dedicated folder)."""
    from toolkit.config.targets import remote_dir_problem

    configured = manifest["deploy"].get("remote_dir", "~/edgeshrink")
    problem = remote_dir_problem(configured)
    if problem:
        raise EdgeShrinkError(f"deploy.remote_dir {printable_repr(configured)} {problem}; set a dedicated folder such as "
                              "~/edgeshrink in the target profile and rebuild the bundle")
    return configured


def printable_repr(value) -> str:
    from toolkit.delivery.compare import printable

    return printable(repr(value))[:120]


def _absolute_remote_dir(ssh: Ssh, configured: str, bundle_name: str) -> str:
    """`<remote_dir>/<bundle name>` on the device as an absolute path (~ resolved there); a remote_dir
    that is the device's home folder or a folder above it is refused before anything is written."""
    home = ssh.run('printf %s "$HOME"', "reading $HOME", timeout=60).strip()
    home = posixpath.normpath(home).rstrip("/") if home.startswith("/") and home.isprintable() else None
    rest = "/".join(p for p in configured.split("/")[1:] if p)
    if configured.startswith("~") and home is None:
        raise EdgeShrinkError(f"$HOME on {ssh.target} is not an absolute folder, so deploy.remote_dir {configured!r} "
                              "cannot be resolved; set an absolute remote_dir such as /opt/edgeshrink")
    base = f"{home}/{rest}" if configured.startswith("~") else f"/{rest}"
    if home is not None and (base == home or f"{home}/".startswith(f"{base}/")):
        raise EdgeShrinkError(f"deploy.remote_dir {configured!r} is the home folder of {ssh.target} or a folder above "
                              "it; set a dedicated folder such as ~/edgeshrink in the target profile")
    return f"{base}/{bundle_name}"


class _Delivery(NamedTuple):
    bundle: Path
    manifest: dict
    name: str           # the bundle's folder name on the device (from the manifest)
    remote_dir: str     # deploy.remote_dir as configured (checked)
    files: list         # the bundle files to copy (checked)
    ssh: Ssh


def _prepare(bundle: Path, host_spec: str, key: Optional[str], known_hosts: Optional[str]) -> _Delivery:
    """Every check that needs no connection: a real bundle folder, its name, remote_dir, the files to
    copy (no links, nothing unlisted), HOST and --known-hosts."""
    from toolkit.delivery.compare import read_manifest

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if not isinstance(manifest.get("deploy"), dict):
        raise EdgeShrinkError(f"{bundle} has no deploy section; rebuild it with `make deploy`")
    if manifest["deploy"].get("transport") == "adb":
        raise EdgeShrinkError(f"target {manifest.get('target')} deploys over adb, not SSH; run android_bench.py from the bundle")
    name, remote_dir = bundle_name(manifest), _configured_remote_dir(manifest)
    files = shipped_files(bundle, manifest)
    ssh = Ssh(parse_host(host_spec), key or os.environ.get("EDGESHRINK_SSH_KEY"), known_hosts)
    return _Delivery(bundle, manifest, name, remote_dir, files, ssh)


def _device_result(ssh: Ssh, manifest: dict, remote_dir: str) -> dict:
    """results/device.json from the device, checked: a results object for the bundle's deploy file."""
    from toolkit.delivery.compare import check_device_result, parse_json_object

    with tempfile.TemporaryDirectory() as tmp:
        fetched = Path(tmp) / "device.json"
        ssh.pull_file(f"{remote_dir}/results/device.json", fetched)
        where = f"results/device.json from {ssh.target}"
        result = parse_json_object(fetched.read_bytes().decode("utf-8", errors="replace"), where,
                                   "check the device's scripts and rerun the deploy")
    check_device_result(result, where, manifest.get("primary_metric", "top1"))
    if result.get("sha256") != next(a["sha256"] for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"]):
        raise EdgeShrinkError("the device ran a file whose sha256 differs from the bundle's; rerun the deploy")
    return result


def _save_result(bundle: Path, target: SshHost, result: dict) -> Path:
    out = bundle / "results" / f"{target.host}-{target.port}.json"
    out.parent.mkdir(exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, out)
    return out


def deliver_and_benchmark(bundle: Path, host_spec: str, python: Optional[str] = None, key: Optional[str] = None,
                          known_hosts: Optional[str] = None, *, progress: bool = True,
                          measure_candidates: bool = True) -> dict:
    """Copy, hash-check on the device, benchmark there, pull results/<host>.json back. For a
    device profile (host-estimated choice) every file that passed the gate is benchmarked on the
    device too and the fastest becomes the deploy artifact (toolkit.delivery.device_select).
    Everything that can be checked without the device is checked before connecting; the bundle
    goes to `<remote_dir>/<model>-<target>` (names from the manifest, never the local path).
    On any failure the local bundle is left exactly as it was."""
    from toolkit.delivery.device_select import choose_on_device, needs_device_choice, record_device_choice

    d = _prepare(bundle, host_spec, key, known_hosts)
    ssh, manifest = d.ssh, d.manifest
    python = python or manifest["deploy"].get("python", "python3")

    def say(msg):
        if progress:
            print(f"[deploy] {msg}", flush=True)

    say(f"connecting to {ssh.target}")
    ssh.run("true", "connection test", timeout=60)
    remote_dir = _absolute_remote_dir(ssh, d.remote_dir, d.name)
    ssh.run(f"mkdir -p -- {shlex.quote(remote_dir + '/results')}", "creating the remote folder")
    say(f"copying {d.name} -> {ssh.target.login}:{remote_dir}")
    ssh.push_dir(d.bundle, remote_dir, d.files)
    say("checking sha256 of every file on the device")
    try:
        ssh.run(f"cd -- {shlex.quote(remote_dir)} && {shlex.quote(python)} edgeshrink_common.py .", "hash check")
    except EdgeShrinkError as exc:
        raise EdgeShrinkError(f"hash check on the device failed, nothing was run: {exc}") from None
    say("running the device benchmark")
    ssh.run(device_command(manifest, python, remote_dir), "device benchmark", timeout=1800)
    result = {**_device_result(ssh, manifest, remote_dir), "delivered_to": str(ssh.target)}
    if measure_candidates and needs_device_choice(manifest):
        result["device_selection"] = choose_on_device(ssh, manifest, remote_dir=remote_dir, python=python,
                                                      deployed_result=result, where=str(ssh.target), say=say)
    out = _save_result(d.bundle, ssh.target, result)
    if "device_selection" in result:
        record_device_choice(d.bundle, manifest, result["device_selection"],
                             push=lambda: ssh.push_dir(d.bundle, remote_dir, shipped_files(d.bundle, manifest)))
        say(f"deploy artifact (measured on the device): {result['device_selection']['artifact']}")
    say(f"results: {out}")
    return result
