"""Hostile-input suite (issue 11, item 1): what a careless or hostile user feeds EdgeShrink.

Every refusal must be exit 2 with ONE line on stderr naming the problem and the fix, no traceback,
nothing partial left behind, nothing executed and nothing of the user's deleted. Cheap cases fail
during planning; runs that convert are marked slow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_CARD, TINY_TARGET


@pytest.fixture(scope="session")
def hws(tmp_path_factory):
    """models/ (the tiny card with untrained but well-formed weights) and targets/ (tiny + shipped)."""
    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint, sha256_file

    root = tmp_path_factory.mktemp("hostile_ws")
    models, targets = root / "models", root / "targets"
    models.mkdir()
    targets.mkdir()
    model = create_model("mobilenet_v3_small", **TINY_CARD["arguments"]).eval()
    ckpt = models / "tiny_mnv3.pt"
    save_checkpoint(ckpt, model, "mobilenet_v3_small", TINY_CARD["arguments"])
    card = dict(TINY_CARD, checkpoint={"path": str(ckpt), "sha256": sha256_file(ckpt)})
    (models / "tiny_mnv3.yaml").write_text(yaml.safe_dump(card))
    (targets / "tiny.yaml").write_text(yaml.safe_dump(TINY_TARGET))
    for profile in (REPO / "targets").glob("*.yaml"):
        shutil.copy(profile, targets / profile.name)
    return root


@pytest.fixture
def henv(hws, tmp_path, monkeypatch):
    """Environment pointing the toolkit (in-process and in subprocesses) at the hostile workspace."""
    env = {"EDGESHRINK_MODELS_DIR": str(hws / "models"), "EDGESHRINK_TARGETS_DIR": str(hws / "targets"),
           "EDGESHRINK_CACHE_DIR": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def cli(*args, cwd=None, timeout=300):
    """The real command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), cwd=cwd or REPO, timeout=timeout)


def assert_refused(proc, *words):
    """Exit 2, exactly one line on stderr (mentioning `words`), no traceback."""
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(err.splitlines()) == 1, err
    assert err.startswith("edgeshrink:"), err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


def assert_error_line(exc, *words):
    """A library-level refusal: EdgeShrinkError whose message is one line naming the problem."""
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def leftovers(folder: Path) -> list[str]:
    """Partial, old or temporary folders/files a run must never leave behind."""
    if not Path(folder).exists():
        return []
    return sorted(str(p) for p in Path(folder).rglob("*") if any(m in p.name for m in (".partial-", ".old-", ".tmp")))
