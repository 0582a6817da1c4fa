"""Architectures: a registered name, `package.module:factory`, or `path/to/file.py:factory`.

`create_model("mobilenet_v3_small", num_classes=10)` builds a registered one;
`resolve_factory(spec, base_dir)` resolves any of the three forms with importlib, so every process
that needs a model (spawned workers included) finds the same factory without registration."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from toolkit.core.errors import EdgeShrinkError, unknown_name

CARD_DIR_ENV = "EDGESHRINK_CARD_DIR"  # where a run's worker processes resolve `file.py:factory` (the card's folder)
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
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise EdgeShrinkError(f"architecture {spec!r}: importing {path.name} failed ({type(exc).__name__}: "
                                  f"{str(exc)[:120]}); fix that file") from None
    return _attribute(module, attr, spec)


def _attribute(module, attr: str, spec: str) -> Callable:
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise unknown_name(f"factory in {spec.split(':')[0]}", attr, names)
    return fn


def resolve_factory(spec: str, base_dir: Optional[Path] = None) -> Callable:
    """The callable that builds architecture `spec`; refuses unknown names and broken modules in one line."""
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
    return _attribute(module, attr, spec)


def build_model(spec: str, arguments: dict, base_dir: Optional[Path] = None):
    """A freshly initialised model from `spec(**arguments)`; a factory that raises is a one-line error."""
    factory = resolve_factory(spec, base_dir)
    try:
        model = factory(**arguments)
    except EdgeShrinkError:
        raise
    except Exception as exc:
        raise EdgeShrinkError(f"architecture {spec!r} failed to build with arguments {arguments} "
                              f"({type(exc).__name__}: {str(exc)[:100]}); fix the card's arguments") from None
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise EdgeShrinkError(f"architecture {spec!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


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
