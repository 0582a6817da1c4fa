"""Lottery tickets and pruning at initialisation on a tiny real model and synthetic data."""

from __future__ import annotations

import json

import pytest
import torch

from toolkit.core.errors import EdgeShrinkError
from toolkit.studies.lottery import LotteryConfig, masks_from_scores, run_lottery, sparsity_at


def test_lottery_run_writes_table_plot_and_config(tmp_path):
    torch.set_num_threads(1)
    cfg = LotteryConfig(model="mobilenet_v3_small", width_mult=0.5, rounds=2, epochs=1, rewind_iter=2, size=32,
                        batch_size=16, synthetic_data=True, out=str(tmp_path), seed=5)
    result = run_lottery(cfg, progress=False)
    assert [r["sparsity"] for r in result["rows"]] == [pytest.approx(0.2), pytest.approx(0.36)]
    for row in result["rows"]:
        assert set(row) == {"round", "sparsity", "ticket", "reinit", "snip", "grasp", "magnitude"}
        assert all(0.0 <= row[m] <= 1.0 for m in ("ticket", "reinit", "snip", "grasp", "magnitude"))
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 5
    assert json.loads((tmp_path / "lottery.json").read_text())["seeds"]["reinit"] == [1006, 1007]
    table = (tmp_path / "lottery.md").read_text()
    assert "| sparsity | ticket | reinit | snip | grasp | magnitude | dense |" in table and "36.0 %" in table
    assert (tmp_path / "lottery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_table(tmp_path):
    torch.set_num_threads(1)
    runs = [run_lottery(LotteryConfig(model="mobilenet_v3_small", width_mult=0.5, rounds=1, epochs=1, size=32,
                                      batch_size=16, synthetic_data=True, methods=("ticket", "snip"),
                                      out=str(tmp_path / str(i))), progress=False) for i in range(2)]
    assert runs[0]["rows"] == runs[1]["rows"] and runs[0]["dense_top1"] == runs[1]["dense_top1"]


def test_init_scores_give_masks_at_the_requested_sparsity():
    from toolkit.studies.lottery import _fresh, _setup, init_scores

    torch.set_num_threads(1)
    s = _setup(LotteryConfig(model="mobilenet_v3_small", width_mult=0.5, size=32, batch_size=16,
                             synthetic_data=True, score_batches=2), progress=False)
    model = _fresh(s, 0)
    for method in ("snip", "grasp"):
        scores = init_scores(s, model, method)
        masks = masks_from_scores(scores, sparsity_at(3, 0.2))
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        assert kept == pytest.approx(0.8 ** 3, abs=1e-3)
        assert "classifier.3" not in scores  # the output layer is never pruned


def test_refuses_unknown_methods_and_models():
    with pytest.raises(EdgeShrinkError, match="unknown lottery method"):
        LotteryConfig(model="mobilenet_v3_small", methods=("ticket", "imp"))
    with pytest.raises(EdgeShrinkError, match="neither a model card"):
        run_lottery(LotteryConfig(model="mobilenet_v9", synthetic_data=True), progress=False)
