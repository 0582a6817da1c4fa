"""Where things live: the repository, the shared data, the cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
TARGETS_DIR = REPO_ROOT / "targets"
DIST_DIR = REPO_ROOT / "dist"


def models_dir() -> Path:
    """Model cards: $EDGESHRINK_MODELS_DIR, else <repo>/models."""
    env = os.environ.get("EDGESHRINK_MODELS_DIR")
    return Path(env).expanduser() if env else MODELS_DIR


def targets_dir() -> Path:
    """Target profiles: $EDGESHRINK_TARGETS_DIR, else <repo>/targets."""
    env = os.environ.get("EDGESHRINK_TARGETS_DIR")
    return Path(env).expanduser() if env else TARGETS_DIR


def data_dir() -> Path:
    """Folder holding the datasets: $EDGESHRINK_DATA_DIR, else ../shared/data beside the repo."""
    env = os.environ.get("EDGESHRINK_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Folder for decoded-dataset caches: $EDGESHRINK_CACHE_DIR, else <repo>/.cache."""
    env = os.environ.get("EDGESHRINK_CACHE_DIR")
    path = Path(env).expanduser() if env else REPO_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def side_venv_python(*, env: str, default: str, setup: str, what: str) -> Path:
    """The Python of a helper venv (the litert-torch converter, ai-edge-quantizer): $`env`, else
    <repo>/`default`. Refuses, naming `setup`, when it is missing or its install did not finish
    (no `.installed` stamp)."""
    from toolkit.core.errors import EdgeShrinkError

    override = os.environ.get(env)
    venv = Path(override).expanduser() if override else REPO_ROOT / default
    python = venv / "bin" / "python"
    if not python.is_file() or not (venv / ".installed").is_file():
        raise EdgeShrinkError(f"the {what} venv {venv.name} is missing or unfinished; create it with: {setup} "
                              f"(or point {env} at one)")
    return python
