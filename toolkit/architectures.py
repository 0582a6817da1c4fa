"""Registry of named architectures: `create_model("mobilenet_v3_small", num_classes=10)`."""

from __future__ import annotations

import fnmatch
from typing import Callable

from toolkit.errors import unknown_name

_FACTORIES: dict[str, Callable] = {}


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


def create_model(name: str, **arguments):
    """Build a freshly initialised model (seeded by the caller); unknown names get "did you mean"."""
    if name not in _FACTORIES:
        raise unknown_name("architecture", name, _FACTORIES)
    return _FACTORIES[name](**arguments)


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
def unet(in_channels: int = 1, num_classes: int = 3, base: int = 16, depth: int = 4, norm: str = "batch",
         upsample: str = "transpose"):
    from toolkit.segmentation.unet import UNet

    return UNet(in_channels, num_classes, base, depth, norm, upsample)
