"""Where things live: the files shipped with the package, the outputs, the data, the caches.

Two homes, told apart once at import by whether this file sits in a source checkout:

- **source checkout** (`make`, `pip install -e .`): profiles, cards, checkpoints and device scripts
  from the repository's `targets/`, `models/`, `deploy/`; outputs in `<repo>/dist`; caches in
  `<repo>/.cache`; helper venvs `<repo>/.venv-litert`, `<repo>/.venv-quant`; data in
  `../shared/data` beside the repository.
- **installed package** (a wheel, `pip install .`): the same files as package data under
  `toolkit/shipped/{targets,models,deploy}` (pyproject.toml maps the repository folders there), read
  through importlib.resources; outputs in `./dist` of the working folder; caches and helper venvs in
  the user cache folder (`$XDG_CACHE_HOME/edgeshrink`, else `~/.cache/edgeshrink`); data from `--data`
  or `$EDGESHRINK_DATA_DIR`, else `./data`.

Environment variables override either home: EDGESHRINK_MODELS_DIR, EDGESHRINK_TARGETS_DIR,
EDGESHRINK_DATA_DIR, EDGESHRINK_CACHE_DIR, EDGESHRINK_LITERT_VENV, EDGESHRINK_QUANT_VENV."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the toolkit package folder
REPO_ROOT = PACKAGE_DIR.parent  # the source checkout; for an installed package, the folder holding it (site-packages)
SOURCE_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "deploy" / "common").is_dir()


def shipped_dir(name: str) -> Path:
    """A folder shipped with the package ("targets", "models" or "deploy"): <repo>/<name> in a source
    checkout, else the installed package data toolkit/shipped/<name>. Refuses a package that is not
    unpacked on disk (a zip import), where device scripts could not be copied into bundles."""
    if SOURCE_CHECKOUT:
        return REPO_ROOT / name
    found = importlib.resources.files("toolkit").joinpath("shipped", name)
    if not isinstance(found, Path):
        from toolkit.core.errors import EdgeShrinkError

        raise EdgeShrinkError(f"the installed toolkit package is not a folder on disk ({found}); install it with pip, unpacked")
    return found


MODELS_DIR = shipped_dir("models")
TARGETS_DIR = shipped_dir("targets")
DEPLOY_DIR = shipped_dir("deploy")
# Outputs: <repo>/dist in a checkout; for an installed package ./dist, resolved against the working folder when used.
DIST_DIR = REPO_ROOT / "dist" if SOURCE_CHECKOUT else Path("dist")


def models_dir() -> Path:
    """Model cards: $EDGESHRINK_MODELS_DIR, else the shipped models/ (cards + checkpoints/)."""
    env = os.environ.get("EDGESHRINK_MODELS_DIR")
    return Path(env).expanduser() if env else MODELS_DIR


def targets_dir() -> Path:
    """Target profiles: $EDGESHRINK_TARGETS_DIR, else the shipped targets/."""
    env = os.environ.get("EDGESHRINK_TARGETS_DIR")
    return Path(env).expanduser() if env else TARGETS_DIR


def data_dir() -> Path:
    """Folder holding the datasets: $EDGESHRINK_DATA_DIR, else ../shared/data beside the repository
    (source checkout) or ./data in the working folder (installed package)."""
    env = os.environ.get("EDGESHRINK_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "data" if SOURCE_CHECKOUT else Path.cwd() / "data"


def user_cache_root() -> Path:
    """The installed package's own folder for caches and helper venvs: $XDG_CACHE_HOME/edgeshrink,
    else ~/.cache/edgeshrink (not created here)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgeshrink"


def cache_dir() -> Path:
    """Folder for decoded-dataset, conversion and pruning caches (created): $EDGESHRINK_CACHE_DIR, else
    <repo>/.cache (source checkout) or the user cache folder (installed package)."""
    env = os.environ.get("EDGESHRINK_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        path = REPO_ROOT / ".cache" if SOURCE_CHECKOUT else user_cache_root()
    if path not in _USABLE_CACHES or not path.is_dir():  # probed once per process (re-made if removed)
        _check_cache(path, bool(env))
        _USABLE_CACHES.add(path)
    return path


_USABLE_CACHES: set = set()


def _check_cache(path: Path, from_env: bool) -> None:
    """Create the cache folder and prove it writable (a probe file: permissions alone say nothing
    for root or a read-only mount); a file in the way or a read-only place is a one-line error."""
    import tempfile

    from toolkit.core.errors import EdgeShrinkError

    fix = ("point EDGESHRINK_CACHE_DIR at a writable folder" if from_env else
           "the default cache is not writable here (e.g. a read-only checkout): point EDGESHRINK_CACHE_DIR at a "
           "writable folder")
    if path.exists() and not path.is_dir():
        raise EdgeShrinkError(f"cache folder {path} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise EdgeShrinkError(f"cache folder {path} cannot be created or written ({exc.strerror or type(exc).__name__}); "
                              f"{fix}") from None


def side_venv_python(*, env: str, default: str, setup: str, what: str) -> Path:
    """The Python of a helper venv (the litert-torch converter, ai-edge-quantizer): $`env`, else
    <repo>/`default` (source checkout) or <user cache folder>/`default` without its dot (installed
    package). Refuses, naming how to make it, when it is missing or its install did not finish (no
    `.installed` stamp)."""
    from toolkit.core.errors import EdgeShrinkError

    override = os.environ.get(env)
    if override:
        venv = Path(override).expanduser()
    else:
        venv = REPO_ROOT / default if SOURCE_CHECKOUT else user_cache_root() / default.lstrip(".")
    python = venv / "bin" / "python"
    if not python.is_file() or not (venv / ".installed").is_file():
        if not SOURCE_CHECKOUT:
            pins = f"requirements{default.removeprefix('.venv')}.txt"
            setup = (f"python3 -m venv {venv} && {venv}/bin/pip install -r {pins} && touch {venv}/.installed "
                     f"({pins}: the pins in EdgeShrink's source repository)")
        raise EdgeShrinkError(f"the {what} venv {venv.name} is missing or unfinished; create it with: {setup} "
                              f"(or point {env} at one)")
    return python


def child_pythonpath() -> Path:
    """The PYTHONPATH entry that lets a helper venv's Python import this toolkit (and nothing else of
    this environment): the source checkout, or for an installed package a folder in the cache
    holding only a `toolkit` link to the installed package (site-packages itself would put this
    environment's numpy and friends in front of the helper venv's own)."""
    if SOURCE_CHECKOUT:
        return REPO_ROOT
    folder = cache_dir() / "pythonpath" / hashlib.sha256(str(PACKAGE_DIR).encode()).hexdigest()[:12]
    link = folder / "toolkit"
    if not (link.is_symlink() and link.resolve() == PACKAGE_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".toolkit-{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(PACKAGE_DIR, target_is_directory=True)
        os.replace(staged, link)
    return folder
