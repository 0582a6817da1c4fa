"""The zoo benchmark on torchvision classifiers nobody here wrote (random weights, small inputs)."""

from __future__ import annotations

import argparse
import json
import time

import pytest
import torch

from toolkit.studies.zoo import STAGES, register_cli, run_zoo, zoo_models

torch.set_num_threads(1)
HARD = ["shufflenet_v2_x0_5", "mnasnet0_5", "regnet_x_400mf", "resnet18"]


def _failures(rows):
    return [(r["model"], s, e.get("message")) for r in rows for s, e in r["stages"].items() if e["status"] == "failed"]


def test_hard_convnets_prune_or_refuse_and_export_with_parity(tmp_path, capsys):
    rows = run_zoo(HARD, size=64, out=tmp_path, progress=False)
    by_name = {r["model"]: r for r in rows}
    assert not _failures(rows)  # every stage is ok, or refused in one line
    for name in HARD:  # ShuffleNetV2 included: pruned inside its blocks, around the channel shuffle
        row = by_name[name]
        assert all(row["stages"][s]["status"] == "ok" for s in STAGES), row
        assert row["macs_pruned"] < row["macs_dense"]
    assert by_name["resnet18"]["protected_outputs"] == ["fc"]  # the 1000-way classifier is kept whole
    assert by_name["shufflenet_v2_x0_5"]["model_checked"] == "pruned"
    saved = json.loads((tmp_path / "zoo.json").read_text())
    assert [r["model"] for r in saved["models"]] == HARD
    assert "ok per stage (4 models)" in capsys.readouterr().out.strip().splitlines()[-1]


def test_vision_transformer_is_pruned_safely_or_refused_quickly():
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.config.pruning import PruneConfig
    from toolkit.prune.prune import prune
    from toolkit.studies.zoo import build_zoo_model

    torch.manual_seed(0)
    model, _ = build_zoo_model("vit_b_16", 32)
    x = torch.randn(2, 3, 32, 32)
    dense_out = model(x)
    started = time.monotonic()
    try:
        result = prune(model, example_input=x, cfg=PruneConfig(target_macs=0.6, scope="uniform"), progress=False)
    except EdgeShrinkError as exc:
        assert "\n" not in str(exc)
        result = None
    assert time.monotonic() - started < 60
    if result is not None:
        assert result.protected_outputs == ["heads.head"] and result.model(x).shape == dense_out.shape
        assert result.history[-1]["macs_fraction"] <= 0.6
        assert any("attention" in e["reason"] for e in result.excluded)


def test_cli_registration_parses_the_zoo_options():
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["zoo", "--models", "resnet18,mnasnet0_5", "--size", "96", "--out", "x"])
    assert (args.models, args.size, args.out, args.func.__name__) == ("resnet18,mnasnet0_5", 96, "x", "_cmd_zoo")
    assert "resnet18" in zoo_models() and len(zoo_models()) > 70


def test_unknown_model_is_one_line_error(tmp_path):
    from toolkit.core.errors import EdgeShrinkError

    with pytest.raises(EdgeShrinkError, match="did you mean"):
        run_zoo(["resnet181"], out=tmp_path)


@pytest.mark.slow
def test_whole_zoo_has_no_failed_stage(tmp_path):
    rows = run_zoo(size=64, out=tmp_path, progress=True)
    assert not _failures(rows), _failures(rows)
