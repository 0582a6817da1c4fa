"""Every option of `edgeshrink run` / `toolkit.plan(...)`, defined once: `RunOptions`.

Each field says its name, type, default, bounds, help text, its flag, where it lives in a plan
and in config.json (`at`, the same dotted path in both), and whether a replayed plan may change
it (`replay="changeable"`). From it come the `edgeshrink run` flags (`add_run_flags`), the
API's keyword overrides (`split_overrides`), the option values config.json writes and replays
(`options_of`, `write_options`, `options_from_config`) and one validation with one-line errors
(`check_options`), so a flag, a keyword and a config key cannot drift apart."""

from __future__ import annotations

import os
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from toolkit.config.targets import TfliteConverter
from toolkit.core.errors import EdgeShrinkError, did_you_mean

MAX_THREADS = 256  # more threads than that only crashes the OpenMP runtime (it segfaults at 100000)
FPS_RULE = ("must be a positive number of frames per second, 'target' (the profile's budget.target_fps) or a "
            "speed-up over the dense FP32 file such as '2x'")


def option(default, *, help: str, at: str, flag: Optional[str] = None, replay: str = "fixed", rule: str = "",
           hint: str = "", path: bool = False, **bounds):
    """A RunOptions field: `at` is its dotted place in a RunPlan and in config.json; `flag` its
    `edgeshrink run` flag (default --name-with-dashes; a boolean's flag sets the opposite of its
    default); `replay="changeable"` lets a replayed plan change it; `rule`/`hint` word its refusal."""
    extra = {"at": at, "flag": flag, "replay": replay, "rule": rule, "hint": hint, "path": path}
    return Field(default, description=help, json_schema_extra=extra, **bounds)


class RunOptions(BaseModel):
    """The options of one run, as asked (None: the card's or the profile's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    out: Optional[str] = option(None, at="out_root", replay="changeable", path=True,
                                help="output root (default: dist/)")
    data: Optional[str] = option(None, at="data.root", path=True,
                                 help="dataset folder (default: $EDGESHRINK_DATA_DIR/<card dataset>)")
    synthetic_data: bool = option(False, at="data.synthetic",
                                  help="generated data (labelled synthetic in every output)")
    eval_limit: Optional[int] = option(None, at="data.eval_limit", ge=1,
                                       help="trial run: score every file on only this many held-out items (images; "
                                            "cases for segmentation); the manifest and report say so")
    checkpoint: Optional[str] = option(None, at="checkpoint", path=True,
                                       help="dense checkpoint (default: the model card's)")
    finetune_epochs: Optional[int] = option(None, at="pruning.finetune_epochs", ge=0,
                                            help="override the profile's fine-tuning epochs (0 = none)")
    calibration_size: Optional[int] = option(None, at="calibration_size", ge=1,
                                             hint="; below 1 the calibration set is empty (>= 200 recommended)",
                                             help="override the profile's calibration image count")
    seed: int = option(0, at="seed", ge=0, le=2**32 - 1, help="seed of data order, pruning and fine-tuning")
    bench: bool = option(True, at="bench", flag="--no-bench", replay="changeable", help="skip latency benchmarks")
    progress: bool = option(True, at="progress", flag="--quiet", replay="changeable", help="no progress bars")
    train_threads: Optional[int] = option(None, at="train_threads", ge=1, le=MAX_THREADS, replay="changeable",
                                          hint="; the machine has {cores} cores: use at most that many",
                                          help="torch threads for pruning and fine-tuning")
    cache: bool = option(True, at="cache", flag="--no-cache", replay="changeable",
                         help="redo pruning/fine-tuning and conversions even if cached")
    sparsity: Optional[float] = option(None, at="sparsity", gt=0, lt=1,
                                       help="unstructured magnitude sparsity after channel pruning, e.g. 0.8 "
                                            "(zeros in conv/linear weights)")
    sparsity_schedule: Literal["gradual", "oneshot"] = option("gradual", at="sparsity_schedule",
                                                              help="gradual: cubic schedule (default)")
    sparsity_steps: int = option(4, at="sparsity_steps", ge=1, le=100, help="gradual steps (default 4)")
    sparsity_finetune_epochs: int = option(2, at="sparsity_finetune_epochs", ge=0, le=1000,
                                           help="fine-tune epochs after each sparsity step (default 2)")
    structured: bool = option(True, at="structured", flag="--no-structured",
                              help="skip channel pruning (sparsity only, or the dense model)")
    max_trials: Optional[int] = option(None, at="pruning.max_trials", flag="--prune-max-trials", ge=1,
                                       help="pruning work budget: dry-run trials + pruning sub-steps (default: the "
                                            "card's/profile's, 600); past it the run goes on with the dense model")
    fps: Optional[Union[float, str]] = option(None, at="fps", rule=FPS_RULE,
                                              help="latency budget: prune as little as needed for the deployed file to "
                                                   "reach this FPS on this host ('target': the profile's "
                                                   "budget.target_fps; '2x': twice the dense FP32 FPS measured in this run)")
    max_metric_drop: Optional[float] = option(None, at="target.gate.max_metric_drop", ge=0, le=1,
                                              help="deploy gate: primary metric at most this far below dense FP32 "
                                                   "(default: the profile's, 0.015)")
    tflite_converter: Optional[TfliteConverter] = option(None, at="target.conversion.tflite",
                                                         help="TFLite converter (default: the card's, else the profile's "
                                                              "conversion.tflite, onnx2tf); the other one is tried when it "
                                                              "fails or fails parity")

    @field_validator("fps")
    @classmethod
    def _fps(cls, value):
        if isinstance(value, str):
            factor = value[:-1] if value.endswith("x") else ""
            if value != "target" and not (factor.replace(".", "", 1).isdigit() and float(factor) > 0):
                raise ValueError(FPS_RULE)
        elif value is not None and not 0 < value < 1e6:
            raise ValueError(FPS_RULE)
        return value


def extra(name: str) -> dict:
    """The declaration of one option (at, flag, replay, rule, hint, path)."""
    return RunOptions.model_fields[name].json_schema_extra


def flag_of(name: str) -> str:
    return extra(name)["flag"] or "--" + name.replace("_", "-")


def changeable_on_replay() -> tuple[str, ...]:
    return tuple(name for name in RunOptions.model_fields if extra(name)["replay"] == "changeable")


# ---- validation: one rule per option, one line per refusal -------------------------------------

def _kinds(name: str) -> list:
    """The option's types without None: [int], [float, str], [Literal[...]], ..."""
    import typing

    annotation = RunOptions.model_fields[name].annotation
    if typing.get_origin(annotation) is Union:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]

def _bounds(name: str) -> dict:
    """{"ge"/"gt"/"le"/"lt": value} declared on the option."""
    found = {}
    for item in RunOptions.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(item, key, None) is not None:
                found[key] = getattr(item, key)
    return found


def rule_of(name: str) -> str:
    """What the option accepts, in words (from its type and bounds unless it states a rule)."""
    import typing

    if extra(name)["rule"]:
        return extra(name)["rule"]
    kind, b = _kinds(name)[0], _bounds(name)
    if kind is bool:
        return "must be true or false"
    if typing.get_origin(kind) is Literal:
        return f"must be one of {', '.join(typing.get_args(kind))}"
    if kind is str:
        return "must be a path (text)"
    word = "an integer" if kind is int else "a number"
    low, high = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
    if "gt" in b and "lt" in b:
        return f"must be {word} between {low} and {high} (exclusive)"
    if high is not None:
        return f"must be {word} in {low}..{high}"
    return f"must be {word} {'>' if 'gt' in b else '>='} {low}"


def _problem(name: str, value) -> str:
    hint = extra(name)["hint"].format(cores=os.cpu_count())
    if RunOptions.model_fields[name].annotation is bool:
        hint = "; write a JSON/Python boolean, not a string or number"
    return f"{name} {rule_of(name)}, got {value!r}{hint}"


def check_options(values: dict, *, source: str = "") -> RunOptions:
    """`values` ({option: value}) as RunOptions; an unknown or bad option is one line naming it."""
    unknown = sorted(set(values) - set(RunOptions.model_fields))
    if unknown:
        raise EdgeShrinkError(f"{source}unknown option {unknown[0]!r}{did_you_mean(unknown[0], list(RunOptions.model_fields))}")
    values = {k: os.fspath(v) if extra(k)["path"] and isinstance(v, os.PathLike) else v for k, v in values.items()}
    try:
        return RunOptions.model_validate(values)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        raise EdgeShrinkError(source + _problem(name, values.get(name))) from None


def split_overrides(overrides: dict) -> tuple[RunOptions, dict]:
    """(run options, pruning overrides: keys of the card's/profile's `pruning:` block) from the
    API's keywords; an unknown key is an error with "did you mean"."""
    from toolkit.config.pruning import PruneConfig

    run = {k: v for k, v in overrides.items() if k in RunOptions.model_fields}
    prune = {k: v for k, v in overrides.items() if k not in run}
    choices = list(RunOptions.model_fields) + [k for k in PruneConfig.model_fields if k not in RunOptions.model_fields]
    for key in prune:
        if key not in PruneConfig.model_fields:
            raise EdgeShrinkError(f"unknown option {key!r}{did_you_mean(key, choices)}; choose from {', '.join(choices)}")
    return check_options(run), prune


# ---- where each option lives in a plan and in config.json (the same dotted path) ---------------

def _get(obj, path: str):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj


def options_of(plan) -> RunOptions:
    """Every option's value as the plan holds it (resolved: the card's/profile's where not asked)."""
    return check_options({name: _get(plan, extra(name)["at"]) for name in RunOptions.model_fields}, source="plan: ")


def write_options(options: RunOptions, data: dict) -> dict:
    """`data` (config.json being written) with every option at its place."""
    for name in RunOptions.model_fields:
        *parents, last = extra(name)["at"].split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = getattr(options, name)
    return data


def options_from_config(data: dict, source: str) -> RunOptions:
    """The options a config.json holds, checked exactly like a fresh plan's; a missing one is refused."""
    values = {}
    for name in RunOptions.model_fields:
        node = data
        for part in extra(name)["at"].split("."):
            if not isinstance(node, dict) or part not in node:
                raise EdgeShrinkError(f"{source} is incomplete: it has no {extra(name)['at']!r} (option {name}); "
                                      "pass an unmodified config.json")
            node = node[part]
        values[name] = node
    return check_options(values, source=f"{source}: ")


# ---- the `edgeshrink run` flags ----------------------------------------------------------------



def _from_text(name: str, text: str):
    """A flag's text as the option's type (a path with ~ expanded); ValueError names the problem."""
    if extra(name)["path"]:
        path = os.path.expanduser(text)
        if path.startswith("~"):
            raise ValueError(f"{text!r} starts with ~ but names no known user; write the folder out in full")
        return path
    kinds = _kinds(name)
    for kind, word in ((int, "an integer"), (float, "a number")):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                if str not in kinds:
                    raise ValueError(f"{text!r} is not {word}") from None
    return text


def flag_type(name: str):
    """An argparse type for the option: its text converted, then checked by the option's own rule."""
    import argparse

    def parse(text: str):
        try:
            value = _from_text(name, text)
            check_options({name: value})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        except EdgeShrinkError:
            raise argparse.ArgumentTypeError(f"{text!r} {rule_of(name)}") from None
        return value

    parse.__name__ = name
    return parse


def add_run_flags(parser) -> None:
    """One flag per option (dest: the option's name; not given: None, the option is left as planned)."""
    import typing

    for name, info in RunOptions.model_fields.items():
        common = {"dest": name, "default": None, "help": info.description,
                  **({} if info.annotation is bool else {"metavar": flag_of(name)[2:].upper().replace("-", "_")})}
        if info.annotation is bool:  # the flag asks for the opposite of the default (--no-bench, --quiet, --synthetic-data)
            parser.add_argument(flag_of(name), action="store_const", const=not info.default, **common)
            continue
        literal = next((k for k in _kinds(name) if typing.get_origin(k) is Literal), None)
        choices = {"choices": typing.get_args(literal)} if literal is not None else {}
        parser.add_argument(flag_of(name), type=flag_type(name), **choices, **common)


def given_options(args) -> dict:
    """The options whose flags were given, {name: value}."""
    return {name: getattr(args, name) for name in RunOptions.model_fields if getattr(args, name, None) is not None}


def landing(options: RunOptions, prefix: str) -> dict:
    """{path below `prefix`: value} of the options given (not None) that live under `prefix`
    ("target." -> {"gate.max_metric_drop": 0.1}, "pruning." -> {"finetune_epochs": 0})."""
    return {extra(name)["at"][len(prefix):]: getattr(options, name) for name in RunOptions.model_fields
            if extra(name)["at"].startswith(prefix) and getattr(options, name) is not None}


def plan_fields(options: RunOptions) -> dict:
    """The RunPlan fields an option sets as it is (its `at` is a plan field); the rest (data,
    checkpoint, pruning.*, target.*) the plan resolves."""
    return {extra(name)["at"]: getattr(options, name) for name in RunOptions.model_fields
            if "." not in extra(name)["at"] and name != "checkpoint"}
