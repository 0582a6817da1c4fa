"""Architectures: a registered name, a model library's `package:callable`, or `path/to/file.py:factory`.

`create_model("mobilenet_v3_small", num_classes=10)` builds a registered one;
`resolve_factory(spec, base_dir)` resolves any of the three forms with importlib, so every process
that needs a model (spawned workers included) finds the same factory without registration.

What an architecture string may name (a card is data: it must not run arbitrary code):

- a registered name (`list_models()`);
- a model library's factory or model class: `timm:create_model`, `torchvision.models:NAME`,
  `monai.networks.nets:NAME` (the callable must be defined in that package: `os:system`,
  `subprocess:getoutput`, `builtins:exec` or `toolkit.cli:main` are refused before any import);
- `file.py:factory` inside the card's folder: a relative path without `..` (the card's own code).

Anything else (an absolute path, `..`, any other module) is refused unless the user opts in with
the environment variable EDGESHRINK_ALLOW_CODE=1 (for code they trust). A weights file never
supplies an architecture that is then imported: a checkpoint's stored name is used only when it is
a registered name, or the very architecture the running card names (EDGESHRINK_CARD_ARCHITECTURE,
which a run sets for its worker processes); otherwise the card's architecture builds the model.

The card's code runs guarded (`user_code`): `sys.exit()`, `os._exit()` or a KeyboardInterrupt it
raises become a one-line error naming its file instead of ending the run silently with status 0.
(Code can still end the process by other means, e.g. a signal to itself or ctypes; that exit is
never 0 with a bundle reported, since the CLI prints `wrote <bundle>` only after the bundle exists.)"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import importlib
import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

from toolkit.core.errors import EdgeShrinkError, unknown_name

CARD_DIR_ENV = "EDGESHRINK_CARD_DIR"  # where a run's worker processes resolve `file.py:factory` (the card's folder)
CARD_ARCHITECTURE_ENV = "EDGESHRINK_CARD_ARCHITECTURE"  # the architecture the running card names (checked, not from a file)
ALLOW_CODE_ENV = "EDGESHRINK_ALLOW_CODE"  # "1": build any importable callable or any .py path (code the user trusts)
# `module:attribute` forms built without the opt-in: (module, attribute or "*", package the callable must be defined in)
MODEL_LIBRARIES = (("timm", "create_model", "timm"), ("torchvision.models", "*", "torchvision.models"),
                   ("monai.networks.nets", "*", "monai.networks.nets"))
_FACTORIES: dict[str, Callable] = {}
_INSTANCES: dict[str, object] = {}


def register(name: str):
    """Decorator adding a factory under `name`; a duplicate name is an error, not a warning."""

    def wrap(fn: Callable) -> Callable:
        if name in _FACTORIES:
            raise ValueError(f"architecture {name!r} registered twice")
        _FACTORIES[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob pattern."""
    return sorted(n for n in _FACTORIES if fnmatch.fnmatch(n, pattern))


def register_instance(model) -> str:
    """Name an in-memory module for this process (the Python API's `shrink(model)`): its factory
    returns a copy of it. Such a name cannot be resolved in another process."""
    name = f"instance:{type(model).__module__}.{type(model).__qualname__}:{id(model):x}"
    _INSTANCES[name] = copy.deepcopy(model).cpu()
    return name


def code_allowed() -> bool:
    """Whether the user opted in to architectures outside the safe forms (EDGESHRINK_ALLOW_CODE=1)."""
    return os.environ.get(ALLOW_CODE_ENV, "").strip() == "1"


def _not_allowed(spec: str, why: str) -> EdgeShrinkError:
    return EdgeShrinkError(
        f"architecture {spec!r} {why}; an architecture is a registered name ({', '.join(list_models())}), a model "
        "library (timm:create_model, torchvision.models:NAME, monai.networks.nets:NAME) or path/to/file.py:factory "
        f"inside the card's folder; to run other code you trust, set {ALLOW_CODE_ENV}=1")


def _library(target: str, attr: str) -> Optional[str]:
    """The package a `target:attr` callable must be defined in, when it is an allowed model library."""
    if not attr.isidentifier() or attr.startswith("_") or any(p.startswith("_") for p in target.split(".")):
        return None
    for module, name, package in MODEL_LIBRARIES:
        if (target == module or target.startswith(module + ".")) and name in ("*", attr):
            return package
    return None


def check_architecture(spec, base_dir: Optional[Path] = None) -> None:
    """Refuse, without importing anything, an architecture string outside the safe forms (see the
    module docstring) unless EDGESHRINK_ALLOW_CODE=1."""
    if not isinstance(spec, str) or not spec.strip():
        raise EdgeShrinkError(f"architecture {spec!r} is empty or not a string; name a registered architecture "
                              f"({', '.join(list_models())}) or path/to/file.py:factory")
    if spec in _INSTANCES or spec.startswith("instance:") or ":" not in spec or code_allowed():
        return
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if target.startswith("~") or path.is_absolute():
            raise _not_allowed(spec, "names a code file by absolute path")
        if ".." in path.parts:
            raise _not_allowed(spec, "reaches outside the card's folder with '..'")
        return
    if _library(target, attr) is None:
        raise _not_allowed(spec, f"would import and call {target}.{attr}, which is not a model library's factory")


def _describe(spec: str, base_dir: Optional[Path] = None) -> str:
    """How an error names the code of `spec`: its file for `file.py:factory`, else the architecture."""
    target = spec.rsplit(":", 1)[0] if isinstance(spec, str) and ":" in spec else ""
    if target.endswith(".py"):
        path = Path(target).expanduser()
        base = base_dir or os.environ.get(CARD_DIR_ENV) or "."
        return f"the card's code {path if path.is_absolute() else Path(base) / path} ({spec})"
    return f"architecture {spec!r}"


class _ExitCalled(BaseException):
    """os._exit() called by guarded code in this process (raised instead of exiting)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


_GUARD_STATE = {"depth": 0, "signalled": False}


@contextlib.contextmanager
def user_code(what: str, *, interrupts: bool = True):
    """Run a card's code: `sys.exit()` and `os._exit()` it calls (in this process; forked children
    exit as usual) and, with `interrupts`, a KeyboardInterrupt it raises itself (a real Ctrl-C or
    SIGTERM still interrupts) become a one-line EdgeShrinkError naming `what`."""
    outer = _GUARD_STATE["depth"] == 0
    restore = []
    if outer:
        _GUARD_STATE["signalled"] = False
        pid, real_exit = os.getpid(), os._exit

        def guarded_exit(code=0):
            if os.getpid() != pid:  # a forked child ends as it meant to
                real_exit(code)
            raise _ExitCalled(code)

        os._exit = guarded_exit
        restore.append(lambda: setattr(os, "_exit", real_exit))
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                if callable(previous):
                    def noted(signum, frame, previous=previous):
                        _GUARD_STATE["signalled"] = True
                        return previous(signum, frame)

                    signal.signal(sig, noted)
                    restore.append(lambda sig=sig, previous=previous: signal.signal(sig, previous))
    _GUARD_STATE["depth"] += 1
    try:
        yield
    except _ExitCalled as exc:
        raise EdgeShrinkError(f"{what} called os._exit({exc.code!r}); a card's code must return a model or raise "
                              "an exception, never end the process: fix that code") from None
    except SystemExit as exc:
        raise EdgeShrinkError(f"{what} called sys.exit({exc.code!r}); a card's code must return a model or raise "
                              "an exception, never end the process: fix that code") from None
    except KeyboardInterrupt:
        if not interrupts or _GUARD_STATE["signalled"]:
            raise
        raise EdgeShrinkError(f"{what} raised KeyboardInterrupt itself (no Ctrl-C was pressed); fix that code") from None
    finally:
        _GUARD_STATE["depth"] -= 1
        if outer:
            for undo in reversed(restore):
                undo()


def _from_file(path: Path, attr: str, spec: str) -> Callable:
    if not path.is_file():
        raise EdgeShrinkError(f"architecture {spec!r}: file {path} does not exist; the path is relative to the card")
    module_name = "edgeshrink_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            with user_code(f"the card's code {path} ({spec})"):
                loader_spec.loader.exec_module(module)
        except EdgeShrinkError:
            del sys.modules[module_name]
            raise
        except Exception as exc:
            del sys.modules[module_name]
            raise EdgeShrinkError(f"architecture {spec!r}: importing {path.name} failed ({type(exc).__name__}: "
                                  f"{str(exc)[:120]}); fix that file") from None
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
    return _attribute(module, attr, spec)


def _attribute(module, attr: str, spec: str) -> Callable:
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise unknown_name(f"factory in {spec.split(':')[0]}", attr, names)
    return fn


def resolve_factory(spec: str, base_dir: Optional[Path] = None) -> Callable:
    """The callable that builds architecture `spec`; refuses unknown names, broken modules and
    anything outside the safe forms (`check_architecture`) in one line."""
    check_architecture(spec, base_dir)
    if spec in _INSTANCES:
        return lambda **_: copy.deepcopy(_INSTANCES[spec])
    if spec.startswith("instance:"):
        raise EdgeShrinkError(f"architecture {spec!r} was an in-memory module of another process; "
                              "give a card with `architecture: file.py:factory` to replay it")
    if ":" not in spec:
        if spec not in _FACTORIES:
            raise unknown_name("architecture", spec, _FACTORIES)
        return _FACTORIES[spec]
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).expanduser()
        base = base_dir or os.environ.get(CARD_DIR_ENV) or "."
        return _from_file(path if path.is_absolute() else Path(base) / path, attr, spec)
    try:
        module = importlib.import_module(target)
    except Exception as exc:
        raise EdgeShrinkError(f"architecture {spec!r}: cannot import {target} ({type(exc).__name__}: {str(exc)[:100]}); "
                              "install it or use path/to/file.py:factory") from None
    fn = _attribute(module, attr, spec)
    package = _library(target, attr)
    defined_in = getattr(fn, "__module__", None) or ""
    if not code_allowed() and not (package and (defined_in == package or defined_in.startswith(package + "."))):
        raise _not_allowed(spec, f"is {defined_in or 'something'}.{attr}, not a model defined in {package or target}")
    return fn


def build_model(spec: str, arguments: dict, base_dir: Optional[Path] = None):
    """A freshly initialised model from `spec(**arguments)`; a factory that raises (or calls
    sys.exit / os._exit) is a one-line error."""
    if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
        raise EdgeShrinkError(f"architecture {spec!r}: arguments must be a mapping of names to values, got "
                              f"{type(arguments).__name__}; fix the card's arguments")
    with user_code(_describe(spec, base_dir)):
        factory = resolve_factory(spec, base_dir)
        try:
            model = factory(**arguments)
        except EdgeShrinkError:
            raise
        except Exception as exc:
            raise EdgeShrinkError(f"architecture {spec!r} failed to build with arguments {str(arguments)[:200]} "
                                  f"({type(exc).__name__}: {str(exc)[:100]}); fix the card's arguments") from None
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise EdgeShrinkError(f"architecture {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def checkpoint_architecture(stored, path) -> str:
    """The architecture a weights file names, when it may be used without a card: a registered
    name, an in-memory module of this process, or exactly the architecture the running card names
    (EDGESHRINK_CARD_ARCHITECTURE). Anything else is refused: a weights file never chooses code."""
    trusted = os.environ.get(CARD_ARCHITECTURE_ENV)
    if isinstance(stored, str) and (stored in _FACTORIES or stored in _INSTANCES or (trusted and stored == trusted)):
        return stored
    shown = repr(stored) if len(repr(stored)) <= 80 else repr(stored)[:77] + "..."
    raise EdgeShrinkError(f"checkpoint {path} names architecture {shown}, which is not a registered architecture; "
                          "EdgeShrink never imports code named inside a weights file: load it through its model card "
                          "(--model CARD), whose architecture builds the model")


def build_stored(payload: dict, path) -> object:
    """The model a checkpoint payload names (see `checkpoint_architecture`), freshly initialised."""
    arguments = payload.get("arguments")
    if not isinstance(arguments, dict):
        raise EdgeShrinkError(f"checkpoint {path} has no valid architecture arguments (edited or damaged); "
                              "re-download or retrain it")
    return build_model(checkpoint_architecture(payload.get("architecture"), path), dict(arguments))


@contextlib.contextmanager
def card_code(architecture: str, base_dir):
    """For the length of a run of a card: worker processes (benchmarks, the litert-torch child) and
    checkpoint loads accept exactly this architecture, resolved in `base_dir`; and sys.exit() or
    os._exit() called by the card's code anywhere in the run is a one-line error, not a silent exit."""
    saved = {k: os.environ.get(k) for k in (CARD_DIR_ENV, CARD_ARCHITECTURE_ENV)}
    os.environ[CARD_DIR_ENV] = str(base_dir)
    os.environ[CARD_ARCHITECTURE_ENV] = str(architecture)
    try:
        with user_code(_describe(architecture, Path(base_dir)), interrupts=False):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_model(name: str, **arguments):
    """Build a registered (or importable) architecture, freshly initialised (seeded by the caller)."""
    return build_model(name, arguments)



@register("mobilenet_v2")
def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
    from torchvision.models import mobilenet_v2 as build

    return build(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)


@register("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
    from torchvision.models import mobilenet_v3_small as build

    return build(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)


@register("mobilenet_v3_large")
def mobilenet_v3_large(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
    from torchvision.models import mobilenet_v3_large as build

    return build(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)


@register("resnet18")
def resnet18(num_classes: int = 1000):
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=num_classes)


@register("unet")
def unet(*, in_channels: int = 1, num_classes: int = 3, base: int = 16, depth: int = 4, norm: str = "batch",
         upsample: str = "transpose"):
    from toolkit.models.unet import UNet

    return UNet(in_channels, num_classes, base=base, depth=depth, norm=norm, upsample=upsample)


@register("mobilenet_v3_detector")
def mobilenet_v3_detector(*, num_classes: int = 1, variant: str = "small", width_mult: float = 1.0,
                          strides: tuple = (8, 16, 32), neck_channels: int = 64):
    """Anchor-free grid detector (raw (N, A, 4 + C) output; toolkit.models.detector)."""
    from toolkit.models.detector import mobilenet_v3_detector as build

    return build(num_classes=num_classes, variant=variant, width_mult=width_mult, strides=tuple(strides),
                 neck_channels=neck_channels)
