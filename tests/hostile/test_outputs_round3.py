"""Hostile round 3, outputs: a re-run over a bundle holding the user's files next to device
engines, a refused --plan, a quoted `~` in --out, the job folder of a SIGKILLed run, and values
with shell syntax given to `make zoo`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import assert_refused, cli, leftovers

RUN = ("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--quiet", "--no-bench",
       "--finetune-epochs", "0")


def _old_bundle(final: Path) -> None:
    """A finished bundle that a device run and the user added to."""
    (final / "engines").mkdir(parents=True)
    (final / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "m.tflite", "name": "x"}],
                                                     "device_files": [{"file": "edgeshrink_common.py", "sha256": "0"}]}))
    (final / "m.tflite").write_bytes(b"old model")
    (final / "edgeshrink_common.py").write_text("# old")
    (final / "engines" / "my.engine").write_bytes(b"a TensorRT engine built for an hour")


# ---- 2. only what EdgeShrink wrote is replaceable ------------------------------------------------------

@pytest.mark.parametrize("name", ["engines_notes.txt", "engines.bak"])
def test_rerun_refuses_a_bundle_holding_a_user_file_named_like_a_tool_folder(henv, tmp_path, name):
    final = tmp_path / "out" / "tiny_mnv3-tiny"
    _old_bundle(final)
    (final / name).write_text("the user's notes")
    proc = cli(*RUN, "--out", tmp_path / "out")
    assert_refused(proc, name, "--out")
    assert (final / name).read_text() == "the user's notes"
    assert (final / "engines" / "my.engine").read_bytes() == b"a TensorRT engine built for an hour"
    assert not leftovers(tmp_path / "out")


def test_rerun_carries_the_engines_folder_over(tmp_path):
    from toolkit.core.atomic import staged_folder

    final = tmp_path / "m-t"
    _old_bundle(final)
    with staged_folder(final) as work:
        (work / "manifest.json").write_text(json.dumps({"artifacts": []}))
    assert (final / "engines" / "my.engine").read_bytes() == b"a TensorRT engine built for an hour"
    assert not (final / "m.tflite").exists() and not leftovers(tmp_path)


def test_a_manifest_entry_cannot_make_a_path_outside_the_bundle_replaceable(tmp_path):
    from toolkit.core.atomic import foreign_files

    final = tmp_path / "m-t"
    _old_bundle(final)
    (final / "thesis.docx").write_text("mine")
    (final / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "../m-t/thesis.docx", "name": "x"},
                                                                   {"file": "m.tflite", "name": "y"}]}))
    assert foreign_files(final) == ["edgeshrink_common.py", "thesis.docx"]


# ---- 7. refused runs leave no folders; ~ in --out; job folders of killed runs ---------------------------

def test_a_refused_plan_leaves_no_out_folder(henv, tmp_path):
    import toolkit

    weights = tmp_path / "weights.pt"
    shutil.copy(f"{henv['EDGESHRINK_MODELS_DIR']}/tiny_mnv3.pt", weights)
    plan = toolkit.plan("tiny_mnv3", target="tiny", checkpoint=str(weights), synthetic_data=True, bench=False,
                        out=str(tmp_path / "planned")).to_json()
    plan["card"]["never_prune"] = ["no.such.layer"]  # refused once the run has begun
    (tmp_path / "config.json").write_text(json.dumps(plan))
    proc = cli("run", "--plan", tmp_path / "config.json", "--out", tmp_path / "new" / "deeper", "--quiet")
    assert_refused(proc, "never_prune")
    assert not (tmp_path / "new").exists() and not (tmp_path / "planned").exists()


def test_a_refused_run_keeps_an_existing_out_folder_and_its_files(tmp_path):
    from toolkit.core.atomic import staged_folder
    from toolkit.core.errors import EdgeShrinkError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("mine")
    with pytest.raises(EdgeShrinkError), staged_folder(tmp_path / "out" / "a" / "b" / "m-t"):
        raise EdgeShrinkError("refused")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mine.txt"]


def test_a_quoted_tilde_in_out_means_the_home_folder(henv, tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    proc = cli("eval-pack", "--model", "tiny_mnv3", "--synthetic-data", "--out", "~/pack.npz", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (home / "pack.npz").is_file() and not list(work.iterdir())
    assert_refused(cli("eval-pack", "--model", "tiny_mnv3", "--out", "~no_such_user_zz/p.npz", cwd=work), "--out", "~")
    assert_refused(cli(*RUN, "--out", "~no_such_user_zz/dist", cwd=work), "--out")
    assert not list(work.iterdir())


KILLED_JOB = """
import os, signal, sys
import numpy as np
from toolkit.convert.background import BackgroundConversion
job = BackgroundConversion(sys.argv[1], sys.argv[2], calib01=np.zeros((2, 3, 8, 8), np.float32), mean=(0, 0, 0),
                           std=(1, 1, 1), int8=True, io_dtype="int8", cache=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_job_folder_of_a_killed_run_is_removed_by_the_next_one(tmp_path, monkeypatch):
    import tempfile

    from toolkit.convert.background import BackgroundConversion

    jobs = tmp_path / "tmp"
    jobs.mkdir()
    env = {**os.environ, "TMPDIR": str(jobs), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_JOB, str(tmp_path / "m.onnx"), str(tmp_path / "o")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = list(jobs.glob("edgeshrink-job-*"))
    assert len(left) == 1 and (left[0] / "calib.npy").is_file()  # what SIGKILL leaves: nobody could clean up
    alive = jobs / f"edgeshrink-job-{os.getpid()}-running"  # a live run's job folder is kept
    alive.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(jobs))
    job = BackgroundConversion(tmp_path / "m.onnx", tmp_path / "o", calib01=None, mean=(0, 0, 0), std=(1, 1, 1),
                               int8=False, io_dtype="int8", cache=False)
    job.kill()
    assert sorted(jobs.iterdir()) == [alive]


# ---- 5. make zoo passes its values through the environment -------------------------------------------

# ($$ is make's escape for $: the shell would see "$(touch ...)" if the value reached its command line)
@pytest.mark.parametrize("var, value", [("ZOO_MODELS", "x;touch {m}"), ("ZOO_MODELS", "resnet18 $$(touch {m})"),
                                        ("ZOO_MODELS", "resnet18`touch {m}`"), ("ZOO_SIZE", "64;touch {m}")])
def test_make_zoo_runs_nothing_a_value_holds(tmp_path, var, value):
    marker = Path(f"/tmp/pwned_{os.getpid()}_{tmp_path.name}")
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    zoo_json = REPO / "dist" / "zoo" / "zoo.json"
    before = zoo_json.stat().st_mtime_ns if zoo_json.exists() else None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    extra = [] if var == "ZOO_MODELS" else ["ZOO_MODELS=resnet18"]
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "-o", str(stamp), "zoo", f"VENV={venv}",
                           f"{var}={value.format(m=marker)}", *extra], capture_output=True, text=True, env=env, timeout=300)
    try:
        assert proc.returncode != 0 and not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgeshrink: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert ("unknown torchvision classifier" if var == "ZOO_MODELS" else "--size") in errors[0]
    assert (zoo_json.stat().st_mtime_ns if zoo_json.exists() else None) == before
