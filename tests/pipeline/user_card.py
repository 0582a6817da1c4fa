"""Shared by the pipeline tests that run a user's own net: its source beside a card (seeded random
weights saved as the card's checkpoint, a 4-class classifier at 32 px) through `edgeshrink run
--target rpi4` on synthetic data, in a child process as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from toolkit.core.paths import REPO_ROOT


def run_user_card(tmp_path: Path, *, source: str, file: str, cls: str, **card_options) -> Path:
    """Write `source` as `file` with class `cls`, its weights and card (plus `card_options`), run the
    card and assert it exits 0. Returns the bundle folder."""
    import torch

    from tests.conftest import write_module

    name = Path(file).stem
    module = write_module(tmp_path / file, source, f"{name}_{tmp_path.name}")
    torch.manual_seed(0)
    torch.save(getattr(module, cls)().state_dict(), tmp_path / "weights.pt")
    card = {"name": name, "architecture": f"{file}:{cls}", "arguments": {"num_classes": 4},
            "task": "classification", "dataset": "synthetic", "metric": "top1", "checkpoint": {"path": "weights.pt"},
            "input": {"size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}, "labels": list("abcd"),
            **card_options}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", str(tmp_path / "card.yaml"), "--target",
                           "rpi4", "--synthetic-data", "--finetune-epochs", "0", "--no-bench", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=dict(os.environ), cwd=REPO_ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp_path / "out" / f"{name}-rpi4"
