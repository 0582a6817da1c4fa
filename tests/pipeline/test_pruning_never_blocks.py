"""Pruning never blocks the bundle: a refused prune (here: over its work budget) leaves a verified
bundle made from the dense model, with the reason and the switch that skips pruning in the report."""

from __future__ import annotations

import json

from tests.conftest import build_bundle


def test_refused_prune_still_gives_verified_fp32_and_int8_files(use_workspace, tmp_path):
    bundle = build_bundle("tiny_mnv3", "tiny", tmp_path, synthetic_data=True, finetune_epochs=0, calibration_size=16,
                          bench=False, progress=False, max_trials=1, cache=False)  # a cached prune would skip the budget
    manifest = json.loads((bundle / "manifest.json").read_text())
    skipped = manifest["pruning"]["skipped"]
    assert "max_trials" in skipped["reason"] and "--no-structured" in skipped["switch"]
    made = {a["name"]: a for a in manifest["artifacts"]}
    assert {"dense-tflite-fp32", "pruned-tflite-int8"} <= set(made)
    assert made["pruned-torch-fp32"]["macs"] == made["dense-torch-fp32"]["macs"]  # the dense model, said so
    assert all(a["parity"].get("ok", True) for a in manifest["artifacts"])
    deployed = made[manifest["deploy"]["artifact"]]
    assert (bundle / deployed["file"]).is_file()
    report = (bundle / "report.md").read_text()
    assert "skipped" in report and "max_trials" in report


def test_the_work_budget_is_an_option_of_cli_api_and_card():
    from toolkit.cli import build_parser
    from toolkit.config.pruning import PruneConfig

    args = build_parser().parse_args(["run", "--model", "x", "--prune-max-trials", "7"])
    assert args.max_trials == 7
    assert PruneConfig(max_trials=7).max_trials == 7  # card / profile `pruning:` block and API keyword
