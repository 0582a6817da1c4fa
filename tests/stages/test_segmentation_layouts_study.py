"""The layouts study on the real hippocampus data (a few cases): the bundled MSD folder rewritten as
the Decathlon download, nnU-Net raw and 2-D PNG pairs, each with a card that loads with no source
edit and splits by case (the PNG slices of one patient never on both sides)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from toolkit.core.paths import data_dir

HIPPOCAMPUS = data_dir() / "hippocampus"


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="needs ../shared/data/hippocampus")
def test_three_layouts_of_the_same_cases_load_with_the_same_case_split(tmp_path):
    from toolkit.config.cards import load_card
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    out = tmp_path / "layouts"
    proc = subprocess.run([sys.executable, "-m", "toolkit.studies.segmentation_layouts", "--data", str(HIPPOCAMPUS),
                           "--out", str(out), "--cases", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    splits = {}
    for layout in ("msd", "nnunet", "pairs"):
        card = load_card(str(out / f"{layout}.yaml"))
        task = load_task(card, card_input_spec(card), DataRef(), progress=False)
        described = task.data_description()
        assert described["layout"] == layout and described["cases"] == {"train": 4, "held_out": 1}
        held = set(task.held_out_cases())
        assert not held & {v.case for v in task.volumes.train}
        splits[layout] = held
    assert splits["msd"] == splits["nnunet"] == splits["pairs"]  # the split is over case names, whatever the files
    again = subprocess.run([sys.executable, "-m", "toolkit.studies.segmentation_layouts", "--data", str(HIPPOCAMPUS),
                            "--out", str(out), "--cases", "5"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
