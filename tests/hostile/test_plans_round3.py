"""Cards and plans that used to give wrong results with exit 0, or tracebacks, at planning: labels
and class folders that do not match the model, impossible inputs, non-boolean flags, absurd thread
counts; and a deploy choice without benchmarks that picked a file failing the accuracy gate. A
replayed plan (`edgeshrink run --plan config.json`) goes through the same checks as a fresh one."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from tests.conftest import TINY_CARD
from tests.hostile.conftest import assert_error_line, assert_refused, cli
from toolkit.core.errors import EdgeShrinkError


def _card(tmp_path, hws, **changes):
    """The tiny card (4-output weights of the hostile workspace) with `changes`, written beside nothing else."""
    card = {**TINY_CARD, "checkpoint": {"path": str(hws / "models" / "tiny_mnv3.pt")}, **changes}
    (tmp_path / "card.yaml").write_text(yaml.safe_dump(card))
    return str(tmp_path / "card.yaml")


def _plan(card, **overrides):
    import toolkit

    return toolkit.plan(card, target="tiny", **{"synthetic_data": True, "bench": False, **overrides})


# ---- the model's outputs, the labels and the class folders -------------------------------------

def test_three_labels_for_a_four_output_model_is_refused(tmp_path, hws, henv):
    card = _card(tmp_path, hws, labels=["a", "b", "c"])
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(card)
    assert_error_line(exc, "4 outputs", "3 labels", "give exactly 4 labels")
    proc = cli("run", "--model", card, "--target", "tiny", "--synthetic-data", "--quiet", "--out", tmp_path / "out")
    assert_refused(proc, "4 outputs", "3 labels")
    assert not (tmp_path / "out").exists()


def test_num_classes_that_the_weights_do_not_make_is_refused(tmp_path, hws, henv):
    """The checkpoint's channel spec used to resize the head silently to its 4 outputs."""
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(_card(tmp_path, hws, arguments={**TINY_CARD["arguments"], "num_classes": 1000}))
    assert_error_line(exc, "num_classes: 1000", "4-output", "set num_classes: 4")


def test_model_that_cannot_run_on_the_planned_input_is_one_line(tmp_path, hws, henv):
    card = _card(tmp_path, hws, input={**TINY_CARD["input"], "channels": 1, "mean": [0.5], "std": [0.25]})
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(card)
    assert_error_line(exc, "cannot run on its planned input", "[1, 1, 64, 64]", "input")


def _folders(root, names, split="train"):
    for name in names:
        (root / split / name).mkdir(parents=True)
    return root


@pytest.mark.parametrize("folders, words", [
    (("w", "x", "y", "z"), ["['w', 'x', 'y', 'z']", "labels ['a', 'b', 'c', 'd']", "missing ['a', 'b', 'c', 'd']"]),
    (("a", "b", "c"), ["3 folders, 4 expected", "missing ['d']"]),
    (("a", "b", "c", "d", "e"), ["unexpected ['e']"]),
], ids=["other-names", "one-missing", "one-extra"])
def test_class_folders_must_be_the_cards_labels(tmp_path, hws, henv, folders, words):
    data = _folders(tmp_path / "data", folders)
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(_card(tmp_path, hws), synthetic_data=False, data=str(data))
    assert_error_line(exc, "class folders", "class_folders", *words)


def test_class_folders_in_the_card_map_folder_names_to_labels(tmp_path, hws, henv):
    data = _folders(tmp_path / "data", ("n01", "n02", "n03", "n04"))
    _plan(_card(tmp_path, hws, class_folders=["n01", "n02", "n03", "n04"]), synthetic_data=False, data=str(data))
    with pytest.raises(EdgeShrinkError) as exc:  # folder order is label order: a shuffled list would shift labels
        _plan(_card(tmp_path, hws, class_folders=["n02", "n01", "n03", "n04"]), synthetic_data=False, data=str(data))
    assert_error_line(exc, "another order")
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(_card(tmp_path, hws, class_folders=["n01", "n02"]))
    assert_error_line(exc, "class_folders", "one folder per label")


def test_class_folders_are_checked_where_the_images_are_read(tmp_path, hws, henv):
    """The run's own data loading refuses too (a folder created after planning, `edgeshrink train`)."""
    import numpy as np
    from PIL import Image

    from toolkit.config.cards import load_card
    from toolkit.data.datasets import classification_splits
    from toolkit.tasks.registry import DataRef, card_input_spec

    for split in ("train", "val"):
        for name in ("w", "x", "y", "z"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "data" / split / name / "0.png")
    card = load_card(_card(tmp_path, hws))
    with pytest.raises(EdgeShrinkError) as exc:
        classification_splits(card, card_input_spec(card), DataRef(str(tmp_path / "data")), progress=False)
    assert_error_line(exc, "class folders", "['w', 'x', 'y', 'z']")


# ---- inputs ------------------------------------------------------------------------------------

CARD_INPUTS = {
    "std-zero": ({"std": [0.0, 0.2, 0.2]}, ["input.std", "positive"]),
    "std-negative": ({"std": [0.2, -0.2, 0.2]}, ["input.std", "positive"]),
    "mean-too-short": ({"mean": [0.5, 0.5]}, ["input.mean", "one value per channel"]),
    "std-too-long": ({"std": [0.2, 0.2, 0.2, 0.2]}, ["input.std", "one value per channel"]),
    "channels-0": ({"channels": 0}, ["input.channels", "1 (grey) or 3 (RGB)"]),
    "channels-negative": ({"channels": -3}, ["input.channels", "1 (grey) or 3 (RGB)"]),
    "channels-4": ({"channels": 4, "mean": [0.5] * 4, "std": [0.2] * 4}, ["input.channels", "1 (grey) or 3 (RGB)"]),
    "size-huge": ({"size": [100000, 100000]}, ["input.size", "4096"]),
}


@pytest.mark.parametrize("case", list(CARD_INPUTS))
def test_impossible_card_input_is_refused(tmp_path, hws, henv, case):
    change, words = CARD_INPUTS[case]
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(_card(tmp_path, hws, input={**TINY_CARD["input"], **change}))
    assert_error_line(exc, "card.yaml", *words)


@pytest.fixture
def plan_json(hws, henv, tmp_path):
    """A valid config.json of the tiny card (its own copy of the weights)."""
    import toolkit

    weights = tmp_path / "weights.pt"
    shutil.copy(hws / "models" / "tiny_mnv3.pt", weights)
    plan = toolkit.plan("tiny_mnv3", target="tiny", checkpoint=str(weights), synthetic_data=True, bench=False,
                        out=str(tmp_path / "out"))
    return plan.to_json()


def _edit_input(**change):
    return lambda d: dict(d, input={**d["input"], **change})


PLAN_EDITS = {
    "std-zero": (_edit_input(std=[0.0, 0.2, 0.2]), ["input.std", "positive"]),
    "std-negative": (_edit_input(std=[-1.0, 0.2, 0.2]), ["input.std", "positive"]),
    "mean-nan": (_edit_input(mean=[float("nan"), 0.4, 0.4]), ["input.mean", "finite"]),
    "std-inf": (_edit_input(std=[float("inf"), 0.2, 0.2]), ["input.std", "finite"]),
    "mean-wrong-length": (_edit_input(mean=[0.5]), ["input.mean", "1 values", "channels is 3"]),
    "mean-is-text": (_edit_input(mean="0.5"), ["input.mean", "list of numbers"]),
    "channels-0": (_edit_input(channels=0), ["input.channels"]),
    "channels-negative": (_edit_input(channels=-3), ["input.channels"]),
    "channels-4": (_edit_input(channels=4, mean=[0.5] * 4, std=[0.2] * 4), ["input.channels"]),
    "size-huge": (_edit_input(height=100000, width=100000), ["input.size", "4096"]),
    "size-text": (_edit_input(height="64"), ["input.size"]),
    "progress-no": (lambda d: dict(d, progress="no"), ["progress", "true or false"]),
    "bench-1": (lambda d: dict(d, bench=1), ["bench", "true or false"]),
    "cache-null": (lambda d: dict(d, cache=None), ["cache", "true or false"]),
    "structured-text": (lambda d: dict(d, structured="false"), ["structured", "true or false"]),
    "synthetic-text": (lambda d: dict(d, data={**d["data"], "synthetic": "yes"}), ["synthetic_data", "true or false"]),
    "threads-huge": (lambda d: dict(d, train_threads=100000), ["train_threads", "1..256"]),
    "labels-shifted": (lambda d: dict(d, card={**d["card"], "labels": ["b", "c", "d"]}), ["4 outputs", "3 labels"]),
    "num-classes": (lambda d: dict(d, card={**d["card"], "arguments": {"num_classes": 1000, "width_mult": 0.5}},
                                   source={**d["source"], "arguments": {"num_classes": 1000, "width_mult": 0.5}}),
                    ["num_classes: 1000"]),
}


@pytest.mark.parametrize("edit", list(PLAN_EDITS))
def test_replayed_plan_gets_the_checks_of_a_fresh_one(plan_json, edit):
    from toolkit.pipeline.plan import plan_from_json

    change, words = PLAN_EDITS[edit]
    with pytest.raises(EdgeShrinkError) as exc:
        plan_from_json(json.loads(json.dumps(change(plan_json))), "config.json")
    assert_error_line(exc, *words)


@pytest.mark.parametrize("edit", ["mean-nan", "progress-no", "size-huge"])
def test_replayed_plan_is_refused_by_the_cli(plan_json, tmp_path, edit):
    change, words = PLAN_EDITS[edit]
    (tmp_path / "config.json").write_text(json.dumps(change(plan_json)))  # NaN is written as the JSON token NaN
    t0 = time.perf_counter()
    proc = cli("run", "--plan", tmp_path / "config.json", "--quiet")
    assert_refused(proc, *words)
    assert time.perf_counter() - t0 < 120 and not (tmp_path / "out").exists()


def test_the_unedited_plan_still_replays(plan_json):
    from toolkit.pipeline.plan import plan_from_json

    assert plan_from_json(json.loads(json.dumps(plan_json))).to_json() == plan_json


# ---- run options -------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("bench", "no"), ("progress", "no"), ("cache", 0), ("structured", "false"),
                                           ("synthetic_data", "yes"), ("train_threads", 100000),
                                           ("train_threads", 0), ("train_threads", True)])
def test_run_options_are_strict(tmp_path, hws, henv, option, value):
    with pytest.raises(EdgeShrinkError) as exc:
        _plan(_card(tmp_path, hws), **{option: value})
    assert_error_line(exc, option)


def test_absurd_train_threads_is_refused_not_a_segfault(tmp_path, henv):
    proc = cli("run", "--model", "tiny_mnv3", "--target", "tiny", "--synthetic-data", "--train-threads", "100000",
               "--quiet", "--out", tmp_path / "out")
    assert_refused(proc, "--train-threads", "1..256")
    assert not (tmp_path / "out").exists()


def test_plan_options_changed_later_are_checked(plan_json):
    from toolkit.pipeline.plan import plan_from_json, with_options

    plan = plan_from_json(json.loads(json.dumps(plan_json)))
    assert with_options(plan, train_threads=2).train_threads == 2
    for change in ({"train_threads": 100000}, {"bench": "no"}):
        with pytest.raises(EdgeShrinkError):
            with_options(plan, **change)


# ---- the deploy choice without benchmarks ------------------------------------------------------

def _artifacts(int8_top1: float):
    from toolkit.models.artifact import Artifact

    def art(stage, precision, macs, top1):
        return Artifact(name=f"{stage}-tflite-{precision}", stage=stage, format="tflite", precision=precision,
                        file=f"m_{stage}_{precision}.tflite", macs=macs, metrics={"top1": top1})

    return [art("dense", "fp32", 100, 0.90), art("dense", "int8", 100, 0.89), art("pruned", "fp32", 60, 0.88),
            art("pruned", "int8", 60, int8_top1)]


def test_no_bench_never_deploys_a_file_that_fails_the_gate(henv):
    """`--no-bench` / shrink(bench=False) used to deploy the profile's deploy.artifact (pruned INT8)
    even when it lost 40 points of accuracy."""
    from toolkit.config.targets import load_target
    from toolkit.pipeline.choose import choose_deploy

    target = load_target("tiny")
    assert target.deploy.artifact == "pruned-tflite-int8"
    good = choose_deploy(_artifacts(0.895), target=target, metric="top1", measured_on="host")
    assert good["artifact"] == "pruned-tflite-int8"
    bad = choose_deploy(_artifacts(0.50), target=target, metric="top1", measured_on="host")
    chosen = next(r for r in bad["candidates"] if r["artifact"] == bad["artifact"])
    assert bad["artifact"] != "pruned-tflite-int8" and chosen["passes"]
    assert bad["artifact"] == "dense-tflite-int8" and "fails the gate" in bad["reason"]
    fixed = target.model_copy(update={"deploy": target.deploy.model_copy(update={"select": "fixed"})})
    with pytest.raises(EdgeShrinkError) as exc:
        choose_deploy(_artifacts(0.50), target=fixed, metric="top1", measured_on="host")
    assert_error_line(exc, "pruned-tflite-int8", "fails the deploy gate", "deploy.select: fastest")
