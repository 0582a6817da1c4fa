"""Runs that convert for real: a run killed with SIGTERM, two runs of one bundle at once, a re-run
over a bundle that holds device results. Slow: run with `-m slow`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import cli, leftovers

pytestmark = pytest.mark.slow

RUN = ("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--quiet", "--no-bench",
       "--finetune-epochs", "0", "--calibration-size", "8")


def _start(out: Path):
    return subprocess.Popen([sys.executable, "-m", "toolkit", *RUN, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=REPO)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _complete(bundle: Path) -> bool:
    from toolkit.models.checkpoint import sha256_file

    manifest = json.loads((bundle / "manifest.json").read_text())
    return all(sha256_file(bundle / a["file"]) == a["sha256"] for a in manifest["artifacts"])


def test_sigterm_leaves_no_partial_folder_and_no_workers(henv, tmp_path):
    out = tmp_path / "out"
    proc = _start(out)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob(".*.partial-*")):
        time.sleep(0.2)
    assert list(out.glob(".*.partial-*")), "the run never started its staged folder"
    time.sleep(4)  # workers converting
    workers = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("edgeshrink: interrupted")
    time.sleep(2)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the run"
    assert not leftovers(out) and not (out / "tiny_mnv3-tiny").exists()


def test_two_runs_of_one_bundle_at_once_end_cleanly(henv, tmp_path):
    out = tmp_path / "out"
    runs = [_start(out), _start(out)]
    results = [p.communicate(timeout=900) for p in runs]
    codes = [p.returncode for p in runs]
    assert all("Traceback" not in err for _, err in results), [e[-2000:] for _, e in results]
    assert 0 in codes and set(codes) <= {0, 2}, (codes, [e[-500:] for _, e in results])
    assert _complete(out / "tiny_mnv3-tiny")
    assert not leftovers(out) and not leftovers(Path(henv["EDGESHRINK_CACHE_DIR"]))


def test_rerun_through_the_cli_keeps_device_results(henv, tmp_path):
    out = tmp_path / "out"
    assert cli(*RUN, "--out", out, timeout=900).returncode == 0
    bundle = out / "tiny_mnv3-tiny"
    (bundle / "results").mkdir()
    (bundle / "results" / "pi.json").write_text('{"latency_ms": {"p50": 3.0}}')
    proc = cli(*RUN, "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (bundle / "results" / "pi.json").read_text() == '{"latency_ms": {"p50": 3.0}}'
    assert _complete(bundle) and not leftovers(out)
