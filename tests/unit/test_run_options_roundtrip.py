"""Every run option is defined once (toolkit.pipeline.options.RunOptions): the `edgeshrink run`
flags, the API's keywords and config.json's keys are the same set, every option survives
CLI -> plan -> config.json -> replay unchanged, and a replay re-checks every one of them."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import TINY_CARD, TINY_TARGET
from toolkit.core.errors import EdgeShrinkError
from toolkit.pipeline.options import RunOptions, extra, flag_of, options_of

# the command line of every option, each value unlike its default and unlike the tiny profile's
CLI_VALUES = {
    "out": "{tmp}/out", "data": "{tmp}/images", "synthetic_data": None, "checkpoint": "{tmp}/weights.pt",
    "finetune_epochs": "3", "calibration_size": "17", "seed": "7", "bench": None, "progress": None,
    "train_threads": "2", "cache": None, "sparsity": "0.6", "sparsity_schedule": "oneshot", "sparsity_steps": "3",
    "sparsity_finetune_epochs": "1", "structured": None, "max_trials": "9", "fps": "30",
    "max_metric_drop": "0.25", "tflite_converter": "litert-torch", "eval_limit": "40",
}
PLAN_KEYS = {"schema", "card_ref", "card_dir", "card", "target", "pruning", "input", "source", "checkpoint_sha256", "data"}


@pytest.fixture
def card(tmp_path, monkeypatch):
    """The tiny card (untrained weights beside it) and the tiny profile, in their own folders."""
    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "weights.pt", create_model("mobilenet_v3_small", **TINY_CARD["arguments"]).eval(),
                    "mobilenet_v3_small", TINY_CARD["arguments"])
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "tiny.yaml").write_text(yaml.safe_dump(TINY_TARGET))
    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(tmp_path / "targets"))
    (tmp_path / "card.yaml").write_text(yaml.safe_dump({**TINY_CARD, "checkpoint": {"path": "weights.pt"}}))
    return tmp_path / "card.yaml"


def _argv(tmp) -> list[str]:
    argv = []
    for name, text in CLI_VALUES.items():
        argv += [flag_of(name)] + ([] if text is None else [text.format(tmp=tmp)])
    return argv


def _run_parser():
    from toolkit.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return subparsers.choices["run"]


def test_flags_keywords_and_config_keys_are_one_set(card, tmp_path):
    import toolkit

    not_options = {"help", "model", "plan", "target", "host", "remote_python", "ssh_key", "known_hosts"}
    flags = {a.dest for a in _run_parser()._actions} - not_options
    assert flags == set(RunOptions.model_fields) == set(CLI_VALUES)
    config = toolkit.plan(str(card), target="tiny", synthetic_data=True, bench=False).to_json()
    places = {extra(name)["at"] for name in RunOptions.model_fields}
    for place in places:
        node = config
        for part in place.split("."):
            node = node[part]  # every option is written at its place
    assert set(config) - PLAN_KEYS == {p.split(".")[0] for p in places} - PLAN_KEYS  # and nothing else is


def test_every_option_survives_cli_plan_config_and_replay(card, tmp_path):
    import toolkit
    from toolkit.pipeline.options import given_options
    from toolkit.pipeline.plan import plan_from_json

    given = given_options(_run_parser().parse_args(["--model", str(card), "--target", "tiny", *_argv(tmp_path)]))
    assert set(given) == set(RunOptions.model_fields)
    defaults = RunOptions()
    assert all(given[n] != getattr(defaults, n) for n in given), "each value must differ from its default"
    plan = toolkit.plan(str(card), target="tiny", **given)
    config = json.loads(json.dumps(plan.to_json()))  # what config.json holds
    replayed = plan_from_json(config, "config.json")
    assert options_of(plan).model_dump() == options_of(replayed).model_dump() == given
    assert replayed.to_json() == config
    assert plan.target.conversion.tflite == "litert-torch" and plan.pruning.max_trials == 9


@pytest.mark.parametrize("fps, planned", [("2x", "2x"), ("target", float(TINY_TARGET["budget"]["target_fps"]))])
def test_fps_forms_replay_as_planned(card, fps, planned):
    import toolkit
    from toolkit.pipeline.plan import plan_from_json

    plan = toolkit.plan(str(card), target="tiny", synthetic_data=True, fps=fps)
    assert plan.fps == planned
    assert plan_from_json(json.loads(json.dumps(plan.to_json()))).fps == planned


def _bad_value(name: str):
    kind = RunOptions.model_fields[name].annotation
    return {bool: "yes", int: "ten"}.get(kind, 5 if extra(name)["path"] else "not-a-choice" if "Literal" in str(kind)
                                          else -1)


@pytest.mark.parametrize("name", list(RunOptions.model_fields))
def test_a_replay_rechecks_every_option(card, name):
    import toolkit
    from toolkit.pipeline.plan import plan_from_json

    config = json.loads(json.dumps(toolkit.plan(str(card), target="tiny", synthetic_data=True).to_json()))
    *parents, last = extra(name)["at"].split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = _bad_value(name)
    with pytest.raises(EdgeShrinkError, match=name) as exc:
        plan_from_json(config, "config.json")
    assert "\n" not in str(exc.value)


def test_a_replay_changes_only_what_it_may(card, tmp_path):
    import toolkit
    from toolkit.pipeline.plan import with_options

    plan = toolkit.plan(str(card), target="tiny", synthetic_data=True)
    moved = with_options(plan, out=str(tmp_path / "elsewhere"), progress=False, train_threads=1)
    assert moved.out_root == str(tmp_path / "elsewhere") and not moved.progress and moved.train_threads == 1
    with pytest.raises(EdgeShrinkError, match="seed"):
        with_options(plan, seed=3)


def test_tflite_converter_means_the_same_in_card_cli_and_api(card, tmp_path):
    import toolkit
    from toolkit.config.cards import ModelCard
    from toolkit.config.targets import Conversion

    kind = RunOptions.model_fields["tflite_converter"].annotation
    assert kind == ModelCard.model_fields["tflite_converter"].annotation
    assert set(_run_parser()._option_string_actions["--tflite-converter"].choices) == \
        set(Conversion.model_fields["tflite"].annotation.__args__)
    shutil.copy(card, tmp_path / "litert.yaml")
    data = yaml.safe_load(card.read_text())
    (tmp_path / "litert.yaml").write_text(yaml.safe_dump({**data, "tflite_converter": "litert-torch"}))
    from_card = toolkit.plan(str(tmp_path / "litert.yaml"), target="tiny", synthetic_data=True)
    from_api = toolkit.plan(str(card), target="tiny", synthetic_data=True, tflite_converter="litert-torch")
    assert options_of(from_card).tflite_converter == options_of(from_api).tflite_converter == "litert-torch"
