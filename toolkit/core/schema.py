"""Strict config models: unknown keys are errors with a "did you mean", errors are one line."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from toolkit.core.errors import EdgeShrinkError, did_you_mean

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config model: unknown keys forbidden, frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # NaN/inf is never a setting


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at a nested location (for "did you mean" on a misspelt key)."""
    import typing

    cls = model_cls
    for part in loc[:-1]:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        ann = cls.model_fields[part].annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = args[0] if args else ann
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def validate_data(model_cls: type[M], data: dict, source: str) -> M:
    """Validate `data` as `model_cls`; the first problem becomes a one-line EdgeShrinkError."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key also makes the real key "missing": report the typo, it names the fix
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _fields_at(model_cls, loc))
            raise EdgeShrinkError(f"{source}: unknown key '{where}'{hint}; remove or rename it") from None
        if err["type"] == "missing":
            raise EdgeShrinkError(f"{source}: missing required key '{where}'; add it") from None
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # a cross-field rule of the whole file
            raise EdgeShrinkError(f"{source}: {msg}; fix the profile") from None
        got = repr(err.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        raise EdgeShrinkError(f"{source}: '{where}' {msg[0].lower() + msg[1:]} (got {got}); fix the value") from None


def _no_alias_loader():
    """yaml.SafeLoader that refuses aliases (`*name`, `<<: *name`): a few hundred bytes of nested
    aliases expand to gigabytes once validated or printed (a "billion laughs" file)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not allowed; write the "
                                                  "value out instead", event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


def parse_yaml(text: str, source: str, what: str):
    """YAML text -> data (aliases refused); malformed YAML is a one-line error naming `source` and the line."""
    import yaml

    try:
        return yaml.load(text, Loader=_no_alias_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise EdgeShrinkError(f"{source}:{line} is not valid YAML ({getattr(exc, 'problem', None) or exc}); "
                              f"fix the {what} file") from None
    except RecursionError:
        raise EdgeShrinkError(f"{source}: YAML nested too deeply; fix the {what} file") from None


def load_yaml(path: Path, what: str) -> dict:
    """Read a YAML mapping from a regular file of at most 1 MB; a folder, FIFO, device, oversized,
    binary or malformed file, and YAML aliases, are one-line errors naming the file (and line)."""
    from toolkit.core.files import TEXT_MAX_BYTES, file_problem

    problem = file_problem(path, TEXT_MAX_BYTES)
    if problem:
        raise EdgeShrinkError(f"{path}: cannot read the {what} file: it {problem}; pass the path of a .yaml file "
                              "(at most 1 MB)")
    from toolkit.core.files import read_bytes_capped

    raw = read_bytes_capped(path, what, "pass the path of a .yaml file (at most 1 MB)", TEXT_MAX_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgeShrinkError(f"{path}: not a text file (binary bytes); a {what} file must be UTF-8 YAML") from None
    data = parse_yaml(text, str(path), what)
    if not isinstance(data, dict):
        raise EdgeShrinkError(f"{path}: a {what} file must be a YAML mapping of keys to values")
    return data
