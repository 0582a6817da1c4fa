"""The wheel is a complete EdgeShrink: `pip install .` (not editable) carries the profiles, the cards
with their published checkpoints and the device scripts, and `edgeshrink` works from a folder
outside the repository, writing to ./dist there and caching in the user cache folder.

The wheel is built from a copy of the sources (the build never writes into the repository) and
installed into a fresh venv that borrows this venv's dependencies through a .pth line (a path
entry only: this venv's editable-install hook is not run there), so nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"targets": "toolkit/shipped/targets", "models": "toolkit/shipped/models", "deploy": "toolkit/shipped/deploy"}
SOURCES = ["pyproject.toml", "README.md", "toolkit", *SHIPPED]  # what setuptools reads to build the wheel


def _source_files(src: Path, folder: str, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(src)) for p in (src / folder).rglob(pattern) if "__pycache__" not in p.parts)


def _shipped_name(repo_path: str) -> str:
    """'deploy/rpi/edgeshrink_run.py' -> 'toolkit/shipped/deploy/rpi/edgeshrink_run.py'."""
    top, _, rest = repo_path.partition("/")
    return f"{SHIPPED[top]}/{rest}" if top in SHIPPED else repo_path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """A copy of what the wheel is built from (the repository's files as they are now)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")} if (REPO / name).is_dir() else {}
        copy(REPO / name, src / name, **kwargs)
    return src


@pytest.fixture(scope="module")
def wheel(sources, tmp_path_factory) -> Path:
    src, out = sources, tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = out.glob("edgeshrink-*.whl")
    return found


def _clean_env(**extra) -> dict:
    """The environment without this repository's settings (EDGESHRINK_*, PYTHONPATH, a venv)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EDGESHRINK_") and k not in {"PYTHONPATH", "VIRTUAL_ENV", "XDG_CACHE_HOME"}}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (not editable); its dependencies are this venv's."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    borrowed = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "edgeshrink-borrowed-deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False, env=_clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


def test_wheel_holds_profiles_cards_checkpoints_and_device_scripts(sources, wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = (_source_files(sources, "targets", "*.yaml") + _source_files(sources, "models", "*.yaml")
               + _source_files(sources, "models/checkpoints", "*.pt") + _source_files(sources, "deploy", "*.py"))
    assert any(p.startswith("models/checkpoints/") for p in shipped) and any(p.startswith("deploy/rpi/") for p in shipped)
    missing = [p for p in shipped if _shipped_name(p) not in names]
    assert not missing, f"the wheel lacks (add the folder to pyproject.toml's packages/package-data): {missing}"
    missing_code = [p for p in _source_files(sources, "toolkit", "*.py") if p not in names]
    assert not missing_code, f"the wheel lacks modules (add their folder to pyproject.toml's packages): {missing_code}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "edgeshrink = toolkit.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_reads_its_own_files_outside_the_repository(sources, installed, tmp_path):
    work, cache = tmp_path / "work", tmp_path / "user-cache"
    work.mkdir()
    env = _clean_env(XDG_CACHE_HOME=str(cache))
    probe = ("import json; from toolkit.core import paths; from toolkit.runtime.timing import device_common; "
             "from toolkit.pipeline.device_files import DEPLOY; from toolkit.config.cards import load_card; "
             "card = load_card('mobilenet_v3_small'); "
             "print(json.dumps({'checkout': paths.SOURCE_CHECKOUT, 'targets': str(paths.targets_dir()), "
             "'deploy': str(DEPLOY), 'common': device_common().__file__, 'checkpoint': str(card.checkpoint_path()), "
             "'dist': str(paths.DIST_DIR.resolve()), 'cache': str(paths.cache_dir()), 'data': str(paths.data_dir()), "
             "'child_path': str(paths.child_pythonpath())}))")
    done = subprocess.run([str(installed / "bin" / "python"), "-c", probe], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    site = str(installed)
    assert found["checkout"] is False
    for key in ("targets", "deploy", "common", "checkpoint"):
        assert found[key].startswith(site) and "/toolkit/shipped/" in found[key], (key, found[key])
    assert Path(found["checkpoint"]).read_bytes() == (sources / "models/checkpoints/mobilenet_v3_small.pt").read_bytes()
    assert found["dist"] == str(work / "dist") and found["data"] == str(work / "data")
    assert found["cache"] == str(cache / "edgeshrink")
    child_path = Path(found["child_path"])
    assert [p.name for p in child_path.iterdir()] == ["toolkit"] and child_path.is_relative_to(cache)

    listed = subprocess.run([str(installed / "bin" / "edgeshrink"), "targets"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert all(name in listed.stdout for name in ("host", "rpi4", "rpi5", "android", "jetson-orin-nano"))
    assert not (work / "dist").exists() and list(work.iterdir()) == []


@pytest.mark.slow
def test_installed_package_runs_a_built_in_card_from_an_empty_folder(installed, tmp_path):
    """`edgeshrink run` with the shipped card, checkpoint, profile and device scripts writes a
    complete bundle to ./dist of an empty folder outside the repository (~2.5 min: two onnx2tf
    conversions)."""
    work, cache = tmp_path / "empty", tmp_path / "user-cache"
    work.mkdir()
    done = subprocess.run([str(installed / "bin" / "edgeshrink"), "run", "--model", "mobilenet_v3_small", "--target", "host",
                           "--synthetic-data", "--finetune-epochs", "0", "--no-bench", "--quiet"],
                          cwd=work, env=_clean_env(XDG_CACHE_HOME=str(cache)), capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    bundle = work / "dist" / "mobilenet_v3_small-host"
    manifest = json.loads((bundle / "manifest.json").read_text())
    deployed = next(a for a in manifest["artifacts"] if a["name"] == manifest["deploy"]["artifact"])
    assert (bundle / deployed["file"]).is_file() and manifest["data"]["synthetic"] is True
    site = Path(subprocess.run([str(installed / "bin" / "python"), "-c", "import toolkit; print(toolkit.__file__)"],
                               capture_output=True, text=True, check=True, cwd=work).stdout.strip()).parent
    for script, folder in (("edgeshrink_common.py", "common"), ("edgeshrink_run.py", "rpi")):
        shipped = (site / "shipped" / "deploy" / folder / script).read_bytes()
        assert hashlib.sha256((bundle / script).read_bytes()).hexdigest() == hashlib.sha256(shipped).hexdigest()
    assert manifest["device_files"], "the bundle records its device scripts' hashes"
    assert (bundle / "config.json").is_file() and (bundle / "README.md").is_file()
    assert any((cache / "edgeshrink").iterdir()), "caches belong in the user cache folder"
