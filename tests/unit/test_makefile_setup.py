"""`make setup` must build every venv the pipeline uses (a rule read before its stamp variables silently
dropped .venv-litert and .venv-quant once: make expands prerequisites when it reads a rule)."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_setup_builds_all_three_venvs(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.txt", "requirements-litert.txt", "requirements-quant.txt", "pyproject.toml"):
        (tmp_path / name).write_text("")
    plan = subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    for venv in (".venv/bin/python", ".venv-litert/bin/python", ".venv-quant/bin/python"):
        assert venv in plan, f"`make setup` does not build {venv.split('/')[0]}:\n{plan}"
