"""Broken target profiles and model cards: one line naming the file, the key and the fix."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.conftest import TINY_CARD, TINY_TARGET
from tests.hostile.conftest import assert_error_line, assert_refused, cli
from toolkit.core.errors import EdgeShrinkError


def _with(base: dict, path: str, value) -> dict:
    """A deep copy of `base` with the dotted key `path` set to `value` (or removed when value is ...)."""
    import copy

    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return data


BAD_PROFILES = [
    ("device.cores", "two", "device.cores"),
    ("device.cores", 10**30, "device.cores"),
    ("device.cores", -2, "device.cores"),
    ("device.memory_gb", math.nan, "memory_gb"),
    ("device.memory_gb", -4, "memory_gb"),
    ("device.arch", "riscv", "device.arch"),
    ("runtime.threads", 0, "runtime.threads"),
    ("runtime.engine", "coreml", "runtime.engine"),
    ("quantization.calibration_size", -5, "calibration"),
    ("quantization.calibration_size", 10**12, "calibration_size"),
    ("budget.target_fps", math.nan, "target_fps"),
    ("budget.target_fps", math.inf, "target_fps"),
    ("budget.target_fps", ..., "budget.target_fps"),
    ("benchmark.min_runs", -5, "min_runs"),
    ("benchmark.min_seconds", math.inf, "min_seconds"),
    ("benchmark.warmup", -2, "warmup"),
    ("benchmark.repeats", 0, "repeats"),
    ("benchmark.repeats", 10**9, "repeats"),
    ("quantization.fallback_max_layers", 0, "fallback_max_layers"),
    ("quantization.fallback_max_layers", "all", "fallback_max_layers"),
    ("quantization.fallback", "maybe", "quantization.fallback"),
    ("quantization.fallback_floats", True, "did you mean"),
    ("pruning.target_macs", math.nan, "target_macs"),
    ("pruning.finetune_epochs", -1, "finetune_epochs"),
    ("pruning.distill", 7.0, "distill"),
    ("pruning.steps", 0, "steps"),
    ("pruning.round_to", 0, "round_to"),
    ("pruning.finetune_epoch", 3, "did you mean"),
    ("descripton", "typo", "did you mean"),
    ("input_size", [0, -3], "input_size"),
    ("input_size", [100000, 100000], "input_size"),
    ("formats", "tflite", "formats"),
    ("name", "other", "make them match"),
]


@pytest.mark.parametrize("key, value, words", BAD_PROFILES, ids=[f"{k}={v!r}" for k, v, _ in BAD_PROFILES])
def test_bad_target_profile_is_one_line(tmp_path, key, value, words):
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_with(TINY_TARGET, key, value)))
    with pytest.raises(EdgeShrinkError) as exc:
        validate_target_file(path)
    assert_error_line(exc, "tiny.yaml", words)


UNREADABLE = [
    (b"\x00\xff\xfe\x89PNG\x00\x00", "not a text file"),
    (b"", "mapping"),
    (b"- a\n- b\n", "mapping"),
    (b'"just a string"\n', "mapping"),
    (b"name: [unclosed\n", "not valid YAML"),
    (b"name: tiny\n\tdevice: {}\n", "not valid YAML"),
]


@pytest.mark.parametrize("content, words", UNREADABLE, ids=["binary", "empty", "list", "string", "unclosed", "tab"])
def test_unreadable_yaml_is_one_line_for_profiles_and_cards(tmp_path, henv, content, words):
    from toolkit.config.cards import load_card
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "tiny.yaml"
    path.write_bytes(content)
    for load in (validate_target_file, load_card):
        with pytest.raises(EdgeShrinkError) as exc:
            load(str(path))
        assert_error_line(exc, words)


def test_profile_path_that_is_a_folder_is_one_line(tmp_path):
    from toolkit.config.targets import validate_target_file

    (tmp_path / "tiny.yaml").mkdir()
    with pytest.raises(EdgeShrinkError) as exc:
        validate_target_file(tmp_path / "tiny.yaml")
    assert_error_line(exc, "cannot read")


BAD_CARDS = [
    ("input.size", [64, -64], "input.size"),
    ("input.size", [10**9, 10**9], "input.size"),
    ("input.size", "big", "input.size"),
    ("input.mean", [math.nan, 0.4, 0.4], "input.mean"),
    ("input.scaling", "divide256", "input.scaling"),
    ("name", "../../x", "not allowed"),
    ("name", "a;rm -rf ~", "not allowed"),
    ("architecure", "mobilenet_v3_small", "did you mean"),
    ("task", "detektion", "unknown task"),
    ("arguments", [1, 2], "arguments"),
    ("labels", "abcd", "labels"),
    ("checkpoint", {"path": "w.pt", "sha265": "x"}, "did you mean"),
]


@pytest.mark.parametrize("key, value, words", BAD_CARDS, ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD_CARDS])
def test_bad_model_card_is_one_line(tmp_path, key, value, words):
    from toolkit.config.cards import load_card

    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(_with(TINY_CARD, key, value)))
    with pytest.raises(EdgeShrinkError) as exc:
        load_card(str(path))
    assert_error_line(exc, "card.yaml", words)


def test_card_name_must_match_its_file_name(henv):
    from pathlib import Path

    from toolkit.config.cards import load_card

    models = Path(henv["EDGESHRINK_MODELS_DIR"])
    (models / "impostor.yaml").write_text((models / "tiny_mnv3.yaml").read_text())
    try:
        with pytest.raises(EdgeShrinkError) as exc:
            load_card("impostor")
        assert_error_line(exc, "make them match")
    finally:
        (models / "impostor.yaml").unlink()


@pytest.mark.parametrize("pruning, words", [({"finetune_epochs": -1}, "finetune_epochs"),
                                            ({"target_macs": 1.5}, "target_macs"),
                                            ({"target_mac": 0.5}, "did you mean")], ids=["negative-epochs", "macs", "typo"])
def test_bad_card_pruning_settings_refused_at_planning(tmp_path, henv, pruning, words):
    import toolkit

    card = yaml.safe_load((__import__("pathlib").Path(henv["EDGESHRINK_MODELS_DIR"]) / "tiny_mnv3.yaml").read_text())
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(dict(card, pruning=pruning)))
    with pytest.raises(EdgeShrinkError) as exc:
        toolkit.plan(str(path), target="tiny", synthetic_data=True)
    assert_error_line(exc, words)


def test_targets_lists_good_profiles_and_reports_the_broken_one(henv, tmp_path):
    from pathlib import Path

    broken = Path(henv["EDGESHRINK_TARGETS_DIR"]) / "zz-broken.yaml"
    broken.write_bytes(b"\x00\xffnot yaml")
    try:
        proc = cli("targets")
    finally:
        broken.unlink()
    assert_refused(proc, "zz-broken.yaml")
    assert "tiny" in proc.stdout and "rpi4" in proc.stdout


def test_models_lists_good_cards_and_reports_the_broken_one(henv):
    from pathlib import Path

    broken = Path(henv["EDGESHRINK_MODELS_DIR"]) / "zz_broken.yaml"
    broken.write_text("name: zz_broken\ninput: [\n")
    try:
        proc = cli("models")
    finally:
        broken.unlink()
    assert_refused(proc, "zz_broken.yaml")
    assert "tiny_mnv3" in proc.stdout and "architectures:" in proc.stdout


def test_validate_reports_each_bad_file_in_one_line_and_exits_2(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(_with(TINY_TARGET, "device.cores", "many")))
    proc = cli("validate", tmp_path / "tiny.yaml")
    assert_refused(proc, "device.cores")
