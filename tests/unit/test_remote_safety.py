"""Nothing a user or a manifest supplies reaches a shell unquoted: HOST is parsed strictly, every
remote value is one quoted word, and `make deploy HOST=...` passes HOST through the environment.
Each case checks that a marker file an injection would create does not appear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.core.errors import EdgeShrinkError

REPO = Path(__file__).resolve().parents[2]

INJECTIONS = ["x;touch {m}@h", "pi@h;touch {m}", "pi@h:22;touch {m}", "pi@$(touch {m})", "`touch {m}`@h",
              "-oProxyCommand=touch {m}@h", "pi@-oProxyCommand=touch {m}", "pi@h:22 -oProxyCommand=x",
              "pi@h\ntouch {m}", "pi@h:0", "pi@h:70000", "pi@@h", "pi@h:-1"]


@pytest.mark.parametrize("spec", INJECTIONS)
def test_host_specs_that_could_inject_are_refused(spec, tmp_path):
    from toolkit.delivery.remote import parse_host

    with pytest.raises(EdgeShrinkError, match=r"is not user@host\[:port\]") as err:
        parse_host(spec.format(m=tmp_path / "m"))
    assert "\n" not in str(err.value).replace("\\n", "")


@pytest.mark.parametrize("spec, expected", [("pi@raspberrypi.local", ("pi", "raspberrypi.local", 22)),
                                            ("ubuntu_1@10.0.0.7:2222", ("ubuntu_1", "10.0.0.7", 2222)),
                                            ("root@[::1]:22", ("root", "::1", 22))])
def test_good_host_specs(spec, expected):
    from toolkit.delivery.remote import parse_host

    h = parse_host(spec)
    assert (h.user, h.host, h.port) == expected


def test_remote_command_values_are_single_words(tmp_path):
    """The device command runs in a real shell with hostile python/remote_dir values: nothing extra runs."""
    from toolkit.delivery.remote import device_command

    folder = tmp_path / "dir $(touch PWNED); `touch PWNED` 'q\""
    folder.mkdir()
    (folder / "edgeshrink_run.py").write_text("import sys; print('ran', sys.argv[1:])\n")
    cmd = device_command({"deploy": {"engine": "tflite"}}, sys.executable, str(folder))
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "ran ['--bench', '--json', 'results/device.json']" in proc.stdout
    bad = device_command({"deploy": {"engine": "tflite"}}, "python3; touch PWNED", str(folder))
    proc = subprocess.run(["sh", "-c", bad], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and not list(tmp_path.rglob("PWNED"))


def test_ssh_destination_follows_a_double_dash():
    from toolkit.delivery.remote import Ssh, parse_host

    ssh = Ssh(parse_host("pi@127.0.0.1:1"), timeout=1)
    with pytest.raises(EdgeShrinkError, match="cannot reach"):
        ssh.run("true", "probe", timeout=30)
    cmd = ssh.ssh_cmd()
    assert "--" not in cmd  # the options stay options; run()/pull_file() add "--" before the login
    import inspect

    from toolkit.delivery import remote

    src = inspect.getsource(remote.Ssh)
    assert src.count('"--", self.target.login') == 2 and '"--", f"{local}/' in src


@pytest.mark.parametrize("host", ["x;touch {m}", "$(touch {m})@h", "a@b' ; touch '{m}", "`touch {m}`"])
def test_make_deploy_passes_host_through_the_environment(host, tmp_path):
    """`make deploy HOST=...` with shell syntax in HOST: the CLI refuses it in one line, nothing runs."""
    marker = tmp_path / "PWNED"
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    if not stamp.exists():
        pytest.fail(f"{stamp} missing: run the tests with the project's venv (make test)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "-o", str(stamp), "deploy", f"VENV={venv}",
                           f"HOST={host.format(m=marker)}", "TARGET=host"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and not marker.exists()
    errors = [l for l in proc.stderr.splitlines() if l.startswith("edgeshrink: error:")]
    assert len(errors) == 1 and "is not user@host[:port]" in errors[0], proc.stderr


def test_prereq_check_names_the_one_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to("/bin/sh")
    proc = subprocess.run(["/bin/sh", str(REPO / "tests" / "prereqs.sh")], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})
    if proc.returncode == 0:
        return  # everything is installed under /usr/sbin or /usr/bin here
    line = proc.stderr.strip()
    assert "\n" not in line and "sudo apt-get install -y" in line
