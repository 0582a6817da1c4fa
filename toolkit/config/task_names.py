"""The names a card's `task:` may take: the built-in tasks and those registered at run time.

Only names live here (data, no imports): toolkit.tasks.registry maps each name to its class and
adds the names of tasks registered with `@register_task`."""

from __future__ import annotations

BUILTIN_TASK_NAMES = ("classification", "segmentation", "detection")
_registered: set[str] = set()


def add_task_name(name: str) -> None:
    _registered.add(name)


def task_names() -> list[str]:
    return sorted(set(BUILTIN_TASK_NAMES) | _registered)
