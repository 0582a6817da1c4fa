"""`eval_limit` (a trial run): every task scores fewer held-out items, the cache keys stay those of
the full data (a published or cached fine-tune is still reused), and the bundle says so everywhere:
the manifest's data, the report's first lines, and `edgeshrink publish` refusing it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from toolkit.core.errors import EdgeShrinkError


def _task(card, data):
    from toolkit.tasks.registry import card_input_spec, load_task

    return load_task(card, card_input_spec(card), data, progress=False)


def test_each_task_cuts_its_held_out_set_and_keeps_the_full_description_for_keys(use_workspace, tmp_path):
    from toolkit.config.cards import card_from_dict, load_card
    from toolkit.tasks.registry import DataRef

    from tests.stages.detection_helpers import CLASSES, DECODING, write_all_formats

    full = _task(load_card("tiny_mnv3"), DataRef(synthetic=True))
    cut = _task(load_card("tiny_mnv3"), DataRef(synthetic=True, eval_limit=5))
    assert cut.eval_count() == 5 < full.eval_count() and cut.key_description == full.data_description()
    assert cut.eval_limited == {"eval_limit": 5, "evaluated": 5, "of": full.eval_count(), "unit": "images"}
    assert full.eval_limited is None

    write_all_formats(tmp_path, train=6, val=5)
    det = card_from_dict({"name": "det", "architecture": "mobilenet_v3_detector", "task": "detection",
                          "dataset": {"root": str(tmp_path / "coco"), "format": "coco"}, "labels": CLASSES,
                          "input": {"size": [64, 64], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                          "metric": "map50", "detection": DECODING}, tmp_path)
    task = _task(det, DataRef(eval_limit=2))
    assert task.eval_count() == 2 and len(task.val.samples) == 2 and task.eval_limited["of"] == 5
    assert task.key_description["eval_images"] == 5

    seg = card_from_dict({"name": "seg", "architecture": "unet", "arguments": {"in_channels": 1, "num_classes": 3},
                          "task": "segmentation", "dataset": "hippocampus", "input": {"size": [64, 64], "channels": 1, "mean": [0.0], "std": [1.0],
                                                            "scaling": "zscore_volume"},
                          "metric": "dice", "labels": ["bg", "a", "b"]}, tmp_path)
    whole, two = _task(seg, DataRef(synthetic=True)), _task(seg, DataRef(synthetic=True, eval_limit=2))
    assert two.held_out_cases() == whole.held_out_cases()[:2] and two.eval_limited["unit"] == "cases"
    assert two.key_description == whole.data_description()


def test_a_trial_run_says_so_and_cannot_be_published(use_workspace, tmp_path):
    from tests.conftest import build_bundle

    bundle = build_bundle("tiny_mnv3", "tiny", tmp_path, synthetic_data=True, finetune_epochs=0, progress=False,
                          bench=False, eval_limit=6, cache=False)  # stores nothing other tests could reuse
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["data"]["eval_limited"]["evaluated"] == 6 and manifest["data"]["eval_images"] == 6
    assert "TRIAL RUN" in (bundle / "report.md").read_text().splitlines()[2]
    assert json.loads((bundle / "config.json").read_text())["data"]["eval_limit"] == 6  # replayable as it ran

    from toolkit.delivery.publish import publish_pruned

    with pytest.raises(EdgeShrinkError, match="synthetic|trial run"):
        publish_pruned(bundle)
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", "tiny_mnv3", "--target", "tiny",
                           "--synthetic-data", "--eval-limit", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "eval" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
